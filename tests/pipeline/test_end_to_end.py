"""Every stage for real, with a tiny random Llama and a small city: the pipeline composes the packages,
trains, evaluates beside the baselines, reports, and reuses or resumes its work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("torch")

from genrec_pipeline import load_config, plan, run

CONFIG = """
[run]
name = "tiny"
root = "{root}"
progress = false
[data]
users = 10
[data.city]
n_pois = 40
checkins_per_user = 50
[profiles]
backend = "template"
[records.options]
max_history = 4
[coreset]
budget = 0.5
model = "{model}"
max_swaps = 5
candidates = 8
[coreset.options]
max_length = 256
[train]
recipe = ""
[train.options]
model = "{model}"
max_steps = {steps}
batch_size = 4
lr = 0.01
max_length = 512
truncation = true
mode = "lora"
quantization = "none"
device = "cpu"
eval_every = 0
save_every = 4
log_every = 1
warmup_steps = 0
[evaluate]
max_records = 8
"""


def _write(tmp_path: Path, model: Path, steps: int = 12) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG.format(root=tmp_path / "runs", model=model, steps=steps))
    return path


@pytest.mark.integration
def test_every_stage_end_to_end(tmp_path: Path, tiny_llama: Path) -> None:
    config = load_config(_write(tmp_path, tiny_llama))
    result = run(config)
    arts = result.artifacts
    assert set(arts) == {"data", "profiles", "records", "coreset", "train", "evaluate"}

    selection = pl.read_parquet(arts["coreset"]["selection"])
    train_records = pl.read_parquet(arts["records"]["train"])
    assert selection.height == train_records.height
    n_selected = int(selection["selected"].sum())
    assert n_selected == round(0.5 * train_records.height)
    # genrec_core.SELECTION: 1-based entry order among the selected, null for the rest.
    assert sorted(selection.filter(pl.col("selected"))["rank"].to_list()) == list(range(1, n_selected + 1))
    assert selection.filter(~pl.col("selected"))["rank"].null_count() == train_records.height - n_selected
    log = json.loads(arts["coreset"]["log"].read_text())
    assert {"method", "budget", "pool", "n_val", "lambda", "labels", "poo", "trace", "swaps",
            "exact_solves", "seconds"} <= set(log)  # fmt: skip
    assert log["budget"] == n_selected and log["pool"] == train_records.height
    assert log["poo"] <= log["trace"][0] + 1e-12  # swaps never raise the exact POO
    chosen = pl.read_parquet(arts["coreset"]["train"])
    assert set(chosen["record_id"]) == set(selection.filter(pl.col("selected"))["record_id"])

    summary = arts["train"].summary
    assert summary["records"] == n_selected  # the trainer saw the coreset, not the whole pool
    assert summary["final_loss"] < summary["first_loss"]
    assert (arts["train"]["adapter"] / "adapter_config.json").is_file()

    metrics = json.loads(arts["evaluate"]["metrics"].read_text())
    assert "model" in metrics
    assert any("popular" in name for name in metrics)
    assert any("markov" in name for name in metrics)
    for values in metrics.values():
        assert 0.0 <= values["acc@1"] <= values["acc@5"] <= values["acc@10"] <= 1.0
    preds = pl.read_parquet(arts["evaluate"]["predictions"])
    assert preds.height == 8

    assert result.report is not None and result.report.is_file()
    text = result.report.read_text()
    assert "acc@1" in text and "Training loss fell" in text
    assert (result.run_dir / "training_loss.png").is_file()
    assert "popular" in result.summary  # the verdict sentence names the baseline

    # Nothing changed: everything is reused, nothing recomputed.
    assert {i.action for i in plan(config)} == {"reuse"}
    # A changed training setting re-runs training and evaluation only.
    changed = load_config(_write(tmp_path, tiny_llama, steps=8))
    actions = {i.stage: i.action for i in plan(changed)}
    assert actions == {
        "data": "reuse", "profiles": "reuse", "records": "reuse",
        "coreset": "reuse", "train": "run", "evaluate": "run",
    }  # fmt: skip


@pytest.mark.integration
def test_kill_inside_training_then_resume(tmp_path: Path, tiny_llama: Path) -> None:
    path = _write(tmp_path, tiny_llama, steps=40)
    config = load_config(path)
    run(config, until="coreset")
    train_dir = next(i.folder for i in plan(config) if i.stage == "train")
    from genrec_pipeline._cache import code_version

    # The child keys its stages with this process's code version: other work editing the tree while
    # this test runs must not move the stage folders under it.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GENREC_CODE_VERSION": json.dumps(code_version())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "genrec_pipeline", "run", str(path), "--no-progress", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any(train_dir.glob("checkpoints/step-*/state.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before a checkpoint was written"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert {i.stage: i.action for i in plan(config)}["train"] == "resume"
    result = run(config)
    assert result.artifacts["train"].summary["resumed_from"] > 0
    assert result.artifacts["train"].summary["steps"] == 40


@pytest.mark.integration
@pytest.mark.slow
def test_cross_city_study(tmp_path: Path, tiny_llama: Path) -> None:
    from genrec_pipeline import cross_city

    paths = []
    for city, seed in (("alpha", 1), ("beta", 2)):
        text = CONFIG.format(root=tmp_path / "runs", model=tiny_llama, steps=4).replace(
            'name = "tiny"', f'name = "{city}"\nseed = {seed}'
        )
        path = tmp_path / f"{city}.toml"
        path.write_text(text.replace("[coreset]\n", "[coreset]\nenabled = false\n", 1))
        paths.append(path)
    result = cross_city(paths, name="study", progress=False)
    assert result.matrix["train_city"].to_list() == ["alpha", "beta"]
    assert [c for c in result.matrix.columns if c != "train_city"] == ["alpha", "beta"]
    assert set(result.runs) == {(a, b) for a in ("alpha", "beta") for b in ("alpha", "beta")}
    assert result.plot.is_file() and result.table.is_file()
    # The diagonal is each city's own evaluation: the same number its run reported.
    own = json.loads((result.runs[("alpha", "alpha")] / "metrics.json").read_text())["model"]["acc@1"]
    assert result.matrix.filter(pl.col("train_city") == "alpha")["alpha"][0] == pytest.approx(own)
