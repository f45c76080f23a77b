"""Strong simple next-POI baselines: random, global popularity, the user's most frequent POIs and
first-order Markov transitions, all fitted on train check-ins."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from genrec_evaluator._analysis import (
    HISTORY_GROUPS,
    add_groups,
    answer_in_history,
    category_names,
    group_labels,
)
from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._metrics import rank_columns, ranking_metrics
from genrec_evaluator._records import check_next_poi_records
from genrec_evaluator._result import PREDICTION_SCHEMA, EvaluationResult
from genrec_evaluator._stats import DEFAULT_N_BOOT, Uncertainty, compare_columns, joint_intervals, scope

log = logging.getLogger(__name__)

BASELINES = ("random", "popularity", "user_frequent", "markov")


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """Which baselines to run and how long their ranked lists are."""

    systems: tuple[str, ...] = field(
        default=BASELINES, metadata={"help": f"baselines to run, from {', '.join(BASELINES)}"}
    )
    top_k: int = field(
        default=100, metadata={"help": "length of each ranked list (MRR is truncated at this rank)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random baseline and of the bootstrap"})
    n_boot: int = field(default=DEFAULT_N_BOOT, metadata={"help": "bootstrap resamples per 95 percent interval"})
    split_records: int | None = field(
        default=None, metadata={"help": "records in the whole split, when those given are a sample of it (reported)"}
    )

    def __post_init__(self) -> None:
        Uncertainty(n_boot=self.n_boot)
        unknown = [s for s in self.systems if s not in BASELINES]
        if unknown:
            raise EvaluatorError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
        if self.top_k < 1:
            raise EvaluatorError(f"top_k must be >= 1, got {self.top_k}")


def _train_only(train: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in ("user_id", "poi_idx") if c not in train.columns]
    if missing:
        raise EvaluatorError(f"train check-ins: missing column(s) {missing}; have {train.columns}")
    if "split" in train.columns:
        train = train.filter(pl.col("split") == "train")
    if train.height == 0:
        raise EvaluatorError("train check-ins: no rows with split == 'train'")
    return train.with_columns(pl.col("user_id").cast(pl.String), pl.col("poi_idx").cast(pl.Int64))


def _ranked_counts(frame: pl.DataFrame, keys: Sequence[str], k: int) -> pl.DataFrame:
    """Top ``k`` ``poi_idx`` per ``keys`` by count (ties by smaller id), with their position."""
    counts = frame.group_by(*keys, "poi_idx").len("count")
    sort_keys = [*keys, "count", "poi_idx"]
    descending = [False] * len(keys) + [True, False]
    ranked = counts.sort(sort_keys, descending=descending)
    if keys:
        ranked = ranked.with_columns(pl.int_range(pl.len()).over(*keys).alias("pos"))
    else:
        ranked = ranked.with_row_index("pos").with_columns(pl.col("pos").cast(pl.Int64))
    return ranked.filter(pl.col("pos") < k).select(*keys, "poi_idx", "pos")


def _transitions(train: pl.DataFrame) -> pl.DataFrame:
    """Consecutive (poi -> next poi) pairs within each train trajectory (or user, without ids)."""
    group = "trajectory_id" if "trajectory_id" in train.columns else "user_id"
    order = [c for c in ("user_id", "utc_time", "local_time") if c in train.columns]
    ordered = train.with_row_index("_i").sort([group, *order[1:], "_i"]) if order else train
    return (
        ordered.with_columns(pl.col("poi_idx").shift(-1).over(group).alias("next_poi"))
        .filter(pl.col("next_poi").is_not_null())
        .select(pl.col("poi_idx").alias("last_poi"), pl.col("next_poi").alias("poi_idx"))
    )


def _merge_tiers(records: pl.DataFrame, tiers: Sequence[pl.DataFrame], k: int) -> pl.DataFrame:
    """Ranked lists: candidates of tier 0 first, then tier 1 ... without repeats, first ``k``."""
    parts = [t.select("record_id", "poi_idx", pl.lit(i).alias("tier"), "pos") for i, t in enumerate(tiers)]
    merged = (
        pl.concat(parts)
        .sort("record_id", "tier", "pos")
        .unique(["record_id", "poi_idx"], keep="first", maintain_order=True)
        .group_by("record_id", maintain_order=True)
        .agg(pl.col("poi_idx").head(k).alias("ranked"))
    )
    return records.select("record_id").join(merged, on="record_id", how="left", maintain_order="left")


def _ranked_lists(records: pl.DataFrame, train: pl.DataFrame, system: str, config: BaselineConfig) -> pl.DataFrame:
    k = config.top_k
    keys = records.select("record_id", "user_id", pl.col("history_poi_idx").list.last().alias("last_poi"))
    pop = _ranked_counts(train, [], k)
    glob = keys.select("record_id").join(pop, how="cross")
    if system == "popularity":
        tiers = [glob]
    elif system == "user_frequent":
        user = keys.join(_ranked_counts(train, ["user_id"], k), on="user_id")
        tiers = [user, glob]
    elif system == "markov":
        trans = _ranked_counts(_transitions(train), ["last_poi"], k)
        markov = keys.join(trans, on="last_poi")
        user = keys.join(_ranked_counts(train, ["user_id"], k), on="user_id")
        tiers = [markov, user, glob]
    else:
        raise EvaluatorError(f"unknown baseline {system!r}")
    return _merge_tiers(records, tiers, k)


def _random_lists(records: pl.DataFrame, config: BaselineConfig) -> pl.DataFrame:
    rng = np.random.default_rng(config.seed)
    lists = [
        rng.choice(int(n), size=min(config.top_k, int(n)), replace=False).tolist()
        for n in records["num_pois"].to_list()
    ]
    return records.select("record_id").with_columns(pl.Series("ranked", lists, dtype=pl.List(pl.Int64)))


def predictions_from_lists(records: pl.DataFrame, lists: pl.DataFrame) -> pl.DataFrame:
    """Predictions table (DESIGN §2) with the 1-based ``target_rank`` (``inf`` when absent)."""
    frame = lists.with_columns(pl.col("ranked").fill_null([]).cast(pl.List(pl.Int64))).with_columns(
        records["target_poi_idx"].alias("_target")
    )
    hits = (
        frame.with_row_index("_row")
        .select("_row", "_target", pl.col("ranked").alias("_id"))
        .with_columns(pl.int_ranges(1, pl.col("_id").list.len() + 1).alias("_pos"))
        .explode("_id", "_pos")
        .filter(pl.col("_id") == pl.col("_target"))
        .group_by("_row")
        .agg(pl.col("_pos").min())
    )
    ranks = np.full(frame.height, np.inf)
    ranks[hits["_row"].to_numpy()] = hits["_pos"].to_numpy()
    return frame.select(
        "record_id",
        "ranked",
        pl.lit("", dtype=pl.String).alias("generated"),
        pl.lit(True).alias("valid"),
        pl.Series("target_rank", ranks, dtype=pl.Float64),
    ).cast(PREDICTION_SCHEMA)  # type: ignore[arg-type]


def baseline_predictions(
    records: pl.DataFrame, train: pl.DataFrame, config: BaselineConfig
) -> dict[str, pl.DataFrame]:
    out: dict[str, pl.DataFrame] = {}
    for system in config.systems:
        lists = _random_lists(records, config) if system == "random" else _ranked_lists(records, train, system, config)
        out[system] = predictions_from_lists(records, lists)
    return out


def system_metrics(
    records: pl.DataFrame, predictions: pl.DataFrame, names: dict[int, str], u: Uncertainty | None = None
) -> dict:
    """One system's metrics, overall and per group, each with its ``ci``."""
    return next_poi_metrics(records, {"system": predictions}, names, u or Uncertainty(), model=None)["system"]


