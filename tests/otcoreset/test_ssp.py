"""The incremental exact solver of ITRA (successive shortest paths after a swap) and the lazy
insertion scores, against POT's network simplex from scratch and a full rescoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec_otcoreset._cost import build_cost, import_ot, solve_exact
from genrec_otcoreset._itra import _insertion_scores, _LazyInsertion, greedy_init, refine_swaps
from genrec_otcoreset._ssp import dual_gap, from_plan, swap

ot = import_ot()


def _emd2(rows: np.ndarray) -> float:
    sub = np.ascontiguousarray(rows, dtype=np.float64)
    k, m = sub.shape
    return float(ot.emd2(np.full(k, 1 / k), np.full(m, 1 / m), sub, numItermax=10_000_000))


def _start(cost: np.ndarray, sel: np.ndarray):
    sol = solve_exact(torch.as_tensor(cost), sel)
    state = from_plan(cost[sel], sol.plan, sol.f, sol.g)
    assert state is not None
    return state


@pytest.mark.parametrize(
    ("n", "k", "m", "ties"),
    [(40, 5, 12, False), (50, 7, 10, False), (120, 30, 45, False), (300, 12, 100, False), (80, 6, 20, True)],
)
def test_swap_chain_matches_a_network_simplex_from_scratch(n, k, m, ties):
    """25 random swaps in a row, each against ot.emd2 on the swapped rows: the POO, a plan with the
    right marginals that costs exactly that, duals that are feasible and tight where units flow."""
    rng = np.random.default_rng(k * m)
    cost = rng.random((n, m)).astype(np.float32)
    if ties:  # few distinct values and duplicated rows: degenerate plans, many equal paths
        cost = np.round(cost * 4).astype(np.float32) / 4
        cost[n // 2 :] = cost[: n - n // 2]
    sel = rng.choice(n, k, replace=False)
    state = _start(cost, sel)
    assert state.poo == pytest.approx(_emd2(cost[sel]), abs=1e-12)
    for _ in range(25):
        pos = int(rng.integers(k))
        new = int(rng.choice(np.setdiff1d(np.arange(n), sel)))
        before = (state.poo, state.f.copy(), state.g.copy())
        result = swap(state, pos, cost[new])
        assert state.poo == before[0]  # swap leaves the state as it was
        np.testing.assert_array_equal(state.f, before[1])
        sel = sel.copy()
        sel[pos] = new
        reference = _emd2(cost[sel])
        assert result.poo == pytest.approx(reference, abs=1e-10)
        state.apply(result)
        plan = state.plan_rows(np.arange(k))
        np.testing.assert_allclose(plan.sum(axis=1), 1 / k, atol=1e-15)
        np.testing.assert_allclose(plan.sum(axis=0), 1 / m, atol=1e-15)
        assert float((plan * cost[sel]).sum()) == pytest.approx(reference, abs=1e-10)
        reduced = cost[sel].astype(np.float64) - state.f[:, None] - state.g[None, :]
        assert reduced.min() > -1e-9
        assert np.abs(reduced[plan > 0]).max() < 1e-9
        assert abs(dual_gap(state)) < 1e-10


def test_swapping_in_an_identical_row_changes_nothing():
    rng = np.random.default_rng(3)
    cost = rng.random((30, 16)).astype(np.float32)
    cost[29] = cost[4]
    sel = np.array([4, 7, 9, 12])
    state = _start(cost, sel)
    result = swap(state, 0, cost[29])
    assert result.poo == pytest.approx(state.poo, abs=1e-12)


def test_from_plan_refuses_plans_that_are_not_in_whole_units():
    rows = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    half = np.full((2, 2), 0.25)  # feasible, but half a unit on every arc
    assert from_plan(rows, half, np.zeros(2), np.zeros(2)) is None
    wrong_mass = np.array([[0.5, 0.0], [0.0, 0.25]])
    assert from_plan(rows, wrong_mass, np.zeros(2), np.zeros(2)) is None


def test_dual_gap_flags_a_plan_that_is_not_optimal():
    rows = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    crossed = np.array([[0.0, 0.5], [0.5, 0.0]])  # feasible, whole units, and the worst plan
    state = from_plan(rows, crossed, np.zeros(2), np.zeros(2))
    assert state is not None and state.poo == pytest.approx(1.0)
    assert dual_gap(state) > 0.5


def test_refinement_is_exact_with_and_without_the_incremental_solver(monkeypatch):
    """ITRA on whole-unit plans (incremental) and with the incremental solver switched off (POT for
    every trial): both traces fall at every swap and end on the network simplex's POO."""
    import genrec_otcoreset._itra as itra

    rng = np.random.default_rng(15)
    centres = rng.normal(size=(6, 8)) * 2
    x = centres[rng.integers(0, 6, 400)] + rng.normal(size=(400, 8))
    y = centres[rng.integers(0, 6, 90)] + rng.normal(size=(90, 8))
    cost = build_cost(x, rng.lognormal(size=400), y, lam=0.1)
    init = greedy_init(cost, 15)
    fast = refine_swaps(cost, init, candidates=12, max_swaps=25, use_sinkhorn=False)
    monkeypatch.setattr(itra, "from_plan", lambda *a, **k: None)
    slow = refine_swaps(cost, init, candidates=12, max_swaps=25, use_sinkhorn=False)
    for stats in (fast, slow):
        assert stats.swaps >= 3
        assert (np.diff(stats.trace) < 0).all()
        assert stats.trace[-1] == pytest.approx(_emd2(cost.numpy()[stats.indices]), abs=1e-12)
    assert fast.trace[0] == slow.trace[0]


