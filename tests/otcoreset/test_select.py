"""GORACS selection: cost, exact POO, greedy, swap refinement, labels, baselines, bad input."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from genrec_otcoreset import METHODS, OtCoresetError, SelectionResult, select
from genrec_otcoreset._baselines import grand, kcenter, stratified
from genrec_otcoreset._cost import build_cost, exact_poo, import_ot, solve_exact
from genrec_otcoreset._itra import greedy_init, refine_swaps
from genrec_otcoreset._select import label_shares

ot = import_ot()


def _problem(n: int, m: int, d: int = 8, seed: int = 0, clusters: int = 5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 2
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d))
    y = centres[rng.integers(0, clusters, m)] + rng.normal(size=(m, d))
    g = rng.lognormal(size=n)
    return x.astype(np.float32), g, y.astype(np.float32)


def _reference_cost(x, g, y, lam):
    """The issue's formula in float64 numpy, independent of build_cost."""
    d = cdist(x.astype(np.float64), y.astype(np.float64))
    c = d / d.max() - lam * (g / g.max())[:, None]
    return (c - c.min()) / (c.max() - c.min())


def _emd2(cost, rows):
    sub = np.ascontiguousarray(cost[rows], dtype=np.float64)
    k, m = sub.shape
    return float(ot.emd2(np.full(k, 1 / k), np.full(m, 1 / m), sub, numItermax=10_000_000))


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.7])
def test_cost_matches_formula_in_chunks(lam):
    x, g, y = _problem(257, 61, seed=1)
    ref = _reference_cost(x, g, y, lam)
    got = build_cost(x, g, y, lam=lam, rows_per_chunk=19).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert got.min() == pytest.approx(0.0, abs=1e-7)
    assert got.max() == pytest.approx(1.0, abs=1e-6)


def test_cost_constant_terms_do_not_divide_by_zero():
    x, _, y = _problem(20, 7, seed=2)
    c = build_cost(x, np.zeros(20), y, lam=0.5).numpy()
    np.testing.assert_allclose(c, _reference_cost(x, np.ones(20), y, 0.0), atol=2e-5)


def test_poo_matches_direct_emd2():
    x, g, y = _problem(120, 50, seed=3)
    ref = _reference_cost(x, g, y, 0.1)
    cost = build_cost(x, g, y, lam=0.1)
    rows = np.random.default_rng(0).choice(120, 17, replace=False)
    assert exact_poo(cost, rows) == pytest.approx(_emd2(ref, rows), rel=1e-5, abs=1e-7)
    sol = solve_exact(cost, rows)
    # Strong duality and the plan's marginals: the duals returned are the optimal ones.
    sub = cost[torch.as_tensor(rows)].double().numpy()
    assert sol.f.mean() + sol.g.mean() == pytest.approx(sol.cost, abs=1e-9)
    assert (sol.f[:, None] + sol.g[None, :] <= sub + 1e-9).all()
    np.testing.assert_allclose(sol.plan.sum(1), 1 / 17)


def _naive_greedy(cost: np.ndarray, k: int) -> list[int]:
    """The textbook greedy: every step scans every row for the largest drop of sum_j min_S C_ij."""
    cmin = cost.max(axis=0).astype(np.float64)
    chosen: list[int] = []
    for _ in range(k):
        best, best_gain = -1, -np.inf
        for i in range(cost.shape[0]):
            if i in chosen:
                continue
            gain = np.maximum(cmin - cost[i], 0).sum()
            if gain > best_gain + 1e-12:
                best, best_gain = i, gain
        chosen.append(best)
        cmin = np.minimum(cmin, cost[best])
    return chosen


def _fl_value(cost: np.ndarray, rows) -> float:
    return float(cost[list(rows)].min(axis=0).sum())


@pytest.mark.parametrize("seed", range(4))
def test_greedy_equals_naive_greedy_and_bound_vs_brute_force(seed):
    x, g, y = _problem(11, 9, seed=seed)
    cost = build_cost(x, g, y, lam=0.1)
    c = cost.double().numpy()
    for k in (1, 2, 4):
        ours = greedy_init(cost, k, batch=3)
        assert ours == _naive_greedy(c, k)
        best = min(_fl_value(c, s) for s in itertools.combinations(range(11), k))
        if k == 1:
            assert _fl_value(c, ours) == pytest.approx(best)
        # Facility location is submodular: the greedy keeps (1 - 1/e) of the optimal improvement
        # over the empty set (whose value is the column maxima).
        top = c.max(axis=0).sum()
        assert top - _fl_value(c, ours) >= (1 - 1 / np.e) * (top - best) - 1e-9


