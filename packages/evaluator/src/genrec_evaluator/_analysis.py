"""Analyses after GenUP's: user activity and trajectory length groups, per-category accuracy, cross-city.

``protocol="genrec"`` (ours): equal thirds of the evaluated records' users and trajectories, ties broken
by id. ``protocol="genup"``: GenUP's own rules (``_genup``), kept for reproducing its tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from genrec_evaluator._formats import prompt_text
from genrec_evaluator._metrics import grouped_metrics, ranking_metrics

USER_GROUPS = ("inactive", "normal", "very active")
LENGTH_GROUPS = ("short", "middle", "long")
HISTORY_GROUPS = ("in history", "not in history")
# "visited POI id 12" (GenUP prompts) or "POI ids 3, 4, 5": ids the model can read off the prompt.
_PROMPT_POIS = re.compile(r"POI ids?\s+(\d+(?:\s*,\s*\d+)*)")


def _thirds(frame: pl.DataFrame, key: str, value: str, labels: Sequence[str], out: str) -> pl.DataFrame:
    """Label rows of ``frame`` (one per ``key``) into three equal-sized groups by ascending ``value``.

    Ties are broken by ``key`` so that the split is deterministic and the groups have equal sizes (up to
    one); GenUP's own rule (groups by value, so unequal under ties) is ``protocol="genup"``.
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


def genup_lengths(records: pl.DataFrame) -> pl.Series | None:
    """Each record's trajectory length as GenUP's analysis counts it: visits in ``inputs`` (GenUP's
    column), else the history the record carries (``history_poi_idx``), else ``n_checkins``."""
    from genrec_evaluator._genup import genup_trajectory_length

    if "inputs" in records.columns:
        return pl.Series([genup_trajectory_length(t or "") for t in records["inputs"].to_list()], dtype=pl.Int64)
    if "history_poi_idx" in records.columns and records["history_poi_idx"].list.len().sum() > 0:
        return records["history_poi_idx"].list.len().cast(pl.Int64)
    if "n_checkins" in records.columns:
        return records["n_checkins"].cast(pl.Int64)
    return None


def train_user_sequence(train: pl.DataFrame | None, train_records: pl.DataFrame | None) -> list[str] | None:
    """One user id per train trajectory, in order: the rows of the train records (GenUP counts rows of
    its train split), else the distinct train trajectories of the check-ins."""
    if train_records is not None and "user_id" in train_records.columns:
        return train_records["user_id"].cast(pl.String).to_list()
    if train is not None and {"user_id", "trajectory_id"} <= set(train.columns):
        return train.select(pl.col("user_id").cast(pl.String), pl.col("trajectory_id").cast(pl.String)).unique(
            maintain_order=True
        )["user_id"].to_list()
    return None