def test_uncertified_duals_are_resolved_by_the_network_simplex(monkeypatch):
    """If the dual bound cannot vouch for the updated duals, the round re-solves with POT instead of
    trusting them; the result is still exact."""
    import genrec_otcoreset._itra as itra

    rng = np.random.default_rng(12)
    cost = torch.as_tensor(rng.random((300, 60)).astype(np.float32))
    init = greedy_init(cost, 12)
    calls = {"n": 0}
    real = itra.solve_exact

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(itra, "solve_exact", counting)
    monkeypatch.setattr(itra, "_CERTIFY_TOL", -1.0)  # nothing the shortest paths produce is trusted
    stats = refine_swaps(cost, init, candidates=10, max_swaps=6, use_sinkhorn=False)
    assert stats.swaps >= 2
    # initial solve + one re-solve after every accepted swap but the last (the loop stops there) + final
    assert calls["n"] >= 1 + (stats.swaps - 1) + 1
    assert (np.diff(stats.trace) < 0).all()
    assert stats.trace[-1] == pytest.approx(_emd2(cost.numpy()[stats.indices]), abs=1e-12)


def test_lazy_insertion_scores_pick_what_a_full_rescoring_picks():
    rng = np.random.default_rng(5)
    cost = torch.as_tensor(rng.random((600, 50)).astype(np.float32))
    k, c = 8, 10
    lazy = _LazyInsertion(cost, k)
    g = torch.as_tensor(rng.normal(size=50))
    members = torch.as_tensor(rng.choice(600, k, replace=False))
    for step in range(12):
        got = lazy.smallest(g, members, c)
        full = _insertion_scores(cost, g, members, k)
        want = torch.topk(full, c, largest=False).indices
        assert sorted(got.tolist()) == sorted(want.tolist()), step
        # potentials only fall (as after shortest-path updates), sometimes everywhere, sometimes a few
        drop = torch.as_tensor(rng.random(50) * (rng.random(50) < 0.3)) * 0.2
        g = g - drop
        if step % 4 == 3:  # a member leaves, an outsider joins
            members = members.clone()
            members[step % k] = int(want[0])
    assert lazy.rescored < 600 * 12 / 2  # it did not rescore everything every time
    lazy.smallest(g + 0.1, members, c)  # potentials that rose: everything is rescored
    assert lazy.rescored >= 600
