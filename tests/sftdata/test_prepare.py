"""LLM4POI preprocessing: each rule on hand-made check-ins, the split, the codes, the files."""

from __future__ import annotations

import json
import logging

import polars as pl
import pytest

import genrec_sftdata as g

from .conftest import make_checkins

NO_FILTERS = g.PrepareConfig(min_poi_checkins=0, min_user_checkins=0, min_trajectory_checkins=1, drop_unseen=False)


def test_gap_over_threshold_cuts_trajectories() -> None:
    rows = [("u1", "a1", 0), ("u1", "b1", 23.9), ("u1", "a1", 48.0), ("u1", "b1", 49.0), ("u1", "a1", 80.0)]
    data = g.prepare(make_checkins(rows), config=g.PrepareConfig(
        min_poi_checkins=0, min_user_checkins=0, min_trajectory_checkins=1, drop_unseen=False,
        train_frac=1.0, val_frac=0.0,
    ))
    assert data.checkins["trajectory_id"].to_list() == ["u1_1", "u1_1", "u1_2", "u1_2", "u1_3"]
    data = g.prepare(make_checkins(rows), config=g.PrepareConfig(
        min_poi_checkins=0, min_user_checkins=0, min_trajectory_checkins=1, train_frac=1.0, val_frac=0.0,
        max_gap_hours=30.0,
    ))
    assert data.checkins["trajectory_id"].to_list() == ["u1_1", "u1_1", "u1_1", "u1_1", "u1_2"]


def test_min_counts_pois_first_then_users(caplog: pytest.LogCaptureFixture) -> None:
    # POI z has 2 check-ins (dropped); then user u2 keeps 2 of 4 (dropped at min_user_checkins=3).
    rows = [("u1", "a1", h) for h in (0, 1, 2, 3)] + [("u2", "a1", 4), ("u2", "a1", 5), ("u2", "z1", 6), ("u2", "z1", 7)]
    cfg = g.PrepareConfig(min_poi_checkins=3, min_user_checkins=3, min_trajectory_checkins=1, train_frac=1.0, val_frac=0.0)
    with caplog.at_level(logging.INFO, logger="genrec_sftdata"):
        data = g.prepare(make_checkins(rows), config=cfg)
    assert data.checkins["user_id"].unique().to_list() == ["u1"]
    assert data.stats["removed"]["min_poi_checkins"] == 2
    assert data.stats["removed"]["min_user_checkins"] == 2
    assert "rule min_poi_checkins removed 2 of 8 rows" in caplog.text


def test_duplicates_are_dropped_and_counted() -> None:
    rows = [("u1", "a1", 0), ("u1", "a1", 0), ("u1", "b1", 1), ("u1", "b1", 2)]
    data = g.prepare(make_checkins(rows)[[0, 0, 2, 3]], config=NO_FILTERS)  # row 0 twice, exactly
    assert data.stats["removed"]["duplicates"] == 1
    assert data.checkins.height == 3


def test_global_chronological_split_and_unseen_drop() -> None:
    # 10 check-ins in time order across two users; 80/10/10 by global time.
    rows = [("u1", "a1", 0), ("u2", "a1", 1), ("u1", "b1", 2), ("u2", "b1", 3), ("u1", "a1", 4),
            ("u2", "b1", 5), ("u1", "a1", 6), ("u2", "a1", 7), ("u1", "c1", 8), ("u3", "a1", 9)]
    data = g.prepare(make_checkins(rows), config=g.PrepareConfig(
        min_poi_checkins=0, min_user_checkins=0, min_trajectory_checkins=1, drop_unseen=False))
    by_time = data.checkins.sort("utc_time")
    assert by_time["split"].to_list() == ["train"] * 8 + ["val", "test"]
    # val row is u1 at c1 (POI unseen in train); test row is u3 (user unseen): both go.
    data = g.prepare(make_checkins(rows), config=g.PrepareConfig(
        min_poi_checkins=0, min_user_checkins=0, min_trajectory_checkins=1))
    assert data.val.height == 0
    assert data.test.height == 0
    assert data.stats["removed"]["drop_unseen"] == 2


def test_single_checkin_trajectories_are_dropped() -> None:
    rows = [("u1", "a1", 0), ("u1", "b1", 1), ("u1", "a1", 100), ("u1", "a1", 200), ("u1", "b1", 201)]
    cfg = g.PrepareConfig(min_poi_checkins=0, min_user_checkins=0, train_frac=1.0, val_frac=0.0)
    data = g.prepare(make_checkins(rows), config=cfg)
    assert data.checkins.height == 4
    assert data.checkins.group_by("trajectory_id").len()["len"].min() == 2