def next_poi_metrics(
    records: pl.DataFrame, predictions: dict[str, pl.DataFrame], names: dict[int, str], u: Uncertainty,
    *, model: str | None = "model",
) -> dict[str, dict[str, Any]]:
    """Every system's metrics with intervals, overall and per group; the model's dict gains ``vs``: its
    paired comparison with each baseline on the same records.

    All systems (and the model's differences to each) go through one bootstrap per group: the same
    resamples for everyone, drawn once.
    """
    ranks = {s: p["target_rank"].to_numpy() for s, p in predictions.items()}
    metrics: dict[str, dict[str, Any]] = {s: ranking_metrics(r) for s, r in ranks.items()}
    for s, p in predictions.items():
        invalid = int((~p["valid"]).sum())
        metrics[s]["invalid"] = invalid
        metrics[s]["invalid_rate"] = invalid / max(1, p.height)
    columns = {s: rank_columns(r) for s, r in ranks.items()}
    for s, ci in joint_intervals(columns, u).items():
        metrics[s]["ci"] = ci
    for key, (labels, order) in group_labels(records, names).items():
        label_arr = np.asarray(labels, dtype=object)
        keys = list(order) if order is not None else sorted(set(labels))
        for s in metrics:
            metrics[s][key] = {}
        for g in keys:
            mask = label_arr == g
            if not mask.any():
                continue
            sub = {s: {k: v[mask] for k, v in cols.items()} for s, cols in columns.items()}
            cis = joint_intervals(sub, u)
            for s, r in ranks.items():
                metrics[s][key][g] = {**ranking_metrics(r[mask]), "ci": cis[s]}
    if model is not None and model in predictions:
        metrics[model]["vs"] = {
            s: compare_columns(columns[model], cols, u) for s, cols in columns.items() if s != model
        }
    return metrics


