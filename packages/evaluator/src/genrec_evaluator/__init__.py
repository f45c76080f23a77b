"""genrec-evaluator: next-POI, SeqRec and CTR evaluation for LLM recommenders.

Importing this package is cheap: torch, transformers and peft are imported only inside the functions
that score with a model.
"""

from importlib.metadata import PackageNotFoundError, version

from genrec_evaluator._analysis import cross_city_matrix, trajectory_length_groups, user_activity_groups
from genrec_evaluator._baselines import BaselineConfig, run_baselines
from genrec_evaluator._ctr import CtrConfig, evaluate_ctr, read_ctr_records
from genrec_evaluator._embed import Embedder, HashingEmbedder
from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._genup import (
    GENUP_SCRIPT_DEFAULTS,
    genup_activity_groups,
    genup_answer,
    genup_city,
    genup_family,
    genup_generation_settings,
    genup_split_prompt,
    genup_user_activity,
    genup_value_groups,
)
from genrec_evaluator._io import load_checkins, read_records
from genrec_evaluator._metrics import acc_at_k, auc, hr_at_k, mrr, ndcg_at_k, target_ranks
from genrec_evaluator._nextpoi import GENREC_GENERATION, NextPoiConfig, evaluate_next_poi, generation_settings
from genrec_evaluator._protocols import Query, Scorer
from genrec_evaluator._report import compare_runs, plot_cross_city, write_cross_city, write_report
from genrec_evaluator._result import EvaluationResult
from genrec_evaluator._seqrec import SeqRecConfig, evaluate_seqrec, read_items
from genrec_evaluator._stats import (
    Uncertainty,
    auc_interval,
    compare_auc,
    compare_columns,
    delong_test,
    format_p,
    mcnemar_exact,
    mean_intervals,
    sign_flip_test,
    verdict,
)

try:
    __version__ = version("genrec-evaluator")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "GENREC_GENERATION",
    "GENUP_SCRIPT_DEFAULTS",
    "BaselineConfig",
    "CtrConfig",
    "Embedder",
    "EvaluationResult",
    "EvaluatorError",
    "HashingEmbedder",
    "NextPoiConfig",
    "Query",
    "Scorer",
    "SeqRecConfig",
    "Uncertainty",
    "__version__",
    "acc_at_k",
    "auc",
    "auc_interval",
    "compare_auc",
    "compare_columns",
    "compare_runs",
    "cross_city_matrix",
    "delong_test",
    "evaluate_ctr",
    "evaluate_next_poi",
    "evaluate_seqrec",
    "format_p",
    "generation_settings",
    "genup_activity_groups",
    "genup_answer",
    "genup_city",
    "genup_family",
    "genup_generation_settings",
    "genup_split_prompt",
    "genup_user_activity",
    "genup_value_groups",
    "hr_at_k",
    "load_checkins",
    "mcnemar_exact",
    "mean_intervals",
    "mrr",
    "ndcg_at_k",
    "plot_cross_city",
    "read_ctr_records",
    "read_items",
    "read_records",
    "run_baselines",
    "sign_flip_test",
    "target_ranks",
    "trajectory_length_groups",
    "user_activity_groups",
    "verdict",
    "write_cross_city",
    "write_report",
]