def test_codes_are_fitted_on_train_in_id_order() -> None:
    rows = [("u2", "b1", 0), ("u1", "a1", 1), ("u2", "a1", 2), ("u1", "c1", 3), ("u1", "b1", 50)]
    data = g.prepare(make_checkins(rows), config=NO_FILTERS)
    train = data.train
    expected_pois = {p: i for i, p in enumerate(sorted(train["poi_id"].unique().to_list()))}
    assert dict(zip(train["poi_id"], train["poi_idx"])) == expected_pois
    assert data.num_pois == len(expected_pois)
    assert sorted(set(train["user_idx"])) == list(range(train["user_id"].n_unique()))


def test_contract_output_and_round_trip(small_prepared: g.PreparedData) -> None:
    ck = small_prepared.checkins
    for col, dtype in g.PREPARED_COLUMNS.items():
        assert ck.schema[col] == dtype, col
    assert ck.equals(ck.sort("user_id", "utc_time", maintain_order=True))
    assert set(ck["split"].unique()) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        part = getattr(small_prepared, split)
        assert part.height == small_prepared.stats["splits"][split]["checkins"]
        assert part["user_id"].n_unique() == small_prepared.stats["splits"][split]["users"]
        assert part["trajectory_id"].n_unique() == small_prepared.stats["splits"][split]["trajectories"]
    path = small_prepared.path
    assert path is not None
    # Hidden files (the folder's ``.lock``) are the writer's, not part of the set.
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == [
        "checkins.parquet", "stats.json", "test.parquet", "train.parquet", "val.parquet"
    ]
    loaded = g.load_prepared(path)
    assert loaded.checkins.equals(ck)
    assert loaded.stats == json.loads((path / "stats.json").read_text())
    assert loaded.num_pois == small_prepared.num_pois


def test_given_split_is_kept(small_city: pl.DataFrame) -> None:
    cut = small_city["utc_time"].sort()[small_city.height // 2]
    hist = small_city.filter(pl.col("utc_time") < cut)
    fut = small_city.filter(pl.col("utc_time") >= cut)
    data = g.prepare({"train": hist, "test": fut})
    assert data.val.height == 0
    assert data.test["utc_time"].min() >= cut
    assert data.train["utc_time"].max() < cut
    assert data.stats["given_split"] is True


def test_empty_after_filters_is_an_error() -> None:
    rows = [("u1", "a1", 0), ("u1", "b1", 1)]
    with pytest.raises(g.SftDataError, match="no check-ins left"):
        g.prepare(make_checkins(rows))


def test_bad_coordinates_and_missing_columns_name_the_problem() -> None:
    frame = make_checkins([("u1", "a1", 0), ("u1", "b1", 1)])
    with pytest.raises(g.SftDataError, match=r"'latitude'.*row 1"):
        g.prepare(frame.with_columns(latitude=pl.Series([40.0, 95.0])), config=NO_FILTERS)
    with pytest.raises(g.SftDataError, match=r"'longitude'.*row 0"):
        g.prepare(frame.with_columns(longitude=pl.Series([float("nan"), 1.0])), config=NO_FILTERS)
    with pytest.raises(g.SftDataError, match=r"missing column 'poi_id' \(did you mean 'poi_idd'\?\)"):
        g.prepare(frame.rename({"poi_id": "poi_idd"}), config=NO_FILTERS)


def test_load_prepared_missing_file(tmp_path) -> None:
    with pytest.raises(g.SftDataError, match=r"checkins\.parquet: missing"):
        g.load_prepared(tmp_path)


def test_load_prepared_holds_tables_to_the_checkins_contract(small_prepared: g.PreparedData, tmp_path) -> None:
    """Prepared tables are read through genrec_core's CHECKINS contract: a bad value is one error
    (a GenrecError) naming the file, the column and the row."""
    from genrec_core import GenrecError

    assert small_prepared.path is not None
    for name in ("checkins", "train", "val", "test"):
        frame = pl.read_parquet(small_prepared.path / f"{name}.parquet")
        if name == "val":
            frame = frame.with_columns(split=pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("dev")).otherwise("split"))
        frame.write_parquet(tmp_path / f"{name}.parquet")
    with pytest.raises(GenrecError, match=r"val\.parquet: column 'split' has 'dev' at row 2") as info:
        g.load_prepared(tmp_path)
    assert isinstance(info.value, g.SftDataError)


def test_re_preparing_a_prepared_table_recomputes_its_columns(small_prepared: g.PreparedData) -> None:
    # The count filters are not idempotent (later rules remove rows), so switch them off: then the
    # splits (kept as given), codes and trajectories come back the same; only the trajectory numbers
    # may differ, because they are counted again.
    cfg = g.PrepareConfig(min_poi_checkins=0, min_user_checkins=0)
    again = g.prepare(small_prepared.checkins, config=cfg)
    assert again.stats["given_split"] is True
    cols = [c for c in g.PREPARED_COLUMNS if c != "trajectory_id"]
    assert again.checkins.select(cols).equals(small_prepared.checkins.select(cols))
    pairs = pl.DataFrame({"a": small_prepared.checkins["trajectory_id"], "b": again.checkins["trajectory_id"]})
    assert pairs.unique().height == pairs["a"].n_unique() == pairs["b"].n_unique()