def next_poi_protocol(
    records: pl.DataFrame, metrics: dict[str, dict[str, Any]], u: Uncertainty,
    *, split_records: int | None, how: str | None, model: str | None = None,
) -> dict[str, Any]:
    """What a reviewer needs to weigh the numbers: scope, answer-in-history share, invalid outputs."""
    out = scope(records.height, split_records, how)
    out["uncertainty"] = u.describe()
    seen = answer_in_history(records)
    if seen is not None:
        flags, source = seen
        out["answer_in_history"] = {
            "share": float(flags.mean()), "n_in": int(flags.sum()), "n_out": int((~flags).sum()), "source": source,
            "acc@1": {s: {g: m.get("by_history", {}).get(g, {}).get("acc@1") for g in HISTORY_GROUPS} for s, m in metrics.items()},
        }
    if model is not None and model in metrics:
        out["invalid_rate"] = metrics[model]["invalid_rate"]
    return out


def run_baselines(
    records: pl.DataFrame, train: pl.DataFrame, *, config: BaselineConfig | None = None
) -> EvaluationResult:
    """Run the baselines on next-POI ``records`` with statistics from ``train`` check-ins.

    ``train`` is the prepared check-ins table (DESIGN §2); only rows with ``split == 'train'`` are used
    when it has a split column. Markov transitions follow consecutive check-ins of a train trajectory,
    backing off to the user's most frequent POIs and then global popularity.
    """
    config = config or BaselineConfig()
    u = Uncertainty(n_boot=config.n_boot, seed=config.seed)
    start = time.perf_counter()
    train = _train_only(train)
    num_pois = int(train["poi_idx"].max()) + 1  # type: ignore[arg-type]
    checked = check_next_poi_records(records, num_pois=num_pois)
    grouped = add_groups(checked, train)
    names = category_names(train)
    predictions = baseline_predictions(grouped, train, config)
    metrics = next_poi_metrics(grouped, predictions, names, u)
    protocol = next_poi_protocol(grouped, metrics, u, split_records=config.split_records, how=None)
    seconds = time.perf_counter() - start
    log.info("baselines on %d records in %.2fs", grouped.height, seconds)
    return EvaluationResult(
        task="next_poi",
        metrics=metrics,
        predictions=predictions,
        records=grouped,
        meta={"baselines": list(config.systems), "top_k": config.top_k, "protocol": protocol},
        seconds=seconds,
    )
