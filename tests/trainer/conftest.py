"""Fixtures for the trainer tests: a tiny random Llama (character-level tokenizer), and synthetic SFT sets."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from genrec_core.models import build_tiny_model
from genrec_trainer._synthetic import synthetic_city_records, write_records


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread; on a shared, loaded machine two OpenMP threads that
    spin-wait for each other make a 40 ms step take seconds. Restored at the end."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A wide initialisation gives the random model confident, varied logits (losses and gradients
    # far from uniform), which the loss and gradient comparisons need.
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", initializer_range=0.2, max_positions=512)


@pytest.fixture(scope="session")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("city")
    return {
        "train": write_records(synthetic_city_records(64, seed=0), folder / "train.parquet"),
        "val": write_records(synthetic_city_records(16, seed=1, split="val"), folder / "val.jsonl"),
    }


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: no torch thread oversubscription, and a bytecode cache.

    The machine sets PYTHONDONTWRITEBYTECODE, so every child would recompile transformers from source
    (tens of seconds); a cache outside the virtual environment keeps that to the first child.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "genrec-trainer-pycache")
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_cli(args: list[str], *, torchrun: int = 0, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(torchrun),
            "--standalone",  # a free port on localhost; workers hang on --master-port 0
            "-m",
            "genrec_trainer",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "genrec_trainer", *args]
    return subprocess.run(
        cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
