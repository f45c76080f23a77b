"""genrec run under races, escape hatches, failures, bad options and bad inputs: each ends in one
readable line (exit 2, or 1 for a stage that did not meet its own criteria) and never in a cached
output that mixes or misses finished work. Fast: template profiles, tiny data, no model stages."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from genrec_pipeline import PipelineError, load_config, plan, run, stages
from genrec_pipeline._cli import main

SMALL = """
[run]
name = "small"
root = "{root}"
progress = false
[data]
users = 10
[data.city]
n_pois = 50
checkins_per_user = 40
[profiles]
backend = "template"
"""


def _toml(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL.format(root=tmp_path / "runs") + extra)
    return path


def _actions(items) -> dict[str, str]:
    return {i.stage: i.action for i in items}


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------ 1. races


def test_a_run_folder_held_by_another_run_stops_at_once_and_a_dead_holder_does_not_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _toml(tmp_path)
    run_dir = tmp_path / "runs" / "small"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from genrec_core import FolderLock; "
         f"FolderLock({str(run_dir)!r}, what='run folder').acquire(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["run", str(config), "--until", "data", "--no-progress"]) == 2
        err = _one_line_error(capsys)
        assert str(run_dir) in err and f"pid {holder.pid}" in err
        assert not list(run_dir.glob("data-*")), "the refused run wrote nothing"
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # flock dies with its holder: the stale lock file is no obstacle.
    assert (run_dir / ".lock").exists()
    assert main(["run", str(config), "--until", "data", "--no-progress"]) == 0


# -------------------------------------------------------------------------------- 2. escape hatches


def test_force_and_from_remake_every_stage_downstream_from_scratch(tmp_path: Path) -> None:
    config = load_config(_toml(tmp_path))
    first = run(config, until="records")
    assert _actions(plan(config, until="records", force=["data"])) == {
        "data": "run", "profiles": "run", "records": "run",
        "coreset": "skip", "train": "skip", "evaluate": "skip",
    }  # fmt: skip
    # A row no run made: a resumed stage would keep it, a stage made again from scratch drops it.
    path = first.artifacts["profiles"]["profiles"]
    table = pl.read_parquet(path)
    ghost = table.head(1).with_columns(pl.lit("ghost").alias("user_id"))
    pl.concat([table, ghost]).write_parquet(path)
    again = run(config, until="records", from_stage="data")
    assert "ghost" not in pl.read_parquet(again.artifacts["profiles"]["profiles"])["user_id"].to_list()
    assert again.artifacts["profiles"].path == first.artifacts["profiles"].path  # same key, made afresh


def test_a_partial_stage_started_from_other_inputs_starts_afresh(tmp_path: Path) -> None:
    config = load_config(_toml(tmp_path))
    run(config, until="records")
    items = {i.stage: i for i in plan(config, until="records")}
    marker = items["profiles"].folder / "stage.json"
    meta = json.loads(marker.read_text())
    # As if a run had started this folder from a data output that has since been made again.
    marker.write_text(json.dumps({**meta, "status": "running", "inputs": {"data": "an-older-data-run"}}))
    after = {i.stage: i for i in plan(config, until="records")}
    assert after["profiles"].action == "run" and "afresh" in after["profiles"].reason
    assert after["records"].action == "run"
    # A partial folder started from the data there now resumes in place.
    marker.write_text(json.dumps({**meta, "status": "running"}))
    assert _actions(plan(config, until="records"))["profiles"] == "resume"


def test_coreset_recomputes_features_made_from_other_records(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from genrec_core.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", family="chatml")
    data = stages.data(tmp_path / "data", users=8, city={"n_pois": 40, "checkins_per_user": 30})
    recs = stages.records(data, tmp_path / "records")
    out = tmp_path / "coreset"
    args = {"model": str(model), "budget": 0.5, "batch_size": 4, "dtype": "float32", "method": "random"}
    stages.coreset(recs, out, **args)
    # Fewer training records in the same records folder: the old features' rows no longer exist.
    train = pl.read_parquet(recs["train"])
    train.head(max(4, train.height // 2)).write_parquet(recs["train"])
    second = stages.coreset(recs, out, **args)
    ids = set(pl.read_parquet(recs["train"])["record_id"].to_list())
    assert set(pl.read_parquet(second["selection"])["record_id"].to_list()) == ids


# -------------------------------------------------------------------------------- 3. failures


def _failing_template(failing: set[str]):  # type: ignore[no-untyped-def]
    """The template backend, answering nonsense for some users."""
    from genrec_profiler import Completion, TemplateBackend

    class Failing(TemplateBackend):
        def complete(self, requests):  # type: ignore[no-untyped-def]
            good = super().complete(requests)
            return [Completion(text="no profile here", finish_reason="stop") if r.user_id in failing else g
                    for r, g in zip(requests, good, strict=True)]  # fmt: skip

    return Failing


def test_a_profile_stage_with_failed_users_is_not_done_and_the_next_run_retries_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import genrec_profiler

    path = _toml(tmp_path)
    config = load_config(path)
    run(config, until="data")
    users = pl.read_parquet(next((tmp_path / "runs" / "small").glob("data-*")) / "train.parquet")["user_id"]
    failing = set(users.unique().sort().head(2).to_list())
    monkeypatch.setattr(genrec_profiler, "TemplateBackend", _failing_template(failing))
    with pytest.raises(stages.StageFailedError, match=r"profiles: 2 of \d+ profiles failed") as info:
        run(config, until="records")
    assert info.value.exit_status == 1
    folder = {i.stage: i for i in plan(config, until="records")}["profiles"].folder
    assert json.loads((folder / "stage.json").read_text())["status"] == "failed"
    assert _actions(plan(config, until="records"))["profiles"] == "resume"
    assert main(["run", str(path), "--until", "records", "--no-progress"]) == 1
    err = _one_line_error(capsys)
    assert "profiles" in err and "2 of" in err
    # The flag accepts them from the command line (the cache key is the same: the folder resumes).
    assert main(["run", str(path), "--until", "profiles", "--no-progress", "--accept-failures"]) == 0
    capsys.readouterr()
    (folder / "stage.json").write_text(json.dumps({"status": "failed"}))

    # Accepted: the stage is done with the failures in the table.
    accepted = run(config, until="profiles", accept_failures=True)
    assert accepted.artifacts["profiles"].summary["failed"] == 2
    # Not accepted, and the backend fixed: the next run retries only the failed users and succeeds.
    monkeypatch.undo()
    (folder / "stage.json").write_text(json.dumps({"status": "failed"}))
    fixed = run(config, until="records")
    table = pl.read_parquet(fixed.artifacts["profiles"]["profiles"])
    assert set(table.filter(pl.col("status") == "failed")["user_id"].to_list()) == set()
    assert fixed.artifacts["profiles"].summary["resumed"] > 0


def test_accept_failures_is_a_config_key_that_keeps_the_cache_key() -> None:
    plain = load_config(None)
    accepting = load_config(None, overrides={"profiles.accept_failures": "true"})
    assert [i.key for i in plan(plain)] == [i.key for i in plan(accepting)]


# ------------------------------------------------------------------------------ 4. late validation


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("coreset.lam=nan", "[coreset].lam"),
        ("coreset.lam=-0.5", "[coreset].lam"),
        ("coreset.budget=nan", "[coreset].budget"),
        ("coreset.budget=0", "[coreset].budget"),
        ("coreset.budget=-2", "[coreset].budget"),
        ("coreset.budget=2.5", "[coreset].budget"),
        ("coreset.candidates=0", "[coreset].candidates"),
        ("coreset.max_swaps=-1", "[coreset].max_swaps"),
        ("data.users=100000000000000000000", "[data].users"),
        ("data.max_users=-1", "[data].max_users"),
        ("data.prepare.min_poi_checkins=-1", "[data].prepare.min_poi_checkins"),
        ("profiles.options.max_checkins='a lot'", "[profiles].options.max_checkins"),
        ("profiles.users=-1", "[profiles].users"),
        ("profiles.max_new_tokens=0", "[profiles].max_new_tokens"),
        ("records.max_records=-5", "[records].max_records"),
        ("evaluate.max_records=-1", "[evaluate].max_records"),
        ("data.userz=3", "[data].userz"),
        ("data.users='many'", "[data].users"),
        ("train.options.model='./no/such/model'", "[train].options.model"),
        ("coreset.model='/no/such/model'", "[coreset].model"),
    ],
)
def test_every_option_checkable_without_the_data_fails_when_the_config_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, key: str
) -> None:
    assert main(["run", str(_toml(tmp_path)), "--dry-run", "--set", setting]) == 2
    assert key in _one_line_error(capsys)


def test_a_local_looking_model_path_is_no_such_file_never_a_hub_lookup(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"\[coreset\]\.model: models/my/llm: no such file"):
        load_config(
            _toml(tmp_path), overrides={"coreset.model": '"models/my/llm"', "run.root": f'"{tmp_path}"'}
        )


# ------------------------------------------------------------------------------------ 5. credentials


def test_credentials_in_base_url_are_never_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENREC_TEST_KEY", "key-value-from-the-environment")
    url = "https://alice:hunter2-secret@llm.example.com/v1?api_key=qwerty-secret-123"
    config = load_config(_toml(tmp_path, f'base_url = "{url}"\napi_key_env = "GENREC_TEST_KEY"\n'))
    run(config, until="profiles")
    recorded = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*")
                       if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".log", ""))  # fmt: skip
    assert "llm.example.com" in recorded  # the URL is recorded, without its secrets
    assert "hunter2" not in recorded and "qwerty" not in recorded and "alice" not in recorded


def test_redact_covers_urls_queries_tokens_and_given_secrets() -> None:
    from genrec_core import redact

    text = redact(
        "GET https://u:p4ss@h/v1?x=1&token=abc123 failed: Bearer abcdef123456 and MYKEY-999", ["MYKEY-999"]
    )
    assert "p4ss" not in text and "abc123" not in text and "abcdef123456" not in text and "MYKEY" not in text
    assert "https://***@h/v1?x=1&token=***" in text


# ------------------------------------------------------------------------------ 6. silent mismatches


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> stages.DataArtifact:
    return stages.data(tmp_path_factory.mktemp("data"), users=8, city={"n_pois": 40, "checkins_per_user": 30})


def test_profiles_of_none_of_the_users_are_an_error_and_of_some_a_warning(
    tmp_path: Path, small_data: stages.DataArtifact, caplog: pytest.LogCaptureFixture
) -> None:
    profiles = pl.read_parquet(stages.profile(small_data, tmp_path / "profiles")["profiles"])
    others = tmp_path / "others.parquet"
    profiles.with_columns(("x" + pl.col("user_id")).alias("user_id")).write_parquet(others)
    n = small_data.summary["users"]
    with pytest.raises(PipelineError, match=f"none of the {n} users"):
        stages.records(small_data, tmp_path / "r1", profiles=others)
    some = tmp_path / "some.parquet"
    profiles.head(5).write_parquet(some)
    with caplog.at_level(logging.WARNING):
        stages.records(small_data, tmp_path / "r2", profiles=some)
    assert any(f"{n - 5} of {n} users have no profile" in r.getMessage() for r in caplog.records)


def test_non_integral_float_user_ids_in_profiles_are_an_error_naming_the_row(
    tmp_path: Path, small_data: stages.DataArtifact
) -> None:
    from genrec_core import GenrecError

    profiles = pl.read_parquet(stages.profile(small_data, tmp_path / "profiles")["profiles"])
    bad = tmp_path / "float.parquet"
    profiles.with_columns(pl.Series("user_id", [i + 0.5 for i in range(profiles.height)])).write_parquet(bad)
    with pytest.raises(GenrecError, match=r"user_id.*row"):
        stages.records(small_data, tmp_path / "r", profiles=bad)


def test_records_and_data_with_disjoint_users_are_an_error(
    tmp_path: Path, small_data: stages.DataArtifact
) -> None:
    recs = stages.records(small_data, tmp_path / "records")
    other = stages.data(tmp_path / "other", users=6, seed=3, city={"n_pois": 40, "checkins_per_user": 30})
    checkins = pl.read_parquet(other["checkins"]).with_columns(("y" + pl.col("user_id")).alias("user_id"))
    checkins.write_parquet(other["checkins"])
    with pytest.raises(PipelineError, match="share no user"):
        stages.evaluate(recs, other, tmp_path / "eval", mode="none")


# -------------------------------------------------------------------------------------- 7. bad inputs


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "files.toml"
    path.write_text(f'[run]\nname = "files"\nroot = "{tmp_path / "runs"}"\nprogress = false\n'
                    f'[profiles]\nbackend = "template"\n{text}')  # fmt: skip
    return path


@pytest.mark.parametrize("kind", ["text-as-parquet", "empty-csv", "missing"])
def test_bad_input_files_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    name = {"text-as-parquet": "checkins.parquet", "empty-csv": "checkins.csv", "missing": "nope.csv"}[kind]
    path = tmp_path / name
    if kind == "text-as-parquet":
        path.write_text("user_id,poi_id\n1,2\n")
    elif kind == "empty-csv":
        path.write_text("")
    assert main(["run", str(_write(tmp_path, f'[data]\nsource = "files"\ninputs = ["{path}"]\n')),
                 "--until", "data", "--no-progress"]) == 2  # fmt: skip
    assert name in _one_line_error(capsys)


def test_a_run_root_that_is_a_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("not a folder")
    assert main(["run", str(_toml(tmp_path)), "--run-dir", str(occupied), "--until", "data"]) == 2
    assert str(occupied) in _one_line_error(capsys)
    with pytest.raises(PipelineError, match="not a folder"):
        stages.data(occupied, users=4)


def test_a_csv_given_as_profiles_is_one_line(tmp_path: Path, small_data: stages.DataArtifact) -> None:
    csv = tmp_path / "profiles.csv"
    csv.write_text("user_id,summary\n1,hello\n")
    with pytest.raises(PipelineError, match=r"profiles\.csv is not a readable parquet table"):
        stages.records(small_data, tmp_path / "records", profiles=csv)


def test_a_truncated_cached_table_makes_the_stage_run_again_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(_toml(tmp_path))
    first = run(config, until="records")
    train = first.artifacts["records"]["train"]
    whole = train.read_bytes()
    train.write_bytes(whole[: len(whole) // 2])
    items = {i.stage: i for i in plan(config, until="records")}
    assert items["records"].action == "run" and "not usable" in items["records"].reason
    with caplog.at_level(logging.WARNING):
        again = run(config, until="records")
    assert any("not usable" in r.getMessage() for r in caplog.records)
    assert pl.read_parquet(again.artifacts["records"]["train"]).height > 0


def test_child_runs_key_stages_as_the_parent_does(tmp_path: Path) -> None:
    """A pipeline run in a subprocess sees the same cached stages (the code version is passed down)."""
    from genrec_pipeline._cache import code_version

    path = _toml(tmp_path)
    run(load_config(path), until="data")
    env = {**os.environ, "GENREC_CODE_VERSION": json.dumps(code_version())}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genrec_pipeline", "run", str(path), "--until", "data",
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "data      reuse" in proc.stdout, (proc.stdout, time.perf_counter() - start)
