"""Baseline selectors behind the same API as ITRA: random, GraNd-like, k-center greedy, stratified, and the
ones GORACS compares with: EL2N, CCS, D2-Pruning."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ccs", "ccs_budgets", "ccs_strata", "d2_pruning", "el2n", "grand", "kcenter", "knn_graph", "random_subset", "stratified"]


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


def el2n(scores: np.ndarray, budget: int) -> np.ndarray:
    """EL2N (Paul et al., 2021) as a selector: the ``budget`` records with the largest error L2 norm,
    largest first, ties by lower index (the data-diet rule: hard examples carry the signal)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order[:budget].astype(np.int64)


def ccs_strata(scores: np.ndarray, strata: int) -> np.ndarray:
    """The stratum of each score as CCS cuts them: ``strata`` equal-width bins over
    ``[min, max * 1.0001)`` (the widened top keeps the maximum inside the last bin)."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max()) * 1.0001
    step = (hi - lo) / strata
    if not step > 0:  # constant scores (or max 0): one stratum holds everything
        return np.zeros(s.size, dtype=np.int64)
    edges = lo + np.arange(strata + 1) * step
    # Membership is `start <= s < end` per bin, as CCS tests it; searchsorted(right) - 1 is that.
    return np.clip(np.searchsorted(edges, s, side="right") - 1, 0, strata - 1).astype(np.int64)


def ccs_budgets(sizes: np.ndarray, budget: int) -> np.ndarray:
    """CCS's uniform bin allocation: non-empty strata from the smallest up, each taking
    ``min(size, remaining // non-empty strata left)``; what is still missing goes one record at a time
    to the largest strata that have room (the release's top-up loop)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    sorted_sizes = sizes[order]
    out = np.zeros(sizes.size, dtype=np.int64)
    left = budget
    for pos, size in enumerate(sorted_sizes):
        if size == 0:
            continue
        rest = int(np.count_nonzero(sorted_sizes[pos:]))
        take = min(int(size), left // rest)
        out[order[pos]] = take
        left -= take
    i = 1
    while left > 0 and i <= sizes.size:
        j = order[-i]
        if out[j] < sizes[j]:
            out[j] += 1
            left -= 1
        i += 1
    return out


def ccs(scores: np.ndarray, budget: int, *, seed: int, strata: int = 50, cutoff: float = 0.1) -> np.ndarray:
    """Coverage-centric coreset selection (Zheng et al., ICLR 2023).

    Hard cutoff: the ``cutoff`` fraction with the largest scores is pruned first (mislabelled or
    too hard; ``floor(cutoff * N)`` records, fewer when the rest could not fill the budget); the rest
    is cut into ``strata`` equal-width score strata, each gets :func:`ccs_budgets`' share and a seeded
    uniform sample of that size. Returned stratum by stratum, lowest score first.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    rng = np.random.default_rng(seed)
    n_cut = min(math.floor(cutoff * n), n - budget)
    keep = np.argsort(-s, kind="stable")[n_cut:]
    keep.sort()
    bins = ccs_strata(s[keep], strata)
    sizes = np.bincount(bins, minlength=strata)
    budgets = ccs_budgets(sizes, budget)
    picks = [
        rng.permutation(keep[bins == b])[: budgets[b]] for b in range(strata) if budgets[b] > 0
    ]
    return np.concatenate(picks).astype(np.int64) if picks else np.empty(0, dtype=np.int64)


def knn_graph(embeddings: np.ndarray, k: int, *, device: str = "cpu", chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows (Euclidean) and their distances, ``(N, k)`` each; ties by
    lower index. Built in row chunks so the ``N x N`` distance matrix never exists at once."""
    import torch

    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32), device=device)
    n = x.shape[0]
    k = min(k, n - 1)
    nbr = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float64)
    for lo in range(0, n, chunk):
        d = torch.cdist(x[lo : lo + chunk].double(), x.double())
        rows = torch.arange(d.shape[0], device=d.device)
        d[rows, rows + lo] = float("inf")  # never one's own neighbour
        # A stable sort keeps equal distances in index order; topk does not promise that.
        vals, idx = torch.sort(d, dim=1, stable=True)
        nbr[lo : lo + d.shape[0]] = idx[:, :k].cpu().numpy()
        dist[lo : lo + d.shape[0]] = vals[:, :k].cpu().numpy()
    return nbr, dist


def d2_pruning(
    embeddings: np.ndarray, scores: np.ndarray, budget: int, *, k: int = 10, gamma: float = 1.0,
    device: str = "cpu",
) -> np.ndarray:
    """D2-Pruning (Maharana et al., ICLR 2024), its ``graph_mode="sum"``, ``"weighted"`` sampling.

    Graph: the ``k``-nearest-neighbour graph of the embeddings, made symmetric (an edge when either
    end is among the other's ``k`` nearest). Forward message passing: each node's score becomes
    ``s_i + sum_{j ~ i} exp(-d_ij) * max(s_j, 1e-7)``. Reverse message passing while selecting: take
    the node with the highest score (ties: lower index), lower each unselected neighbour's score by
    ``exp(-gamma * d_ij)`` times the taken node's score, repeat. Returned in selection order.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    if n == 1 or k < 1:
        return np.argsort(-s, kind="stable")[:budget].astype(np.int64)
    nbr, dist = knn_graph(embeddings, k, device=device)
    rows = np.repeat(np.arange(n), nbr.shape[1])
    cols = nbr.ravel()
    d = dist.ravel()
    # Both directions of every kNN edge; a pair that is mutual appears twice with one distance.
    src = np.concatenate([rows, cols])
    dst = np.concatenate([cols, rows])
    dd = np.concatenate([d, d])
    key = src * n + dst
    _, first = np.unique(key, return_index=True)
    src, dst, dd = src[first], dst[first], dd[first]
    density = s.copy()
    np.add.at(density, src, np.exp(-dd) * np.maximum(s[dst], 1e-7))
    order = np.argsort(src, kind="stable")
    src, dst, dd = src[order], dst[order], dd[order]
    starts = np.searchsorted(src, np.arange(n + 1))
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        masked = np.where(taken, -np.inf, density)
        i = int(np.argmax(masked))
        picks[t] = i
        taken[i] = True
        a, b = starts[i], starts[i + 1]
        density[dst[a:b]] -= np.exp(-gamma * dd[a:b]) * density[i]
    return picks
