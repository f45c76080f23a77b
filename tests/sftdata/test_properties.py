"""Property tests: for any valid input, prepare keeps the contract and its promises."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import genrec_sftdata as g

checkin = st.tuples(
    st.sampled_from(["u1", "u2", "u3", "u4"]),
    st.sampled_from(["pa", "pb", "pc", "pd", "pe"]),
    st.floats(min_value=0, max_value=400, allow_nan=False),
)
configs = st.builds(
    g.PrepareConfig,
    min_poi_checkins=st.integers(0, 3),
    min_user_checkins=st.integers(0, 3),
    train_frac=st.sampled_from([0.5, 0.6, 0.8]),
    val_frac=st.sampled_from([0.1, 0.2]),
    max_gap_hours=st.floats(min_value=0.5, max_value=48),
    min_trajectory_checkins=st.integers(1, 3),
)


def _frame(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    start = datetime(2012, 4, 3)
    local = [start + timedelta(seconds=round(h * 3600)) for _, _, h in rows]
    return pl.DataFrame({
        "user_id": [r[0] for r in rows], "poi_id": [r[1] for r in rows],
        "category_id": [r[1][-1] for r in rows], "category_name": [r[1].upper() for r in rows],
        "latitude": [40.0] * len(rows), "longitude": [-73.0] * len(rows),
        "local_time": local, "utc_time": local,
    }).with_columns(pl.col("utc_time").dt.replace_time_zone("UTC"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(checkin, min_size=1, max_size=60),
    cfg=configs,
    given_split=st.one_of(st.none(), st.lists(st.sampled_from(["train", "val", "test"]), min_size=60, max_size=60)),
)
def test_prepare_promises(
    rows: list[tuple[str, str, float]], cfg: g.PrepareConfig, given_split: list[str] | None
) -> None:
    frame = _frame(rows)
    if given_split is not None:  # an input that brings its own split, kept as given
        frame = frame.with_columns(split=pl.Series(given_split[: frame.height]))
    try:
        data = g.prepare(frame, config=cfg)
    except g.SftDataError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        # The only refusal for valid input: nothing left to split or to fit codes on.
        assert "no check-ins left" in error or "train split is empty" in error
        return
    ck = data.checkins
    # Contract.
    for col, dtype in g.PREPARED_COLUMNS.items():
        assert ck.schema[col] == dtype
    assert ck.null_count().sum_horizontal().item() == 0
    assert ck.equals(ck.sort("user_id", "utc_time", maintain_order=True))
    assert ck.select(pl.struct("user_id", "poi_id", "utc_time").is_unique().all()).item()
    # No val/test row whose user or POI is unseen in train.
    train = ck.filter(pl.col("split") == "train")
    rest = ck.filter(pl.col("split") != "train")
    assert set(rest["user_id"]) <= set(train["user_id"])
    assert set(rest["poi_id"]) <= set(train["poi_id"])
    # No trajectory holds a gap over the threshold, none mixes users or splits, none is too short.
    gaps = ck.with_columns(gap=pl.col("utc_time").diff().over("trajectory_id")).drop_nulls("gap")
    assert (gaps["gap"] <= timedelta(hours=cfg.max_gap_hours)).all()
    per = ck.group_by("trajectory_id").agg(pl.col("user_id").n_unique(), pl.col("split").n_unique(), pl.len())
    assert (per["user_id"] == 1).all()
    assert (per["split"] == 1).all()
    assert (per["len"] >= cfg.min_trajectory_checkins).all()
    # Splits are chronological and codes are dense on train.
    val, test = ck.filter(pl.col("split") == "val"), ck.filter(pl.col("split") == "test")
    if given_split is not None:
        # Kept as given: every surviving row carries the split it came with.
        original = frame.with_columns(split=pl.Series(given_split[: frame.height])).unique(
            subset=["user_id", "poi_id", "utc_time"], keep="first", maintain_order=True
        )
        joined = ck.join(original, on=["user_id", "poi_id", "utc_time"], how="left", suffix="_in")
        assert (joined["split"] == joined["split_in"]).all()
    elif val.height:
        assert train["utc_time"].max() <= val["utc_time"].min()
    if given_split is None and test.height:
        assert max(train["utc_time"].max(), val["utc_time"].max() or train["utc_time"].max()) <= test["utc_time"].min()
    assert sorted(train["poi_idx"].unique()) == list(range(data.num_pois))
    assert (ck["poi_idx"] < data.num_pois).all()
    # Records: one per trajectory, its target the last check-in.
    recs = g.build_next_poi(data)
    n_traj = sum(data.stats["splits"][s]["trajectories"] for s in ("train", "val", "test"))
    n_single = int((per["len"] == 1).sum())
    assert sum(r.height for r in recs.values()) == n_traj - n_single
