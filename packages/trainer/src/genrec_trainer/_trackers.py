"""Experiment trackers for ``report_to``: the JSONL log mirrored to TensorBoard, MLflow, W&B or Trackio.

Every tracker receives exactly the records the JSONL log gets (same names, same steps), the config
as hyperparameters when the run starts, and the run's summary when it ends. Each backend's package
is imported only when named. Only rank 0 reports; the other ranks hold a reporter without trackers.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from genrec_trainer._errors import TrainerError

logger = logging.getLogger(__name__)

#: The names ``report_to`` accepts, each an extra of genrec-trainer.
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
_MODULES = {
    "tensorboard": "torch.utils.tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
}

Params = dict[str, str | int | float | bool]


@dataclass(frozen=True, kw_only=True)
class Where:
    """Where and under which names a run reports (the tracker fields of the config, resolved)."""

    output: Path
    run_name: str
    project: str = ""
    logging_dir: str = ""
    tracking_uri: str = ""
    start_step: int = 0


class Tracker(Protocol):
    """One experiment tracker: a run that gets hyperparameters, scalars per step and a summary."""

    name: str

    def start(self, params: Params, metadata: dict[str, Any]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict[str, float], *, failed: bool) -> None: ...


def import_trackers(names: Sequence[str]) -> dict[str, ModuleType]:
    """Import each named tracker's package; a missing one is a ``TrainerError`` naming the extra."""
    modules = {}
    for name in names:
        try:
            modules[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            raise TrainerError(
                f"report_to {name!r}: cannot import {_MODULES[name]} ({_one_line(exc)}); "
                f"pip install genrec-trainer[{name}]"
            ) from None
    return modules


class Reporter:
    """Fans the log's records out to the trackers; a tracker that fails mid-run is dropped with a warning."""

    def __init__(self, names: Sequence[str]) -> None:
        # Imported on every rank before any work, so that a missing extra fails everywhere at once
        # rather than leaving the other ranks waiting for rank 0 at a barrier.
        self._modules = import_trackers(names)
        self.trackers: list[Tracker] = []

    def start(self, where: Where, params: Params, metadata: dict[str, Any]) -> None:
        for name, module in self._modules.items():
            try:
                tracker = _BACKENDS[name](module, where)
                tracker.start(params, metadata)
            except Exception as exc:
                self.finish({}, failed=True)
                raise TrainerError(f"report_to {name!r}: cannot start a run ({_one_line(exc)})") from exc
            self.trackers.append(tracker)

    def log(self, record: dict[str, Any]) -> None:
        if not self.trackers:
            return
        step = int(record["step"])
        metrics = {
            k: float(v)
            for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        for tracker in list(self.trackers):
            try:
                tracker.log(metrics, step)
            except Exception as exc:
                # A tracker server that goes away must not end hours of training: the JSONL log
                # still holds every record.
                logger.warning(
                    "report_to %r failed at step %d (%s); nothing more is sent to it",
                    tracker.name,
                    step,
                    _one_line(exc),
                )
                self.trackers.remove(tracker)

    def finish(self, summary: dict[str, float], *, failed: bool = False) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.finish(summary, failed=failed)
            except Exception as exc:
                logger.warning("report_to %r could not close its run (%s)", tracker.name, _one_line(exc))


def tracker_params(config_record: dict[str, Any]) -> Params:
    """The config as flat hyperparameters: lists become comma-joined strings (every backend takes those)."""
    return {k: ",".join(map(str, v)) if isinstance(v, list | tuple) else v for k, v in config_record.items()}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, module: ModuleType, where: Where) -> None:
        self.log_dir = Path(where.logging_dir) if where.logging_dir else where.output / "runs"
        # purge_step: TensorBoard then hides what an interrupted run wrote after the step this run
        # resumes from (or everything, on a fresh start), as the JSONL log is truncated.
        self.writer = module.SummaryWriter(log_dir=str(self.log_dir), purge_step=where.start_step + 1)

    def start(self, params: Params, metadata: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text("run", _markdown_json(metadata), 0)
        # Written into this run's own event file (SummaryWriter.add_hparams would open a sub-run),
        # with the metrics named after the scalars logged below so the HParams view links them.
        experiment, start_info, _ = hparams(params, {"loss": 0.0, "eval_loss": 0.0})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start_info)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, summary: dict[str, float], *, failed: bool) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text(
            "summary", _markdown_json({**summary, "failed": failed}), int(summary.get("steps", 0))
        )
        if not failed:
            self.writer.file_writer.add_summary(hparams({}, {})[2])  # session end: success
        self.writer.close()


class _MLflow:
    name = "mlflow"

    def __init__(self, module: ModuleType, where: Where) -> None:
        from mlflow.tracking import MlflowClient

        uri = (
            where.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or (where.output.resolve() / "mlruns").as_uri()
        )
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 refuses a file store unless allowed: a local folder is what a run without a
            # tracking server asks for, and mlflow-skinny has no database backend to offer instead.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        experiment = where.project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "genrec"
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_name = where.run_name
        self.run_id = ""

    def start(self, params: Params, metadata: dict[str, Any]) -> None:
        from mlflow.entities import Param

        tags = {f"genrec.version.{k}": str(v) for k, v in metadata.get("packages", {}).items() if v}
        tags["genrec.python"] = str(metadata.get("python", ""))
        git = metadata.get("git")
        if git:
            tags["mlflow.source.git.commit"] = git["commit"]
            if "dirty" in git:
                tags["genrec.git_dirty"] = str(git["dirty"]).lower()
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, summary: dict[str, float], *, failed: bool) -> None:
        if summary:
            # Under their own prefix: the run's tokens_per_s is not the per-window series of that name.
            self.log({f"summary/{k}": v for k, v in summary.items()}, int(summary.get("steps", 0)))
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class _Wandb:
    name = "wandb"

    def __init__(self, module: ModuleType, where: Where) -> None:
        self.module = module
        self.where = where
        self.run: Any = None

    def start(self, params: Params, metadata: dict[str, Any]) -> None:
        # project None lets wandb read WANDB_PROJECT (and WANDB_ENTITY, WANDB_MODE) itself.
        self.run = self.module.init(
            project=self.where.project or None,
            name=self.where.run_name,
            dir=str(self.where.output),
            config={**params, "genrec_run": metadata},
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, float], *, failed: bool) -> None:
        self.run.summary.update(summary)
        self.run.finish(exit_code=1 if failed else 0)


class _Trackio:
    name = "trackio"

    def __init__(self, module: ModuleType, where: Where) -> None:
        self.module = module
        self.where = where

    def start(self, params: Params, metadata: dict[str, Any]) -> None:
        # trackio reads TRACKIO_SPACE_ID itself; its project is a required argument.
        project = self.where.project or os.environ.get("TRACKIO_PROJECT") or "genrec"
        self.module.init(project=project, name=self.where.run_name, config={**params, "genrec_run": metadata})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.module.log(metrics, step=step)

    def finish(self, summary: dict[str, float], *, failed: bool) -> None:
        if summary:  # trackio has no run summary: the values go in as the last step's metrics
            self.module.log(
                {f"summary/{k}": v for k, v in summary.items()}, step=int(summary.get("steps", 0))
            )
        self.module.finish()


def _markdown_json(data: dict[str, Any]) -> str:
    return "```json\n" + json.dumps(data, indent=1, default=str) + "\n```"


_BACKENDS: dict[str, Any] = {
    "tensorboard": _TensorBoard,
    "mlflow": _MLflow,
    "wandb": _Wandb,
    "trackio": _Trackio,
}
