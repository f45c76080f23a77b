"""Real FourSquare NYC (GETNext split files): val as history, test as future."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import genrec_sftdata as g

NO_FILTERS = g.PrepareConfig(
    min_poi_checkins=0, min_user_checkins=0, min_trajectory_checkins=1, drop_unseen=False, drop_duplicates=False
)


def _file_counts(path: Path) -> dict[str, int]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"checkins": len(rows), "users": len({r["user_id"] for r in rows}), "pois": len({r["POI_id"] for r in rows})}


@pytest.fixture(scope="module")
def nyc(shared_data: Path) -> dict[str, Path]:
    folder = shared_data / "foursquare_nyc"
    return {"train": folder / "NYC_val.csv", "test": folder / "NYC_test.csv"}


def test_counts_match_the_files(nyc: dict[str, Path]) -> None:
    data = g.prepare(nyc, config=NO_FILTERS)
    for split, path in nyc.items():
        want = _file_counts(path)
        got = data.stats["splits"][split]
        assert {k: got[k] for k in want} == want
    assert data.val.height == 0
    assert (data.stats["splits"]["train"]["checkins"], data.stats["splits"]["train"]["users"]) == (10339, 513)
    # Local time is the file's clock time; UTC is UTC_time.
    row = data.checkins.filter(pl.col("poi_id") == "4fa5cedbe4b038e6a2b5ed1c").row(0, named=True)
    assert f"{row['utc_time']:%Y-%m-%d %H:%M:%S}" == "2012-11-09 21:54:47"
    assert f"{row['local_time']:%Y-%m-%d %H:%M:%S}" == "2012-11-09 16:54:47"
    assert row["category_name"] == "Bar"


def test_default_rules_on_real_data(nyc: dict[str, Path]) -> None:
    data = g.prepare(nyc)
    rows: list[dict] = []
    for path in nyc.values():
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    assert data.stats["removed"]["duplicates"] == 0
    pois = Counter(r["POI_id"] for r in rows)
    poi_kept = [r for r in rows if pois[r["POI_id"]] >= 10]
    users = Counter(r["user_id"] for r in poi_kept)
    user_kept = [r for r in poi_kept if users[r["user_id"]] >= 10]
    assert data.stats["removed"]["min_poi_checkins"] == len(rows) - len(poi_kept)
    assert data.stats["removed"]["min_user_checkins"] == len(poi_kept) - len(user_kept)
    train, test = data.train, data.test
    assert set(test["user_id"]) <= set(train["user_id"])
    assert set(test["poi_id"]) <= set(train["poi_id"])
    assert test["poi_idx"].max() < data.num_pois
    assert data.checkins.group_by("trajectory_id").len()["len"].min() >= 2
    recs = g.build_next_poi(data)
    assert recs["test"].height == data.stats["splits"]["test"]["trajectories"]
    assert recs["test"]["prompt"][0].endswith(f"range from 0 to {data.num_pois}.")


def test_cli_split_inputs(nyc: dict[str, Path], tmp_path: Path, capsys) -> None:
    from genrec_sftdata._cli import main

    out = tmp_path / "nyc"
    assert main(["prepare", "--split-inputs", "--input", str(nyc["train"]), "--input", str(nyc["test"]),
                 "--out", str(out), "--min-poi-checkins", "0", "--min-user-checkins", "0"]) == 0
    assert str(out) in capsys.readouterr().out
    stats = g.load_prepared(out).stats
    assert stats["given_split"] is True
    assert stats["input_rows"] == _file_counts(nyc["train"])["checkins"] + _file_counts(nyc["test"])["checkins"]
    assert stats["splits"]["val"]["checkins"] == 0