def test_greedy_first_pick_is_smallest_row_sum_and_lazy_matches_on_larger_pool():
    x, g, y = _problem(400, 60, seed=5)
    cost = build_cost(x, g, y, lam=0.1)
    ours = greedy_init(cost, 25)
    assert ours[0] == int(cost.sum(1).argmin())
    assert ours == _naive_greedy(cost.double().numpy(), 25)
    assert len(set(ours)) == 25


def test_every_accepted_swap_lowers_exact_poo():
    x, g, y = _problem(300, 80, seed=6)
    cost = build_cost(x, g, y, lam=0.1)
    ref = _reference_cost(x, g, y, 0.1)
    init = greedy_init(cost, 12)
    seen: list[tuple[int, float]] = []
    stats = refine_swaps(cost, init, candidates=10, max_swaps=15, on_swap=lambda s, v: seen.append((s, v)))
    trace = np.asarray(stats.trace)
    assert stats.swaps == len(trace) - 1 == len(seen) >= 1
    assert (np.diff(trace) < 0).all()
    assert trace[0] == pytest.approx(_emd2(ref, init), rel=1e-5)
    assert trace[-1] == pytest.approx(_emd2(ref, stats.indices), rel=1e-5)
    assert len(set(stats.indices.tolist())) == 12
    assert stats.exact_solves >= stats.swaps + 1


def test_refinement_stops_at_max_swaps_and_sinkhorn_screen_keeps_guarantee():
    x, g, y = _problem(200, 60, seed=7)
    cost = build_cost(x, g, y, lam=0.1)
    init = greedy_init(cost, 10)
    capped = refine_swaps(cost, init, max_swaps=2, use_sinkhorn=False)
    assert capped.swaps <= 2
    screened = refine_swaps(cost, init, max_swaps=5, use_sinkhorn=True, screen=4, screen_iter=10)
    assert screened.screened > 0
    assert (np.diff(screened.trace) < 0).all()
    assert screened.trace[-1] == pytest.approx(exact_poo(cost, screened.indices), rel=1e-9)


def test_select_itra_beats_greedy_and_random_and_reports_exact_poo():
    x, g, y = _problem(400, 90, seed=8)
    ref = _reference_cost(x, g, y, 0.1)
    res = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=15, max_swaps=20, device="cpu")
    assert isinstance(res, SelectionResult)
    assert res.method == "itra" and res.indices.shape == (15,)
    assert res.poo == pytest.approx(_emd2(ref, res.indices), rel=1e-5)
    assert res.poo == res.trace[-1] <= res.trace[0]
    rnd = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=15, method="random", device="cpu")
    assert res.poo < rnd.poo
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.poo = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(method):
    x, g, y = _problem(150, 40, seed=9)
    kw = dict(embeddings=x, grad_norms=g, val_embeddings=y, budget=9, method=method, max_swaps=5, device="cpu")
    a = select(seed=3, **kw)
    b = select(seed=3, **kw)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.poo == b.poo
    assert len(set(a.indices.tolist())) == 9


def test_baselines_do_what_they_say():
    x, g, _ = _problem(200, 30, seed=10)
    np.testing.assert_array_equal(grand(g, 7), np.argsort(-g)[:7])
    picks = kcenter(x, 6, seed=0)
    d = cdist(x, x)
    # Farthest-first: each pick is the farthest point from the ones before it.
    for t in range(1, 6):
        assert d[picks[t], picks[:t]].min() == pytest.approx(d[:, picks[:t]].min(axis=1).max(), rel=1e-5)
    for budget in (1, 17, 60, 200):
        s = stratified(g, budget, seed=1, strata=10)
        assert len(s) == budget == len(set(s.tolist()))
    # Coverage: sparse high-score strata are represented, unlike a random sample's expectation.
    s = stratified(g, 40, seed=1, strata=10)
    edges = np.linspace(g.min(), g.max(), 11)
    occupied = np.unique(np.minimum(np.searchsorted(edges, g, side="right") - 1, 9))
    assert np.unique(np.minimum(np.searchsorted(edges, g[s], side="right") - 1, 9)).size == occupied.size


