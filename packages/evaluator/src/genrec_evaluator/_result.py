"""Result types shared by every task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

PREDICTION_SCHEMA = {
    "record_id": pl.String,
    "ranked": pl.List(pl.Int64),
    "generated": pl.String,
    "valid": pl.Boolean,
    "target_rank": pl.Float64,
}


@dataclass(frozen=True, kw_only=True)
class EvaluationResult:
    """What an evaluation produced.

    ``metrics`` maps each system (the model, when there is one, and every baseline) to its metrics
    (``acc@1``, ``acc@5``, ``acc@10``, ``ndcg@5``, ``ndcg@10``, ``mrr``, ``n`` and, for a model,
    ``invalid``) with per-group breakdowns under ``by_user_activity``, ``by_length`` and
    ``by_category`` (and ``by_history``: answer already in the prompt or not). Every system dict and
    every group dict has ``ci``: ``{metric: {"low", "high"}}``, the 95% percentile-bootstrap interval;
    the model's dict has ``vs``: ``{baseline: {metric: {"diff", "low", "high", "p", "test", "n",
    "verdict", ...}}}``, paired comparisons on the same records. ``meta["protocol"]`` says what was
    scored (``n``, ``split_records``, ``full_split``), the answer-in-history share and the invalid
    rate. ``predictions`` maps each system to its predictions table
    (``record_id, ranked, generated, valid, target_rank``). ``records`` holds the evaluated records with
    their analysis groups (``user_group``, ``length_group``).
    """

    task: str
    metrics: dict[str, dict[str, Any]]
    predictions: dict[str, pl.DataFrame]
    records: pl.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def systems(self) -> list[str]:
        return list(self.metrics)
