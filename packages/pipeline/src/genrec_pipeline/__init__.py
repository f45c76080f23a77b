"""genrec-pipeline: ``genrec run`` composes every genrec stage from one config.

``run(config)`` plans the stages, reuses each cached output whose settings and inputs are unchanged,
resumes an interrupted one, and writes a run report. ``study(STUDY)`` runs a grid of variants of one
config (sharing their common stages) and compares them with paired tests in one table and one
plot. The stages are plain functions in
:mod:`genrec_pipeline.stages`, so a project can call them one by one around its own.
"""

from importlib.metadata import PackageNotFoundError, version

from genrec_pipeline import stages
from genrec_pipeline._config import RunConfig, default_config_path, load_config, shipped_configs
from genrec_pipeline._crosscity import CrossCityResult, cross_city
from genrec_pipeline._errors import PipelineError
from genrec_pipeline._runner import RunResult, StagePlan, plan, run
from genrec_pipeline._study import StudyResult, read_study, study
from genrec_pipeline.stages import StageFailedError

try:
    __version__ = version("genrec-pipeline")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "CrossCityResult",
    "PipelineError",
    "RunConfig",
    "RunResult",
    "StageFailedError",
    "StagePlan",
    "StudyResult",
    "__version__",
    "cross_city",
    "default_config_path",
    "load_config",
    "plan",
    "read_study",
    "run",
    "shipped_configs",
    "stages",
    "study",
]