def test_label_shares_largest_remainder():
    shares = label_shares(np.array([0] * 5 + [1] * 3 + [2] * 2), 7)
    assert sum(shares.values()) == 7
    assert shares == {0: 4, 1: 2, 2: 1}


def test_label_enhanced_keeps_shares_and_never_transports_across_labels():
    rng = np.random.default_rng(11)
    x, g, y = _problem(360, 120, seed=11)
    labels = rng.integers(0, 3, 360)
    val_labels = np.repeat([0, 1, 2], [60, 40, 20])
    res = select(
        embeddings=x, grad_norms=g, val_embeddings=y, budget=12, labels=labels, val_labels=val_labels,
        max_swaps=5, device="cpu",
    )
    counts = {v: int((labels[res.indices] == v).sum()) for v in (0, 1, 2)}
    assert counts == {0: 6, 1: 4, 2: 2}
    # Block POO: per label, exact OT on that label's own cost (its own normalisation), weighted by the
    # label's validation share; mass never crosses labels.
    expected = 0.0
    for v, w in ((0, 0.5), (1, 1 / 3), (2, 1 / 6)):
        rows = np.flatnonzero(labels == v)
        vrows = np.flatnonzero(val_labels == v)
        ref = _reference_cost(x[rows], g[rows], y[vrows], 0.1)
        local = np.searchsorted(rows, res.indices[labels[res.indices] == v])
        expected += w * _emd2(ref, local)
    assert res.poo == pytest.approx(expected, rel=1e-5)
    assert res.trace[-1] == pytest.approx(res.poo, rel=1e-9)
    assert (np.diff(res.trace) <= 1e-12).all()


def test_label_enhanced_many_labels_every_method():
    x, g, y = _problem(200, 50, seed=12)
    labels = np.arange(200) % 5
    val_labels = np.arange(50) % 5
    for method in ("random", "grand", "kcenter", "stratified"):
        res = select(
            embeddings=x, grad_norms=g, val_embeddings=y, budget=10, method=method, labels=labels,
            val_labels=val_labels, device="cpu",
        )
        assert np.bincount(labels[res.indices], minlength=5).tolist() == [2] * 5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"budget": 0}, "budget"),
        ({"budget": 41}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"method": "best"}, "method"),
        ({"lam": -1.0}, "lam"),
        ({"grad_norms": np.ones(39)}, "grad_norms"),
        ({"val_embeddings": np.ones((5, 3))}, "dimension"),
        ({"candidates": 0}, "candidates"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    x, g, y = _problem(40, 10, seed=13)
    kw = dict(embeddings=x, grad_norms=g, val_embeddings=y, budget=5, device="cpu")
    kw.update(change)
    with pytest.raises(OtCoresetError, match=match):
        select(**kw)


def test_nan_features_and_bad_labels_are_clear_errors():
    x, g, y = _problem(40, 10, seed=14)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(OtCoresetError, match=r"embeddings has 1 NaN/inf value\(s\), first at row 3, column 2"):
        select(embeddings=bad, grad_norms=g, val_embeddings=y, budget=5, device="cpu")
    gbad = g.copy()
    gbad[7] = np.nan
    with pytest.raises(OtCoresetError, match="grad_norms has NaN/inf at row 7"):
        select(embeddings=x, grad_norms=gbad, val_embeddings=y, budget=5, device="cpu")
    labels = np.zeros(40, dtype=int)
    with pytest.raises(OtCoresetError, match=r"label\(s\) \[1\]"):
        select(
            embeddings=x, grad_norms=g, val_embeddings=y, budget=5, labels=labels,
            val_labels=np.array([0] * 5 + [1] * 5), device="cpu",
        )
    with pytest.raises(OtCoresetError, match="together"):
        select(embeddings=x, grad_norms=g, val_embeddings=y, budget=5, labels=labels, device="cpu")
    assert issubclass(OtCoresetError, ValueError)


def test_budget_one_and_whole_pool_edges():
    x, g, y = _problem(25, 10, seed=15)
    ref = _reference_cost(x, g, y, 0.1)
    one = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=1, device="cpu")
    assert one.poo == pytest.approx(min(_emd2(ref, [i]) for i in range(25)), rel=1e-5)
    whole = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=25, device="cpu")
    assert sorted(whole.indices.tolist()) == list(range(25)) and whole.swaps == 0
