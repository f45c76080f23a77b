"""Per-user inputs of a profile: GenUP check-in sentences and a statistical digest of the history.

Everything is computed for all users at once with Polars expressions; only the final rendering of a
digest into a sentence is per-user Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: Hours counted as "night" when locating a user's home area.
NIGHT_HOURS = (20, 21, 22, 23, 0, 1, 2, 3, 4, 5)
TOP_K = 5


@dataclass(frozen=True, kw_only=True)
class UserDigest:
    """Statistics of one user's whole training history (what the prompt keeps when check-ins are cut)."""

    user_id: str
    n_checkins: int
    n_pois: int
    n_categories: int
    first: str
    last: str
    top_categories: tuple[tuple[str, int], ...]
    top_hours: tuple[tuple[int, int], ...]
    top_weekdays: tuple[tuple[str, int], ...]
    home: tuple[float, float] | None
    revisit_rate: float
    night_share: float
    weekend_share: float

    def render(self) -> str:
        """The digest as a few compact lines for the prompt."""
        cats = ", ".join(f"{name} ({n})" for name, n in self.top_categories)
        hours = ", ".join(f"{h:02d}:00 ({n})" for h, n in self.top_hours)
        days = ", ".join(f"{d} ({n})" for d, n in self.top_weekdays)
        home = f"near ({self.home[0]:.3f}, {self.home[1]:.3f})" if self.home else "unknown"
        return (
            f"Whole history: {self.n_checkins} check-ins from {self.first} to {self.last} at {self.n_pois} "
            f"distinct POIs in {self.n_categories} categories.\n"
            f"Top categories: {cats}.\n"
            f"Busiest hours: {hours}.\n"
            f"Busiest weekdays: {days}.\n"
            f"Home area (most visited place at night): {home}.\n"
            f"Revisit rate: {self.revisit_rate:.2f}; night-time share: {self.night_share:.2f}; "
            f"weekend share: {self.weekend_share:.2f}."
        )


def _top(frame: pl.DataFrame, key: pl.Expr, name: str) -> pl.DataFrame:
    """Per user, the TOP_K most frequent values of ``key`` (ties broken by value) with their counts."""
    return (
        frame.group_by("user_id", key.alias(name))
        .len()
        .sort(["user_id", "len", name], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .head(TOP_K)
        .group_by("user_id", maintain_order=True)
        .agg(pl.col(name).alias(f"{name}_top"), pl.col("len").alias(f"{name}_n"))
    )


def compute_digests(train: pl.DataFrame) -> dict[str, UserDigest]:
    """One :class:`UserDigest` per user of ``train`` (contract check-in columns)."""
    if train.height == 0:
        return {}
    frame = train.select(
        pl.col("user_id").cast(pl.String),
        pl.col("poi_id").cast(pl.String),
        pl.col("category_name").cast(pl.String),
        "latitude",
        "longitude",
        "local_time",
    ).with_columns(
        hour=pl.col("local_time").dt.hour(),
        weekday=pl.col("local_time").dt.weekday(),  # 1 = Monday
    )
    base = frame.group_by("user_id", maintain_order=True).agg(
        n_checkins=pl.len(),
        n_pois=pl.col("poi_id").n_unique(),
        n_categories=pl.col("category_name").n_unique(),
        first=pl.col("local_time").min().dt.strftime("%Y-%m-%d"),
        last=pl.col("local_time").max().dt.strftime("%Y-%m-%d"),
        night_share=pl.col("hour").is_in(NIGHT_HOURS).mean(),
        weekend_share=(pl.col("weekday") >= 6).mean(),
    )
    # Home: the POI with the most night check-ins (all check-ins break ties and cover users who never
    # check in at night).
    home = (
        frame.group_by("user_id", "poi_id")
        .agg(
            night=pl.col("hour").is_in(NIGHT_HOURS).sum(),
            n=pl.len(),
            lat=pl.col("latitude").mean(),
            lon=pl.col("longitude").mean(),
        )
        .sort(["user_id", "night", "n", "poi_id"], descending=[False, True, True, False])
        .group_by("user_id", maintain_order=True)
        .first()
        .select("user_id", "lat", "lon")
    )
    table = (
        base.join(_top(frame, pl.col("category_name"), "cat"), on="user_id", how="left")
        .join(_top(frame, pl.col("hour"), "hour"), on="user_id", how="left")
        .join(_top(frame, pl.col("weekday"), "day"), on="user_id", how="left")
        .join(home, on="user_id", how="left")
    )
    out: dict[str, UserDigest] = {}
    for row in table.iter_rows(named=True):
        out[row["user_id"]] = _digest_from_row(row)
    return out


def _digest_from_row(row: dict[str, Any]) -> UserDigest:
    n = int(row["n_checkins"])
    has_home = row["lat"] is not None and row["lon"] is not None
    return UserDigest(
        user_id=row["user_id"],
        n_checkins=n,
        n_pois=int(row["n_pois"]),
        n_categories=int(row["n_categories"]),
        first=row["first"] or "",
        last=row["last"] or "",
        top_categories=tuple(zip(row["cat_top"] or [], row["cat_n"] or [])),
        top_hours=tuple(zip(row["hour_top"] or [], row["hour_n"] or [])),
        top_weekdays=tuple((WEEKDAYS[d - 1], c) for d, c in zip(row["day_top"] or [], row["day_n"] or [])),
        home=(float(row["lat"]), float(row["lon"])) if has_home else None,
        revisit_rate=1.0 - int(row["n_pois"]) / n if n else 0.0,
        night_share=float(row["night_share"] or 0.0),
        weekend_share=float(row["weekend_share"] or 0.0),
    )


def user_sentences(train: pl.DataFrame) -> dict[str, list[str]]:
    """GenUP's sentences per user, oldest first."""
    from genrec_sftdata import checkin_sentence_expr

    if train.height == 0:
        return {}
    grouped = (
        train.sort("user_id", "local_time", maintain_order=True)
        .select(pl.col("user_id").cast(pl.String), checkin_sentence_expr())
        .group_by("user_id", maintain_order=True)
        .agg("sentence")
    )
    return dict(zip(grouped["user_id"].to_list(), grouped["sentence"].to_list()))
