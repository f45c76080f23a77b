"""``select``: ITRA (plain or label-enhanced), GORACS as published, and the baselines behind one call."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from genrec_otcoreset._baselines import ccs, d2_pruning, el2n, grand, kcenter, random_subset, stratified
from genrec_otcoreset._cost import build_cost, exact_poo, resolve_device
from genrec_otcoreset._errors import OtCoresetError

__all__ = ["METHODS", "SelectionResult", "label_shares", "select"]

log = logging.getLogger(__name__)

Method = Literal["itra", "goracs", "random", "grand", "kcenter", "stratified", "el2n", "ccs", "d2"]
METHODS: tuple[str, ...] = ("itra", "goracs", "random", "grand", "kcenter", "stratified", "el2n", "ccs", "d2")


@dataclass(frozen=True, kw_only=True)
class SelectionResult:
    """A selected coreset.

    ``indices`` are row numbers into the training pool in rank order (for ITRA the greedy order, a
    swapped-in record taking its predecessor's place; for GORACS the release's list order, a
    swapped-in record appended at the end). ``poo`` is the exact POO of the selection (with labels:
    the validation-frequency-weighted sum of the per-label exact POOs, since no mass crosses labels;
    for GORACS under its own cost, which with labels differs from ours). ``trace`` is the exact POO
    after greedy and after every accepted swap (baselines: the final POO only).
    """

    indices: np.ndarray
    poo: float
    trace: tuple[float, ...]
    seconds: float
    method: str
    swaps: int = 0
    exact_solves: int = 0


def _matrix(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise OtCoresetError(f"{name} must be a numeric matrix: {exc}") from exc
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise OtCoresetError(f"{name} must be a non-empty 2-D matrix (rows, dim), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise OtCoresetError(f"{name} has {int(bad.sum())} NaN/inf value(s), first at row {row}, column {col}")
    return arr


def _labels(value: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise OtCoresetError(f"{name} must be 1-D with one label per row ({n}), got shape {arr.shape}")
    return arr


def _checked_labels(labels: Any, val_labels: Any, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    lab = _labels(labels, n, "labels")
    vlab = _labels(val_labels, m, "val_labels")
    train_set = set(np.unique(lab).tolist())
    missing = [v for v in np.unique(vlab).tolist() if v not in train_set]
    if missing:
        raise OtCoresetError(f"val_labels has label(s) {missing} that no training record has (labels)")
    return lab, vlab


def label_shares(val_labels: np.ndarray, budget: int) -> dict[Any, int]:
    """Budget per label, proportional to its validation frequency (largest remainder, sums to budget)."""
    values, counts = np.unique(val_labels, return_counts=True)
    exact = counts / counts.sum() * budget
    base = np.floor(exact).astype(np.int64)
    left = budget - int(base.sum())
    # Largest remainders first; ties go to the more frequent, then the smaller label.
    order = sorted(range(len(values)), key=lambda i: (-(exact[i] - base[i]), -counts[i], i))
    for i in order[:left]:
        base[i] += 1
    return {values[i].item() if hasattr(values[i], "item") else values[i]: int(base[i]) for i in range(len(values))}


def _combined_trace(parts: list[tuple[float, tuple[float, ...]]]) -> tuple[float, ...]:
    """The weighted trace of labels refined one after another: each label's steps with the labels
    before it at their final value and those after it at their start."""
    combined: list[float] = []
    starts = [t[0] for _, t in parts]
    ends = [t[-1] for _, t in parts]
    for li, (_, tr) in enumerate(parts):
        for step_value in tr if li == 0 else tr[1:]:
            vals = [*ends[:li], step_value, *starts[li + 1 :]]
            combined.append(sum(w * v for (w, _), v in zip(parts, vals)))
    return tuple(combined)


def _goracs(
    x: np.ndarray,
    g: np.ndarray,
    y: np.ndarray,
    lab: np.ndarray | None,
    vlab: np.ndarray | None,
    *,
    budget: int,
    lam: float,
    candidates: int,
    max_swaps: int,
    exact_shortcuts: bool,
    device: Any,
    progress: bool,
) -> tuple[np.ndarray, float, tuple[float, ...], int, int]:
    """GORACS as released: indices, POO, trace, swaps, exact solves (Algorithm 2 with labels)."""
    from tqdm.auto import tqdm

    from genrec_otcoreset._goracs import (
        goracs_budgets,
        goracs_cost,
        goracs_greedy,
        goracs_label_costs,
        goracs_refine,
    )

    if lab is None or vlab is None:
        blocks: list[tuple[Any, int]] = [(None, budget)]
        costs = [(np.arange(x.shape[0]), np.arange(y.shape[0]), goracs_cost(x, g, y, lam))]
    else:
        blocks = goracs_budgets(vlab, budget)
        for value, share in blocks:
            have = int((lab == value).sum())
            if share > have:
                raise OtCoresetError(
                    f"label {value!r} needs {share} records (its goracs share of budget {budget}) "
                    f"but the pool has only {have}"
                )
        costs = goracs_label_costs(x, g, y, lab, vlab, blocks, lam)
    bar = tqdm(total=max_swaps * len(blocks), desc="swaps", unit="swap", disable=not progress)
    parts: list[np.ndarray] = []
    trace_parts: list[tuple[float, tuple[float, ...]]] = []
    swaps = solves = 0
    try:
        for (_, share), (rows, vrows, cost) in zip(blocks, costs):
            init = goracs_greedy(cost, share, device)
            run = goracs_refine(
                cost, init, max_iters=max_swaps, cut_num=candidates, exact_shortcuts=exact_shortcuts,
                device=device, progress=lambda e: bar.update(1) if e["event"] == "swap" else None,
            )
            parts.append(rows[np.asarray(run.indices, dtype=np.int64)])
            trace_parts.append((vrows.size / y.shape[0], tuple(run.trace)))
            swaps += run.swaps
            solves += run.exact_solves
    finally:
        bar.close()
    poo = sum(w * t[-1] for w, t in trace_parts)
    return np.concatenate(parts).astype(np.int64), poo, _combined_trace(trace_parts), swaps, solves


def _run_one(
    x: np.ndarray,
    g: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    *,
    budget: int,
    method: str,
    lam: float,
    candidates: int,
    max_swaps: int,
    seed: int,
    device: Any,
    progress: bool,
    screen: int,
    confirm: int,
    use_sinkhorn: bool,
    strata: int,
    ccs_cutoff: float,
    d2_neighbors: int,
    d2_gamma: float,
) -> tuple[np.ndarray, tuple[float, ...], int, int]:
    """One unlabelled selection: indices, exact POO trace, swaps, exact solves (``s``: difficulty)."""
    from genrec_otcoreset._itra import greedy_init, refine_swaps

    cost = build_cost(x, g, y, lam=lam, device=device)
    if method == "itra":
        init = greedy_init(cost, budget)
        stats = refine_swaps(
            cost, init, candidates=candidates, max_swaps=max_swaps, screen=screen, confirm=confirm,
            use_sinkhorn=use_sinkhorn, progress=progress,
        )
        return stats.indices, stats.trace, stats.swaps, stats.exact_solves
    if method == "random":
        idx = random_subset(x.shape[0], budget, seed=seed)
    elif method == "grand":
        idx = grand(g, budget)
    elif method == "kcenter":
        idx = kcenter(x, budget, seed=seed, device=str(device))
    elif method == "el2n":
        idx = el2n(s, budget)
    elif method == "ccs":
        idx = ccs(s, budget, seed=seed, strata=strata, cutoff=ccs_cutoff)
    elif method == "d2":
        idx = d2_pruning(x, s, budget, k=d2_neighbors, gamma=d2_gamma, device=str(device))
    else:
        idx = stratified(g, budget, seed=seed)
    return idx, (exact_poo(cost, idx),), 0, 1


def select(
    *,
    embeddings: Any,
    grad_norms: Any,
    val_embeddings: Any,
    budget: int,
    method: Method | str = "itra",
    lam: float = 0.1,
    labels: Sequence[Any] | np.ndarray | None = None,
    val_labels: Sequence[Any] | np.ndarray | None = None,
    candidates: int = 30,
    max_swaps: int = 100,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    screen: int = 8,
    confirm: int = 4,
    use_sinkhorn: bool | None = None,
    exact_shortcuts: bool = True,
    scores: Sequence[float] | np.ndarray | None = None,
    strata: int = 50,
    ccs_cutoff: float = 0.1,
    d2_neighbors: int = 10,
    d2_gamma: float = 1.0,
) -> SelectionResult:
    """Select ``budget`` training records whose distribution best matches the validation set.

    ``embeddings (N, d)`` and ``grad_norms (N,)`` describe the training pool, ``val_embeddings (m, d)``
    the validation set; the cost is ``d/max d - lam g/max g`` min-max scaled. With ``labels`` and
    ``val_labels`` (any number of classes) the budget is split by validation label frequency and each
    label is selected on its own, so no mass is transported across labels.

    Methods:

    - ``"itra"`` (default): ours. Lazy greedy, true leave-one-out scores, certified pair bounds, exact
      incremental solves. ``candidates`` members and outsiders are kept per swap round; ``screen``
      pairs go through gathered Sinkhorn (``use_sinkhorn``) and the best ``confirm`` through the exact
      solver. ``use_sinkhorn=None`` screens with Sinkhorn on CUDA only: on CPU, screening 8 pairs costs
      more than the exact solves it saves (measured in ``bench/otcoreset``).
    - ``"goracs"``: the GORACS release's ITRA (Algorithm 1; with labels its Algorithm 2, which keeps
      raw distances per label and splits the budget by ``round(share * budget)``), selecting exactly
      what the release selects for the same inputs, in its order; ``candidates`` is its ``cut_num``
      and ``max_swaps`` its ``max_iters``. ``exact_shortcuts`` (default) skips the trials a dual bound
      or a shortest-path solve proves worse, which cannot change a decision; ``False`` runs the
      release's from-scratch EMD for every trial. ``screen``, ``confirm``, ``use_sinkhorn`` and
      ``seed`` do not apply.
    - ``"random"``, ``"grand"``, ``"kcenter"``, ``"stratified"``: baselines (``seed`` for all but grand).
    - ``"el2n"``, ``"ccs"``, ``"d2"``: the baselines GORACS compares with, on a per-record difficulty
      ``scores`` (the features' EL2N; default ``grad_norms``, a GraNd proxy). EL2N keeps the largest
      scores; CCS prunes the ``ccs_cutoff`` hardest fraction and samples ``strata`` equal-width score
      strata (``seed``); D2-Pruning passes messages over the ``d2_neighbors``-NN graph of the
      embeddings and selects with reverse messages weighted ``exp(-d2_gamma * d)``.

    ``seconds`` covers the selection and its exact POO (for every method).

    Raises :class:`OtCoresetError` on bad input, before any work.
    """
    start = time.perf_counter()
    x = _matrix(embeddings, "embeddings")
    y = _matrix(val_embeddings, "val_embeddings")
    g = np.asarray(grad_norms, dtype=np.float64)
    n = x.shape[0]
    if x.shape[1] != y.shape[1]:
        raise OtCoresetError(
            f"embeddings and val_embeddings must have the same dimension, got {x.shape[1]} and {y.shape[1]}"
        )
    if g.ndim != 1 or g.shape[0] != n:
        raise OtCoresetError(f"grad_norms must be 1-D with one value per embedding row ({n}), got shape {g.shape}")
    if not np.isfinite(g).all():
        raise OtCoresetError(f"grad_norms has NaN/inf at row {int(np.flatnonzero(~np.isfinite(g))[0])}")
    if (g < 0).any():
        raise OtCoresetError(f"grad_norms must be >= 0, got {float(g.min())} at row {int(g.argmin())}")
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or not 1 <= budget <= n:
        raise OtCoresetError(f"budget must be an integer in [1, {n}] (the pool size), got {budget!r}")
    budget = int(budget)
    if method not in METHODS:
        raise OtCoresetError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(lam, bool) or not isinstance(lam, int | float | np.integer | np.floating) or not (
        math.isfinite(lam) and lam >= 0
    ):
        raise OtCoresetError(f"lam must be a finite number >= 0, got {lam!r}")
    lam = float(lam)
    for name, val in (("candidates", candidates), ("screen", screen), ("confirm", confirm)):
        if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
            raise OtCoresetError(f"{name} must be an integer >= 1, got {val!r}")
    if isinstance(max_swaps, bool) or not isinstance(max_swaps, int | np.integer) or max_swaps < 0:
        raise OtCoresetError(f"max_swaps must be an integer >= 0, got {max_swaps!r}")
    candidates, screen, confirm, max_swaps = int(candidates), int(screen), int(confirm), int(max_swaps)
    sc = g if scores is None else np.asarray(scores, dtype=np.float64)
    if sc.ndim != 1 or sc.shape[0] != n:
        raise OtCoresetError(f"scores must be 1-D with one value per embedding row ({n}), got shape {sc.shape}")
    if not np.isfinite(sc).all():
        raise OtCoresetError(f"scores has NaN/inf at row {int(np.flatnonzero(~np.isfinite(sc))[0])}")
    for name, val in (("strata", strata), ("d2_neighbors", d2_neighbors)):
        if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
            raise OtCoresetError(f"{name} must be an integer >= 1, got {val!r}")
    for name, num, hi in (("ccs_cutoff", ccs_cutoff, 1.0), ("d2_gamma", d2_gamma, math.inf)):
        if isinstance(num, bool) or not isinstance(num, int | float | np.integer | np.floating) or not (
            math.isfinite(num) and num >= 0 and num < hi
        ):
            upper = " and < 1" if hi == 1.0 else ""
            raise OtCoresetError(f"{name} must be a finite number >= 0{upper}, got {num!r}")
    if not isinstance(exact_shortcuts, bool):
        raise OtCoresetError(f"exact_shortcuts must be True or False, got {exact_shortcuts!r}")
    dev = resolve_device(device)
    if use_sinkhorn is None:
        use_sinkhorn = dev.type == "cuda"
    common: dict[str, Any] = dict(
        method=method, lam=lam, candidates=candidates, max_swaps=max_swaps, seed=seed, device=dev,
        progress=progress, screen=screen, confirm=confirm, use_sinkhorn=use_sinkhorn, strata=int(strata),
        ccs_cutoff=float(ccs_cutoff), d2_neighbors=int(d2_neighbors), d2_gamma=float(d2_gamma),
    )
    if (labels is None) != (val_labels is None):
        raise OtCoresetError("labels and val_labels must be given together (both or neither)")
    if method == "goracs":
        glab = gvlab = None
        if labels is not None:
            glab, gvlab = _checked_labels(labels, val_labels, n, y.shape[0])
        idx, poo, trace, swaps, solves = _goracs(
            x, g, y, glab, gvlab, budget=budget, lam=lam, candidates=candidates, max_swaps=max_swaps,
            exact_shortcuts=exact_shortcuts, device=dev, progress=progress,
        )
        result = SelectionResult(
            indices=idx, poo=poo, trace=trace, seconds=time.perf_counter() - start, method=method,
            swaps=swaps, exact_solves=solves,
        )
        log.info("goracs selected %d of %d, exact POO %.6g", idx.size, n, poo)
        return result
    if labels is None:
        idx, trace, swaps, solves = _run_one(x, g, y, sc, budget=budget, **common)
        result = SelectionResult(
            indices=idx, poo=trace[-1], trace=trace, seconds=time.perf_counter() - start,
            method=method, swaps=swaps, exact_solves=solves,
        )
        log.info("%s selected %d of %d, exact POO %.6g", method, budget, n, result.poo)
        return result
    lab, vlab = _checked_labels(labels, val_labels, n, y.shape[0])
    shares = label_shares(vlab, budget)
    parts: list[np.ndarray] = []
    poo_total, trace_parts, swaps_total, solves_total = 0.0, [], 0, 0
    finals: dict[Any, float] = {}
    for value, share in shares.items():
        have = int((lab == value).sum())
        if share > have:
            raise OtCoresetError(
                f"label {value!r} needs {share} records (its validation share of budget {budget}) "
                f"but the pool has only {have}"
            )
    for value, share in shares.items():
        if share == 0:
            continue
        rows = np.flatnonzero(lab == value)
        vrows = np.flatnonzero(vlab == value)
        idx, trace, swaps, solves = _run_one(x[rows], g[rows], y[vrows], sc[rows], budget=share, **common)
        weight = vrows.size / y.shape[0]
        parts.append(rows[idx])
        finals[value] = trace[-1]
        trace_parts.append((weight, trace))
        swaps_total += swaps
        solves_total += solves
        poo_total += weight * trace[-1]
    result = SelectionResult(
        indices=np.concatenate(parts).astype(np.int64), poo=poo_total, trace=_combined_trace(trace_parts),
        seconds=time.perf_counter() - start, method=method, swaps=swaps_total, exact_solves=solves_total,
    )
    log.info("%s selected %d of %d over %d labels, exact POO %.6g", method, budget, n, len(parts), poo_total)
    return result