def add_groups(
    records: pl.DataFrame, train: pl.DataFrame | None, *, protocol: str = "genrec",
    train_records: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``records`` with ``user_group`` (needs ``train`` check-ins, or ``train_records`` under genup),
    ``length_group`` and ``answer_in_history`` (when the records carry histories or prompts) columns.

    ``protocol="genrec"``: thirds of the records' users and trajectories (:func:`user_activity_groups`,
    :func:`trajectory_length_groups`). ``"genup"``: GenUP's rules: user thirds over every train user,
    length groups by value over the records given (pass the whole split).
    """
    out = records
    if protocol == "genup":
        from genrec_evaluator._genup import genup_user_activity, genup_value_groups

        users = train_user_sequence(train, train_records)
        if users:
            groups = genup_user_activity(users)
            out = out.with_columns(pl.col("user_id").cast(pl.String)).join(
                groups, on="user_id", how="left", maintain_order="left"
            )
        lengths = genup_lengths(records)
        if lengths is not None:
            out = out.with_columns(
                lengths.alias("trajectory_length"),
                pl.Series("length_group", genup_value_groups(lengths.to_list(), LENGTH_GROUPS), dtype=pl.String),
            )
    else:
        if train is not None and {"user_id", "trajectory_id"} <= set(train.columns):
            groups = user_activity_groups(records, train)
            out = out.with_columns(pl.col("user_id").cast(pl.String)).join(
                groups, on="user_id", how="left", maintain_order="left"
            )
        if "trajectory_id" in records.columns:
            out = out.with_columns(pl.col("trajectory_id").cast(pl.String)).join(
                trajectory_length_groups(records), on="trajectory_id", how="left", maintain_order="left"
            )
    if "target_poi_idx" in out.columns:
        seen = answer_in_history(out)
        if seen is not None:
            out = out.with_columns(pl.Series("answer_in_history", seen[0], dtype=pl.Boolean))
    return out


def category_names(train: pl.DataFrame | None) -> dict[int, str]:
    if train is None or not {"category_idx", "category_name"} <= set(train.columns):
        return {}
    pairs = train.select("category_idx", "category_name").unique("category_idx")
    return dict(zip(pairs["category_idx"].to_list(), pairs["category_name"].to_list()))


def answer_in_history(records: pl.DataFrame) -> tuple[np.ndarray, str] | None:
    """Whether each record's answer POI already appears in what the model reads, and from where that
    was read: the ``history_poi_idx`` column, ids parsed from the ``prompt`` (which may hold earlier
    trajectories too), or both (their union). ``None`` when neither is available."""
    targets = records["target_poi_idx"].to_list()
    seen: list[set[int]] = [set() for _ in targets]
    sources = []
    if "history_poi_idx" in records.columns:
        hist = records["history_poi_idx"].to_list()
        if any(h for h in hist):
            sources.append("history_poi_idx")
            for s, h in zip(seen, hist):
                s.update(int(x) for x in (h or []) if x is not None)
    if "prompt" in records.columns:
        found = False
        for s, prompt in zip(seen, records["prompt"].to_list()):
            for match in _PROMPT_POIS.finditer(prompt_text(prompt)):
                found = True
                s.update(int(x) for x in re.findall(r"\d+", match[1]))
        if found:
            sources.append("prompt")
    if not sources:
        return None
    flags = np.array([t in s for t, s in zip(targets, seen)], dtype=bool)
    return flags, " + ".join(sources)


def history_labels(flags: np.ndarray) -> list[str]:
    return [HISTORY_GROUPS[0] if f else HISTORY_GROUPS[1] for f in flags]


def group_labels(records: pl.DataFrame, names: Mapping[int, str] | None = None) -> dict[str, tuple[list[str], Sequence[str] | None]]:
    """Each available breakdown (``by_user_activity``, ``by_length``, ``by_category``, ``by_history``)
    as (one label per record, the order of the groups or ``None`` for sorted)."""
    out: dict[str, tuple[list[str], Sequence[str] | None]] = {}
    if "user_group" in records.columns:
        out["by_user_activity"] = ([str(g) for g in records["user_group"].to_list()], USER_GROUPS)
    if "length_group" in records.columns:
        out["by_length"] = ([str(g) for g in records["length_group"].to_list()], LENGTH_GROUPS)
    if "target_category_idx" in records.columns:
        names = names or {}
        out["by_category"] = ([names.get(c, str(c)) if c is not None else "unknown" for c in records["target_category_idx"]], None)
    if "answer_in_history" in records.columns:
        out["by_history"] = (history_labels(records["answer_in_history"].to_numpy()), HISTORY_GROUPS)
    return out


def breakdowns(
    records: pl.DataFrame, ranks: np.ndarray, names: Mapping[int, str] | None = None,
    *, metric_fn: Callable[[np.ndarray], dict[str, Any]] = ranking_metrics,
) -> dict[str, Any]:
    """Per-group metrics (each group's ``metric_fn``): ``by_user_activity``, ``by_length``,
    ``by_category`` and ``by_history`` (answer already in the prompt or not), when available."""
    return {
        key: grouped_metrics(ranks, labels, order=order, metric_fn=metric_fn)
        for key, (labels, order) in group_labels(records, names).items()
    }


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
