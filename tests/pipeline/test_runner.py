"""Planning, caching and resuming, on the data stages (fast; the model stages are in test_end_to_end)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from genrec_pipeline import PipelineError, load_config, plan, run
from genrec_pipeline._cli import main

SMALL = """
[run]
name = "small"
root = "{root}"
progress = false
[data]
users = 12
[data.city]
n_pois = 60
checkins_per_user = 60
[profiles]
backend = "template"
"""


def _config(tmp_path: Path, extra: str = "", **overrides: str):
    path = tmp_path / "small.toml"
    path.write_text(SMALL.format(root=tmp_path / "runs") + extra)
    return load_config(path, overrides=overrides)


def _actions(items) -> dict[str, str]:
    return {i.stage: i.action for i in items}


def test_plan_before_anything_ran(tmp_path: Path) -> None:
    items = plan(_config(tmp_path), until="records")
    assert _actions(items) == {
        "data": "run", "profiles": "run", "records": "run",
        "coreset": "skip", "train": "skip", "evaluate": "skip",
    }  # fmt: skip
    assert len({i.key for i in items}) == 6


def test_rerun_reuses_and_a_changed_setting_reruns_only_downstream(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = run(config, until="records")
    assert set(first.artifacts) == {"data", "profiles", "records"}
    train = pl.read_parquet(first.artifacts["records"]["train"])
    assert train.height > 0
    assert {"record_id", "prompt", "completion", "messages", "target_poi_idx"} <= set(train.columns)
    profiles = pl.read_parquet(first.artifacts["profiles"]["profiles"])
    assert profiles["user_id"].n_unique() == profiles.height == first.artifacts["data"].summary["users"]

    again = plan(config, until="records")
    assert _actions(again)["data"] == "reuse" and _actions(again)["records"] == "reuse"

    changed = _config(tmp_path, "[records.options]\nmax_history = 3\n")
    items = plan(changed, until="records")
    assert _actions(items) == {
        "data": "reuse", "profiles": "reuse", "records": "run",
        "coreset": "skip", "train": "skip", "evaluate": "skip",
    }  # fmt: skip
    mtime = first.artifacts["data"]["train"].stat().st_mtime_ns
    second = run(changed, until="records")
    assert second.artifacts["data"]["train"].stat().st_mtime_ns == mtime  # not rewritten
    assert second.artifacts["records"].path != first.artifacts["records"].path
    short = pl.read_parquet(second.artifacts["records"]["train"])
    assert short["history_poi_idx"].list.len().max() <= 3

    # An upstream change (the city) re-keys everything downstream of it.
    reseeded = plan(_config(tmp_path, "", **{"run.seed": "5"}), until="records")
    assert _actions(reseeded)["data"] == "run" and _actions(reseeded)["records"] == "run"


def test_interrupted_stage_resumes_and_force_and_from(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run(config, until="data")
    items = {i.stage: i for i in plan(config, until="records")}
    # Simulate a kill inside the profiles stage: its folder exists, its marker never turned done.
    folder = items["profiles"].folder
    folder.mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"status": "running"}))
    assert _actions(plan(config, until="records"))["profiles"] == "resume"
    done = run(config, until="records")
    assert json.loads((folder / "stage.json").read_text())["status"] == "done"
    assert "profiles" in done.artifacts

    assert _actions(plan(config, until="records", force=["data"]))["data"] == "run"
    assert _actions(plan(config, until="records", from_stage="profiles")) == {
        "data": "reuse", "profiles": "run", "records": "run",
        "coreset": "skip", "train": "skip", "evaluate": "skip",
    }  # fmt: skip


def test_stages_selection_needs_cached_upstream(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(PipelineError, match="needs data"):
        run(config, stages=["profiles"])
    run(config, stages=["data"])
    result = run(config, stages=["profiles"])
    assert set(result.artifacts) >= {"data", "profiles"}


def test_cli_dry_run_prints_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "small.toml"
    path.write_text(SMALL.format(root=tmp_path / "runs"))
    assert main(["run", str(path), "--dry-run", "--until", "records"]) == 0
    out = capsys.readouterr().out
    assert "data      run" in out and "train     skip" in out
    assert not (tmp_path / "runs" / "small").exists() or not any((tmp_path / "runs" / "small").iterdir())


def test_unknown_stage_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="unknown stage 'trian'"):
        plan(_config(tmp_path), stages=["trian"])


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genrec_core import GenrecError

    assert issubclass(PipelineError, GenrecError)
    path = tmp_path / "bad.toml"
    path.write_text("[data]\nusers = 'many'\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec: error: ") and "[data].users" in err and "\n" not in err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "config file does not exist" in capsys.readouterr().err


def test_events_log_one_line_per_stage_execution(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run(config, until="records")
    run(config, until="records")  # all reused: nothing executes again
    events = [json.loads(line) for line in (tmp_path / "runs" / "small" / "events.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in events] == ["data", "profiles", "records"]
    assert {e["rank"] for e in events} == {0}
