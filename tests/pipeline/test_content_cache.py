"""Stage caches are keyed by what the inputs hold, not by their paths: an input file edited in place
re-runs the stage that reads it and everything downstream; an untouched one reuses every stage."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("torch")

from genrec_pipeline import load_config, plan, run
from genrec_pipeline._cache import code_version, input_key

CONFIG = """
[run]
name = "csv"
root = "{root}"
progress = false
[data]
source = "files"
inputs = ["{csv}"]
[data.prepare]
min_poi_checkins = 2
min_user_checkins = 5
keep_split = false
[profiles]
backend = "template"
[records.options]
max_history = 4
[coreset]
enabled = false
[train]
recipe = ""
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


@pytest.mark.integration
def test_editing_an_input_csv_in_place_reruns_data_and_everything_after(tmp_path: Path, tiny_chatml: Path) -> None:
    from genrec_sftdata import synthesize_city

    csv = tmp_path / "checkins.csv"
    synthesize_city(n_users=6, seed=3, n_pois=40, checkins_per_user=40).write_csv(csv)
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(root=tmp_path / "runs", csv=csv, model=tiny_chatml))
    config = load_config(path)
    first = run(config)
    assert set(first.artifacts) == {"data", "profiles", "records", "train", "evaluate"}
    first_folders = {stage: art.path for stage, art in first.artifacts.items()}

    # Unchanged: every stage is reused, even after a `touch` (the content, not the mtime, counts).
    os.utime(csv)
    assert {i.stage: i.action for i in plan(config) if i.action != "skip"} == dict.fromkeys(first_folders, "reuse")
    again = run(config)
    assert {s: a.path for s, a in again.artifacts.items()} == first_folders

    # The same path, new content: the data stage and every stage after it run again, in new folders.
    frame = pl.read_csv(csv)
    frame.with_columns(pl.col("latitude") + 0.001).write_csv(csv)
    items = {i.stage: i for i in plan(config)}
    assert {s: i.action for s, i in items.items() if i.action != "skip"} == dict.fromkeys(first_folders, "run")
    second = run(config)
    for stage, folder in first_folders.items():
        assert second.artifacts[stage].path != folder, stage
        assert second.artifacts[stage].path == items[stage].folder
    lat = pl.read_parquet(second.artifacts["data"]["checkins"])["latitude"]
    assert lat.min() > pl.read_parquet(first.artifacts["data"]["checkins"])["latitude"].min()


def test_input_key_hashes_content_and_keeps_hub_ids(tmp_path: Path) -> None:
    one = tmp_path / "a.csv"
    one.write_text("x\n1\n")
    copy = tmp_path / "b.csv"
    copy.write_text("x\n1\n")
    assert input_key(str(one))["sha256"] == input_key(str(copy))["sha256"]
    one.write_text("x\n2\n")
    assert input_key(str(one))["sha256"] != input_key(str(copy))["sha256"]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = input_key(str(folder))
    (folder / "config.json").write_text('{"a": 1}')
    assert input_key(str(folder)) != before
    assert input_key("w11wo/FourSquare-NYC-POI") == "w11wo/FourSquare-NYC-POI"


def test_code_version_covers_the_source_of_a_checkout() -> None:
    versions = code_version()
    assert {"genrec-core", "genrec-pipeline", "genrec-trainer"} <= set(versions)
    # The workspace installs the packages from this git checkout (editable): their source is hashed.
    assert "+src." in versions["genrec-pipeline"]
