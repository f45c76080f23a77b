"""GenUP's analyses: user activity and trajectory length thirds, per-category accuracy, cross-city."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from genrec_evaluator._metrics import grouped_metrics

USER_GROUPS = ("inactive", "normal", "very active")
LENGTH_GROUPS = ("short", "middle", "long")


def _thirds(frame: pl.DataFrame, key: str, value: str, labels: Sequence[str], out: str) -> pl.DataFrame:
    """Label rows of ``frame`` (one per ``key``) into three equal-sized groups by ascending ``value``.

    Ties are broken by ``key`` so that the split is deterministic and the groups have equal sizes (up to
    one), as GenUP's thirds do.
    """
    n = frame.height
    labelled = frame.sort([value, key]).with_row_index("_pos")
    third = (pl.col("_pos").cast(pl.Int64) * 3 // max(n, 1)).clip(0, 2)
    return labelled.with_columns(
        third.replace_strict(dict(enumerate(labels)), return_dtype=pl.String).alias(out)
    ).drop("_pos")


def user_activity_groups(records: pl.DataFrame, train: pl.DataFrame) -> pl.DataFrame:
    """``user_id, n_train_trajectories, user_group`` for every user in ``records``.

    Users are split into thirds (inactive / normal / very active) by their number of train trajectories;
    a user with no train trajectory counts 0.
    """
    users = records.select(pl.col("user_id").cast(pl.String)).unique()
    counts = train.group_by(pl.col("user_id").cast(pl.String)).agg(
        pl.col("trajectory_id").n_unique().alias("n_train_trajectories")
    )
    joined = users.join(counts, on="user_id", how="left").with_columns(
        pl.col("n_train_trajectories").fill_null(0)
    )
    return _thirds(joined, "user_id", "n_train_trajectories", USER_GROUPS, "user_group")


def trajectory_length_groups(records: pl.DataFrame) -> pl.DataFrame:
    """``trajectory_id, trajectory_length, length_group`` for every trajectory in ``records``.

    A trajectory's length is its number of check-ins: the longest prefix among its records plus the
    target (``len(history_poi_idx) + 1``), or ``n_checkins`` when records carry no history.
    """
    if "history_poi_idx" in records.columns:
        length = pl.col("history_poi_idx").list.len() + 1
    else:
        length = pl.col("n_checkins")
    lengths = records.group_by(pl.col("trajectory_id").cast(pl.String)).agg(
        length.max().cast(pl.Int64).alias("trajectory_length")
    )
    return _thirds(lengths, "trajectory_id", "trajectory_length", LENGTH_GROUPS, "length_group")


def add_groups(records: pl.DataFrame, train: pl.DataFrame | None) -> pl.DataFrame:
    """``records`` with ``user_group`` (needs ``train``) and ``length_group`` columns."""
    out = records
    if train is not None and {"user_id", "trajectory_id"} <= set(train.columns):
        groups = user_activity_groups(records, train)
        out = out.with_columns(pl.col("user_id").cast(pl.String)).join(
            groups, on="user_id", how="left", maintain_order="left"
        )
    if "trajectory_id" in records.columns:
        out = out.with_columns(pl.col("trajectory_id").cast(pl.String)).join(
            trajectory_length_groups(records), on="trajectory_id", how="left", maintain_order="left"
        )
    return out


def category_names(train: pl.DataFrame | None) -> dict[int, str]:
    if train is None or not {"category_idx", "category_name"} <= set(train.columns):
        return {}
    pairs = train.select("category_idx", "category_name").unique("category_idx")
    return dict(zip(pairs["category_idx"].to_list(), pairs["category_name"].to_list()))


def breakdowns(
    records: pl.DataFrame, ranks: np.ndarray, names: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """Per-group metrics: ``by_user_activity``, ``by_length`` and ``by_category`` (when available)."""
    out: dict[str, Any] = {}
    if "user_group" in records.columns:
        out["by_user_activity"] = grouped_metrics(ranks, records["user_group"].to_list(), order=USER_GROUPS)
    if "length_group" in records.columns:
        out["by_length"] = grouped_metrics(ranks, records["length_group"].to_list(), order=LENGTH_GROUPS)
    if "target_category_idx" in records.columns:
        names = names or {}
        labels = [names.get(c, str(c)) if c is not None else "unknown" for c in records["target_category_idx"]]
        out["by_category"] = grouped_metrics(ranks, labels)
    return out


def cross_city_matrix(
    runs: Sequence[Mapping[str, Any]], *, metric: str = "acc@1", system: str = "model"
) -> pl.DataFrame:
    """Matrix of ``metric`` with one row per training city and one column per evaluation city.

    Each run is a mapping with ``train_city``, ``eval_city`` and ``metrics`` (a ``metrics.json``
    mapping systems to metrics); ``system`` picks which system's value fills the cell.
    """
    rows = [
        {
            "train_city": str(r["train_city"]),
            "eval_city": str(r["eval_city"]),
            metric: float(r["metrics"][system][metric]),
        }
        for r in runs
    ]
    if not rows:
        return pl.DataFrame(schema={"train_city": pl.String})
    long = pl.DataFrame(rows).group_by("train_city", "eval_city").agg(pl.col(metric).mean())
    cities = sorted(set(long["eval_city"].to_list()))
    wide = long.pivot(on="eval_city", index="train_city", values=metric).sort("train_city")
    return wide.select("train_city", *[c for c in cities if c in wide.columns])
