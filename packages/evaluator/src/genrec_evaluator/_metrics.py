"""Ranking and classification metrics (numpy only; never imports torch).

Every next-item task here has exactly one relevant item per record, so with ``r`` the 1-based rank of
the target in the ranked list (``r = inf`` when it is absent):

- ``acc@k`` (= ``hr@k``) is the mean of ``r <= k``;
- ``ndcg@k`` is the mean of ``1 / log2(r + 1)`` for ``r <= k`` (the ideal DCG is 1);
- ``mrr`` is the mean of ``1 / r`` (0 when absent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from genrec_evaluator._errors import EvaluatorError

NEXT_POI_KS = (1, 5, 10)
NDCG_KS = (5, 10)
SEQREC_KS = (1, 5, 10, 20)


def target_ranks(ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """1-based rank of each target in its ranked list (best first); ``inf`` when absent."""
    if len(ranked) != len(targets):
        raise EvaluatorError(f"ranked has {len(ranked)} rows but targets has {len(targets)}")
    out = np.full(len(targets), np.inf)
    for i, (row, target) in enumerate(zip(ranked, targets)):
        hits = np.flatnonzero(np.asarray(row, dtype=np.int64) == int(target))
        if hits.size:
            out[i] = hits[0] + 1
    return out


def _ranks(ranks: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks, dtype=np.float64)
    if arr.size == 0:
        raise EvaluatorError("no records to score: the evaluation set is empty")
    if np.any(np.isnan(arr)) or np.any(arr < 1):
        raise EvaluatorError("ranks must be >= 1 (1-based) or inf for a miss")
    return arr


def _check_k(k: int) -> None:
    if k < 1:
        raise EvaluatorError(f"k must be >= 1, got {k}")


def acc_at_k_from_ranks(ranks: Iterable[float], k: int) -> float:
    _check_k(k)
    return float(np.mean(_ranks(ranks) <= k))


def ndcg_at_k_from_ranks(ranks: Iterable[float], k: int) -> float:
    _check_k(k)
    r = _ranks(ranks)
    gains = np.where(r <= k, 1.0 / np.log2(np.minimum(r, k) + 1.0), 0.0)
    return float(np.mean(gains))


def mrr_from_ranks(ranks: Iterable[float]) -> float:
    r = _ranks(ranks)
    return float(np.mean(np.where(np.isfinite(r), 1.0 / r, 0.0)))


def acc_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> float:
    """Share of records whose target is among the first ``k`` ranked ids (Acc@k, HR@k)."""
    return acc_at_k_from_ranks(target_ranks(ranked, targets), k)


def hr_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> float:
    """Hit rate at ``k``: with one relevant item per record it equals :func:`acc_at_k`."""
    return acc_at_k(ranked, targets, k)


def ndcg_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> float:
    """Mean NDCG@k with one relevant item per record."""
    return ndcg_at_k_from_ranks(target_ranks(ranked, targets), k)


def mrr(ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> float:
    """Mean reciprocal rank; a target missing from its list contributes 0."""
    return mrr_from_ranks(target_ranks(ranked, targets))


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half)."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise EvaluatorError(f"labels {y.shape} and scores {s.shape} must be 1-D of the same length")
    if not np.all(np.isin(y, (0, 1))):
        raise EvaluatorError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))[:5]}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise EvaluatorError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    # Average ranks of tied scores.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def ranking_metrics(
    ranks: Iterable[float], *, ks: Sequence[int] = NEXT_POI_KS, ndcg_ks: Sequence[int] = NDCG_KS
) -> dict[str, float]:
    """The next-POI metric set: ``acc@k`` for ``ks``, ``ndcg@k`` for ``ndcg_ks``, ``mrr`` and ``n``."""
    r = _ranks(ranks)
    out: dict[str, float] = {f"acc@{k}": acc_at_k_from_ranks(r, k) for k in ks}
    out.update({f"ndcg@{k}": ndcg_at_k_from_ranks(r, k) for k in ndcg_ks})
    out["mrr"] = mrr_from_ranks(r)
    out["n"] = int(r.size)
    return out


def seqrec_metrics(ranks: Iterable[float], *, ks: Sequence[int] = SEQREC_KS) -> dict[str, float]:
    """``ndcg@k`` and ``hr@k`` for ``ks`` (BIGRec / GORACS)."""
    r = _ranks(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = ndcg_at_k_from_ranks(r, k)
        out[f"hr@{k}"] = acc_at_k_from_ranks(r, k)
    out["n"] = int(r.size)
    return out


def rank_columns(
    ranks: Iterable[float], *, ks: Sequence[int] = NEXT_POI_KS, ndcg_ks: Sequence[int] = NDCG_KS,
    hit_name: str = "acc",
) -> dict[str, np.ndarray]:
    """Per-record values whose means are the metrics of :func:`ranking_metrics` (``hit_name="hr"``
    for the names of :func:`seqrec_metrics`): hit indicators, NDCG gains and reciprocal ranks."""
    r = _ranks(ranks)
    out = {f"{hit_name}@{k}": (r <= k).astype(np.float64) for k in ks}
    out.update({f"ndcg@{k}": np.where(r <= k, 1.0 / np.log2(np.minimum(r, k) + 1.0), 0.0) for k in ndcg_ks})
    if hit_name == "acc":
        out["mrr"] = np.where(np.isfinite(r), 1.0 / r, 0.0)
    return out


def grouped_metrics(
    ranks: np.ndarray, groups: Sequence[object], *, order: Sequence[object] | None = None,
    metric_fn: Callable[[np.ndarray], dict[str, Any]] = ranking_metrics,
) -> dict[str, dict[str, Any]]:
    """``metric_fn`` (default :func:`ranking_metrics`) per group label (labels become strings; empty
    groups are left out)."""
    labels = np.asarray([str(g) for g in groups], dtype=object)
    keys = [str(g) for g in order] if order is not None else sorted(set(labels.tolist()))
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        mask = labels == key
        if mask.any():
            out[key] = metric_fn(ranks[mask])
    return out


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else ()
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}
