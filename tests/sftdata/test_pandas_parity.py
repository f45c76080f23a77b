"""prepare() against the straightforward pandas implementation kept in bench/sftdata (the oracle)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import genrec_sftdata as g

pd = pytest.importorskip("pandas")

_REF = Path(__file__).resolve().parents[2] / "bench" / "sftdata" / "pandas_prepare.py"


def _reference():
    spec = importlib.util.spec_from_file_location("pandas_prepare_ref", _REF)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.pandas_prepare


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"max_gap_hours": 6.0, "min_poi_checkins": 5, "min_user_checkins": 20},
        {"drop_unseen": False, "min_trajectory_checkins": 3, "train_frac": 0.7, "val_frac": 0.15},
    ],
)
def test_polars_and_pandas_give_the_same_tables(small_city: pl.DataFrame, opts: dict) -> None:
    # Duplicates on purpose: both must drop the same rows.
    raw = pl.concat([small_city, small_city.sample(50, seed=1)])
    ours = g.prepare(raw, config=g.PrepareConfig(**opts)).checkins
    ref = pl.from_pandas(_reference()(raw.to_pandas(), **opts))
    cols = list(g.PREPARED_COLUMNS)
    ref = ref.select(cols).with_columns(
        pl.col("utc_time").dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
        pl.col("local_time").dt.cast_time_unit("us"),
        pl.col("user_idx", "poi_idx", "category_idx").cast(pl.Int64),
    )
    assert ours.height > 1000
    assert_frame_equal(ours.select(cols), ref)
