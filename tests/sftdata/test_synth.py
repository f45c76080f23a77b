"""The synthetic city: deterministic, contract-shaped, learnable but not trivial."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import genrec_sftdata as g


def test_same_seed_same_city_other_seed_other_city() -> None:
    a = g.synthesize_city(n_users=30, seed=1)
    b = g.synthesize_city(n_users=30, seed=1)
    c = g.synthesize_city(n_users=30, seed=2)
    assert_frame_equal(a, b)
    assert not a.equals(c)


def test_contract_columns_and_order(small_city: pl.DataFrame) -> None:
    for col, dtype in g.RAW_COLUMNS.items():
        assert small_city.schema[col] == dtype, col
    assert small_city["user_id"].n_unique() == 60
    assert small_city.null_count().sum_horizontal().item() == 0
    # Sorted by user then time; local = utc + offset.
    assert small_city.equals(small_city.sort("user_id", "utc_time", maintain_order=True))
    diff = (small_city["local_time"] - small_city["utc_time"].dt.replace_time_zone(None)).dt.total_minutes()
    assert (diff == small_city["timezone"]).all()
    assert small_city["latitude"].is_between(40.0, 41.5).all()


def test_city_shape_is_realistic(small_city: pl.DataFrame) -> None:
    per_user = small_city.group_by("user_id").len()["len"]
    assert 60 < per_user.mean() < 250  # about checkins_per_user
    pop = small_city["poi_id"].value_counts()["count"].sort(descending=True)
    # Power-law-ish popularity: the top 10% of POIs take a large share of visits.
    top = pop.head(max(1, len(pop) // 10)).sum() / pop.sum()
    assert top > 0.3
    # Revisits: most visits go to a POI the user has been to before.
    first_visits = small_city.select(pl.struct("user_id", "poi_id").n_unique()).item()
    assert first_visits / small_city.height < 0.5
    assert small_city["category_name"].n_unique() > 20


def _markov_acc(data: g.PreparedData) -> tuple[float, float]:
    tr = data.train.with_columns(nxt=pl.col("poi_idx").shift(-1).over("trajectory_id")).drop_nulls("nxt")
    top = (
        tr.group_by("poi_idx", "nxt").len()
        .sort("len", "nxt", descending=[True, False])
        .group_by("poi_idx", maintain_order=True).first()
        .rename({"poi_idx": "last"})
    )
    pop = data.train["poi_idx"].mode().sort()[0]
    recs = g.build_next_poi(data)["test"].with_columns(last=pl.col("history_poi_idx").list.last())
    pred = recs.join(top, on="last", how="left")["nxt"].fill_null(pop)
    return float((pred == recs["target_poi_idx"]).mean()), 1.0 / data.num_pois


def test_city_is_learnable_but_not_trivial() -> None:
    data = g.prepare(g.synthesize_city(n_users=300, seed=0))
    acc, chance = _markov_acc(data)
    assert acc > 10 * chance
    assert acc < 0.5


def test_options_are_validated() -> None:
    with pytest.raises(g.SftDataError, match="unknown option 'n_poi'"):
        g.synthesize_city(n_users=10, n_poi=5)
    with pytest.raises(g.SftDataError, match="revisit"):
        g.synthesize_city(n_users=10, revisit=1.5)
    with pytest.raises(g.SftDataError, match="n_users"):
        g.synthesize_city(n_users=0)


def test_chunking_does_not_change_the_shape() -> None:
    one = g.synthesize_city(n_users=40, seed=3, chunk_users=4096)
    many = g.synthesize_city(n_users=40, seed=3, chunk_users=7)
    assert set(one.columns) == set(many.columns)
    assert one["user_id"].n_unique() == many["user_id"].n_unique() == 40


def test_smallest_city_survives_the_default_rules() -> None:
    data = g.prepare(g.synthesize_city(n_users=20, seed=0))
    assert all(data.stats["splits"][s]["checkins"] > 50 for s in ("train", "val", "test"))
    assert all(frame.height > 10 for frame in g.build_next_poi(data).values())
