"""Shared fixtures for genrec-sftdata tests: a small synthetic city, raw and prepared."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

import genrec_sftdata as g


@pytest.fixture(scope="session")
def small_city() -> pl.DataFrame:
    return g.synthesize_city(n_users=60, seed=7)


@pytest.fixture(scope="session")
def small_prepared(small_city: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> g.PreparedData:
    return g.prepare(small_city, out=tmp_path_factory.mktemp("prepared"))


def make_checkins(rows: list[tuple[str, str, float]], *, start: datetime = datetime(2012, 4, 3)) -> pl.DataFrame:
    """Contract check-ins from (user, poi, hours after start); category follows the POI's first letter."""
    users, pois, hours = zip(*rows)
    local = [start + timedelta(hours=h) for h in hours]
    return pl.DataFrame(
        {
            "user_id": list(users),
            "poi_id": list(pois),
            "category_id": [f"c{p[0]}" for p in pois],
            "category_name": [f"Cat {p[0].upper()}" for p in pois],
            "latitude": [40.7 + 0.001 * i for i in range(len(rows))],
            "longitude": [-73.9 - 0.001 * i for i in range(len(rows))],
            "local_time": local,
            "utc_time": [t + timedelta(hours=5) for t in local],
        }
    ).with_columns(pl.col("utc_time").dt.replace_time_zone("UTC"))
