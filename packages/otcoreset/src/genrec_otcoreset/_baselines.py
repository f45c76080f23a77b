"""Baseline selectors behind the same API as ITRA: random, GraNd-like, k-center greedy, stratified."""

from __future__ import annotations

import numpy as np

__all__ = ["grand", "kcenter", "random_subset", "stratified"]


def random_subset(n: int, budget: int, *, seed: int) -> np.ndarray:
    """``budget`` distinct rows uniformly at random."""
    return np.random.default_rng(seed).choice(n, size=budget, replace=False).astype(np.int64)


def grand(grad_norms: np.ndarray, budget: int) -> np.ndarray:
    """The rows with the largest gradient norms (GraNd-like), largest first; ties by lower index."""
    order = np.argsort(-np.asarray(grad_norms, dtype=np.float64), kind="stable")
    return order[:budget].astype(np.int64)


def kcenter(embeddings: np.ndarray, budget: int, *, seed: int, device: str = "cpu") -> np.ndarray:
    """k-center greedy (farthest-first traversal) on the embeddings, from a seeded random start."""
    import torch

    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32), device=device)
    n = x.shape[0]
    first = int(np.random.default_rng(seed).integers(n))
    picks = [first]
    dist = torch.linalg.vector_norm(x - x[first], dim=1)
    for _ in range(budget - 1):
        nxt = int(torch.argmax(dist))
        picks.append(nxt)
        dist = torch.minimum(dist, torch.linalg.vector_norm(x - x[nxt], dim=1))
    return np.asarray(picks, dtype=np.int64)


def stratified(
    scores: np.ndarray, budget: int, *, seed: int, strata: int = 50
) -> np.ndarray:
    """Coverage-centric stratified sampling over a difficulty score (as DEALRec uses it).

    The score range is cut into ``strata`` equal-width bins; bins are visited from the smallest up and
    each takes ``min(its size, remaining budget // bins left)`` random members, so sparse regions of the
    score are covered and the leftover budget flows to the dense ones.
    """
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    lo, hi = float(s.min()), float(s.max())
    if hi > lo:
        bins = np.minimum(((s - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)
    else:
        bins = np.zeros(s.size, dtype=np.int64)
    groups = [np.flatnonzero(bins == b) for b in range(strata)]
    groups = sorted((grp for grp in groups if grp.size), key=lambda grp: (grp.size, int(grp[0])))
    picks: list[np.ndarray] = []
    left = budget
    for i, grp in enumerate(groups):
        take = min(grp.size, left // (len(groups) - i))
        picks.append(rng.choice(grp, size=take, replace=False))
        left -= take
    return np.concatenate(picks).astype(np.int64) if picks else np.empty(0, dtype=np.int64)
