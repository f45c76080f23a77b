"""Distributed training inside a run, on 2 CPU processes over gloo: every stage other than training
runs once, whether `genrec run` launches torchrun itself or is started under torchrun by hand (each
test takes about 20 s on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("torch")

from genrec_pipeline._dist import torchrun_command

CONFIG = """
[run]
name = "dist"
root = "{root}"
progress = false
[data]
users = 8
[data.city]
n_pois = 40
checkins_per_user = 40
[profiles]
backend = "template"
[records.options]
max_history = 4
[coreset]
enabled = false
[train]
recipe = ""
nproc_per_node = {nproc}
[train.options]
model = "{model}"
max_steps = 2
batch_size = 2
max_length = 384
truncation = true
device = "cpu"
dtype = "float32"
eval_every = 0
save_every = 0
[evaluate]
max_records = 4
"""


@pytest.fixture(scope="module")
def tiny_chatml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from genrec_core.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "chatml", family="chatml")


def _events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    from genrec_pipeline._cache import code_version

    # Every rank keys the stages with the same code version even if the tree is edited meanwhile.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "GENREC_CODE_VERSION": json.dumps(code_version())}  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.integration
def test_genrec_run_launches_torchrun_for_the_train_stage(tmp_path: Path, tiny_chatml: Path) -> None:
    path = tmp_path / "dist.toml"
    path.write_text(CONFIG.format(root=tmp_path / "runs", model=tiny_chatml, nproc=2))
    proc = _run([sys.executable, "-m", "genrec_pipeline", "run", str(path), "--no-progress"], tmp_path)
    assert "torch.distributed.run --nproc-per-node 2" in proc.stdout
    run_dir = tmp_path / "runs" / "dist"
    counts = Counter(e["stage"] for e in _events(run_dir))
    assert counts == dict.fromkeys(("data", "profiles", "records", "train", "evaluate"), 1)
    train = next(run_dir.glob("train-*"))
    result = json.loads((train / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    assert json.loads((train / "artifact.json").read_text())["summary"]["steps"] == 2
    assert (next(run_dir.glob("evaluate-*")) / "metrics.json").is_file()


@pytest.mark.integration
def test_torchrun_by_hand_runs_other_stages_on_rank_0_only(tmp_path: Path, tiny_chatml: Path) -> None:
    path = tmp_path / "dist.toml"
    path.write_text(CONFIG.format(root=tmp_path / "runs", model=tiny_chatml, nproc=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "genrec_pipeline", "run", str(path), "--no-progress"]  # fmt: skip
    _run(cmd, tmp_path)
    run_dir = tmp_path / "runs" / "dist"
    events = _events(run_dir)
    by_stage = Counter(e["stage"] for e in events)
    assert by_stage == {"data": 1, "profiles": 1, "records": 1, "train": 2, "evaluate": 1}
    assert {e["rank"] for e in events if e["stage"] != "train"} == {0}
    assert {e["rank"] for e in events if e["stage"] == "train"} == {0, 1}
    train = next(run_dir.glob("train-*"))
    assert json.loads((train / "result.json").read_text())["world_size"] == 2
    assert json.loads((train / "stage.json").read_text())["status"] == "done"


def test_torchrun_command_for_one_and_several_nodes(tmp_path: Path) -> None:
    base = {"nproc_per_node": 4, "nnodes": 1, "node_rank": 0, "master_addr": "", "master_port": 0,
            "rdzv_endpoint": "", "rdzv_id": ""}  # fmt: skip
    cmd = torchrun_command(base, tmp_path / "train.toml")
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone"]
    assert cmd[-5:] == ["-m", "genrec_trainer", "train", "--config", str(tmp_path / "train.toml")]
    nodes = torchrun_command({**base, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1", "master_port": 29400},
                             tmp_path / "t.toml")  # fmt: skip
    assert nodes[5:13] == ["--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29400"]
    rdzv = torchrun_command({**base, "nnodes": 2, "rdzv_endpoint": "host:29400"}, tmp_path / "t.toml")
    assert "--rdzv-endpoint" in rdzv and "host:29400" in rdzv
