"""Distributed training inside a pipeline run.

Two ways in. ``[train].nproc_per_node > 1`` (or ``nnodes > 1``): ``genrec run`` itself launches the
train stage under torchrun (``python -m torch.distributed.run ... -m genrec_trainer train --config``),
waits, and reads the trainer's ``result.json``; every other stage runs once, in the parent. Or
``torchrun ... -m genrec_pipeline run``: every rank runs the pipeline, rank 0 alone runs the stages
other than training, the other ranks wait for rank 0's outputs (they poll the stage folders'
``stage.json``; no process group is held open while a profile stage takes hours) and join it for
training only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec_pipeline._errors import PipelineError

log = logging.getLogger(__name__)

#: Where the processes of a multi-node run meet: not part of what a stage computes (no cache key).
LAUNCH_KEYS = ("nnodes", "node_rank", "master_addr", "master_port", "rdzv_endpoint", "rdzv_id")
#: [train] keys of the launch, with their defaults.
TRAIN_KEYS: dict[str, Any] = {
    "nproc_per_node": 1,
    "nnodes": 1,
    "node_rank": 0,
    "master_addr": "",
    "master_port": 0,
    "rdzv_endpoint": "",
    "rdzv_id": "",
}
_POLL_S = 2.0


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@dataclass(frozen=True)
class Role:
    """This process's part in a run: ``primary`` runs every stage and writes the markers; ``launch``
    means the train stage goes through torchrun started by this process."""

    primary: bool
    launch: bool
    rank: int = 0


def role(train: Mapping[str, Any]) -> Role:
    if env_world() > 1:  # started under torchrun by hand: the trainer joins the group in-process
        return Role(primary=env_rank() == 0, launch=False, rank=env_rank())
    launch = int(train["nproc_per_node"]) > 1 or int(train["nnodes"]) > 1
    node_rank = int(train["node_rank"]) if int(train["nnodes"]) > 1 else 0
    return Role(primary=node_rank == 0, launch=launch, rank=node_rank)


def wait_done(stage: str, folder: Path) -> None:
    """Block until rank 0 marks ``folder`` done; raise if it marks it failed."""
    from genrec_pipeline._cache import read_json

    meta = folder / "stage.json"
    waited = 0.0
    while True:
        try:
            state = read_json(meta).get("status") if meta.is_file() else None
        except (OSError, ValueError):
            state = None  # being replaced right now
        if state == "done":
            return
        if state == "failed":
            raise PipelineError(f"stage {stage} failed on rank 0 (see {meta}); this rank stops too")
        if waited % 60 < _POLL_S:
            log.info("%s: waiting for rank 0 to finish %s", stage, folder)
        time.sleep(_POLL_S)
        waited += _POLL_S


def torchrun_command(train: Mapping[str, Any], config_path: Path) -> list[str]:
    """The torchrun command line that trains ``config_path`` with the launch settings of ``train``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(int(train["nproc_per_node"]))]
    nnodes = int(train["nnodes"])
    if nnodes > 1:
        cmd += ["--nnodes", str(nnodes)]
        if train["rdzv_endpoint"]:
            cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(train["rdzv_endpoint"]),
                    "--rdzv-id", str(train["rdzv_id"] or "genrec")]  # fmt: skip
        else:
            if not train["master_addr"]:
                raise PipelineError("[train].nnodes > 1 needs [train].rdzv_endpoint, or master_addr and master_port")
            cmd += ["--node-rank", str(int(train["node_rank"])), "--master-addr", str(train["master_addr"]),
                    "--master-port", str(int(train["master_port"]) or 29500)]  # fmt: skip
    elif train["master_port"]:
        cmd += ["--master-addr", str(train["master_addr"] or "127.0.0.1"), "--master-port", str(int(train["master_port"]))]
    else:
        # One node and no port given: torchrun picks a free one, so two runs on a machine never clash.
        cmd += ["--standalone"]
    return [*cmd, "-m", "genrec_trainer", "train", "--config", str(config_path)]


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_train_toml(config: Any, path: Path) -> Path:
    """A trainer config (``genrec_trainer.TrainConfig``) as the flat TOML ``train --config`` reads."""
    import dataclasses

    from genrec_core import atomic_write_text

    lines = ["# written by genrec run for the torchrun launch of the train stage"]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def launch(train: Mapping[str, Any], config: Any, folder: Path) -> None:
    """Train ``config`` under torchrun and wait; a failed launch raises naming its log."""
    path = write_train_toml(config, folder / "train.toml")
    cmd = torchrun_command(train, path)
    log.info("train: %s", " ".join(cmd))
    print(f"train: launching {' '.join(cmd[1:])}", flush=True)
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
        raise PipelineError(f"train: torchrun exited with status {rc} (command: {' '.join(cmd)})")
