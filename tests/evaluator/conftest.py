"""Fixtures for the evaluator tests: next-POI check-ins and records following DESIGN.md §2.

The NYC fixture converts the GETNext CSVs in ``../shared/data`` with polars (val = history/train,
test = future), independently of genrec_sftdata, so that these tests do not depend on its progress.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest


def _checkins_from_getnext(val: Path, test: Path) -> pl.DataFrame:
    frames = []
    for path, split in ((val, "train"), (test, "test")):
        frames.append(
            pl.read_csv(path, schema_overrides={"user_id": pl.String, "POI_catid_code": pl.Int64}).select(
                pl.col("user_id").cast(pl.String),
                pl.col("POI_id").alias("poi_id"),
                pl.col("POI_catid").alias("category_id"),
                pl.col("POI_catname").alias("category_name"),
                "latitude",
                "longitude",
                pl.col("local_time").str.slice(0, 19).str.to_datetime("%Y-%m-%d %H:%M:%S"),
                pl.col("UTC_time").str.slice(0, 19).str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC").alias("utc_time"),
                pl.col("trajectory_id").cast(pl.String),
                pl.lit(split).alias("split"),
            )
        )
    checkins = pl.concat(frames).sort("user_id", "utc_time")
    train = checkins.filter(pl.col("split") == "train")
    codes = {}
    for col, out in (("user_id", "user_idx"), ("poi_id", "poi_idx"), ("category_id", "category_idx")):
        codes[out] = train.select(pl.col(col).unique().sort()).with_row_index(out).with_columns(
            pl.col(out).cast(pl.Int64)
        )
        checkins = checkins.join(codes[out], on=col, how="left", maintain_order="left")
    return checkins


def _records_from_checkins(checkins: pl.DataFrame, split: str = "test") -> pl.DataFrame:
    """One record per trajectory of ``split``: predict its last check-in from the ones before."""
    num_pois = int(checkins.filter(pl.col("split") == "train")["poi_idx"].max()) + 1
    part = checkins.filter(pl.col("split") == split).sort("trajectory_id", "utc_time")
    traj = part.group_by("trajectory_id", maintain_order=True).agg(
        pl.col("user_id").first(),
        pl.col("poi_idx").alias("pois"),
        pl.col("category_idx").last().alias("target_category_idx"),
        pl.col("local_time").last().alias("target_time"),
    )
    return (
        traj.filter(pl.col("pois").list.len() >= 2)
        .filter(pl.col("pois").list.eval(pl.element().is_null()).list.any().not_())
        .select(
            (pl.lit("nyc-") + pl.col("trajectory_id")).alias("record_id"),
            pl.lit("next_poi").alias("task"),
            "user_id",
            pl.lit(split).alias("split"),
            pl.col("pois").list.last().alias("target_poi_idx"),
            "trajectory_id",
            (pl.col("pois").list.len() - 1).alias("n_checkins"),
            "target_time",
            pl.col("pois").list.head(pl.col("pois").list.len() - 1).alias("history_poi_idx"),
            pl.lit(num_pois, dtype=pl.Int64).alias("num_pois"),
            "target_category_idx",
        )
    )


@pytest.fixture(scope="session")
def nyc(shared_data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(check-ins, test records) of the real NYC slice."""
    root = shared_data / "foursquare_nyc"
    checkins = _checkins_from_getnext(root / "NYC_val.csv", root / "NYC_test.csv")
    return checkins, _records_from_checkins(checkins)
