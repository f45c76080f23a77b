"""The published GORACS baseline's replay (bench/otcoreset/_published.py): it must reach exactly the
selection, trace and EMD count of the faithful run, and its dual bound must never exceed a trial's
exact POO (checked against POT's from-scratch EMD)."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ot")
pytest.importorskip("genrec_otcoreset")

import torch

PUBLISHED = Path(__file__).resolve().parents[2] / "bench" / "otcoreset" / "_published.py"


@pytest.fixture(scope="module")
def pub():
    spec = importlib.util.spec_from_file_location("otcoreset_published_test", PUBLISHED)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _problem(pub, n=700, m=240, seed=0, lam=0.1, d=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 1.5
    x = (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)
    y = (centres[rng.integers(0, 8, m)] + rng.normal(size=(m, d))).astype(np.float32)
    g = rng.lognormal(size=n).astype(np.float32)
    return pub.published_cost(x, g, y, lam)


@pytest.mark.parametrize(("n", "m", "budget"), [(700, 240, 40), (600, 300, 30)])
def test_replay_reaches_the_faithful_selection_trace_and_emd_count(pub, n, m, budget):
    cost = _problem(pub, n=n, m=m)
    init = pub.greedy(cost, budget)
    events: list[dict] = []
    faithful = pub.refine(cost, init, max_iters=25, cut_num=20, progress=events.append)
    stats: dict = {}
    replayed = pub.refine(cost, init, max_iters=25, cut_num=20, replay=True, stats=stats)
    assert len(faithful[1]) > 3  # it did swap
    assert replayed == faithful
    # it skipped most trials, and each accepted swap ran one EMD
    assert stats["bound_rejected"] + stats["paths_rejected"] > stats["emd_trials"]
    assert stats["disagreements"] == 0
    # progress reports every accepted swap, then the end
    assert [e["poo"] for e in events if e["event"] == "swap"] == faithful[1][1:]
    assert events[-1]["event"] == "done" and events[-1]["emds"] == faithful[2]


def test_a_stopped_run_is_a_prefix_of_the_replay(pub):
    cost = _problem(pub, seed=2)
    init = pub.greedy(cost, 40)
    events: list[dict] = []
    stopped = pub.refine(cost, init, max_iters=25, cut_num=12, deadline=0.0, progress=events.append)
    assert stopped[1] == pub.refine(cost, init, max_iters=0)[1]  # stopped before its first trial
    assert events[-1]["event"] == "stopped"
    full = pub.refine(cost, init, max_iters=25, cut_num=12, replay=True)
    assert full[1][: len(stopped[1])] == stopped[1]


def test_the_dual_bound_is_below_every_trials_exact_poo(pub):
    import ot

    cost = _problem(pub, n=300, m=120, seed=3)
    sel = pub.greedy(cost, 24)
    # outsiders that duplicate members: swapping one for its copy keeps the POO, and the bound is tight
    twins = {int(i): cost.shape[0] + t for t, i in enumerate(sel[:6])}
    cost = np.vstack([cost, cost[sel[:6]]])
    value, x_star, info = pub.compute_ot(cost, sel, plan=True)
    judge = pub.Replay(cost)
    judge.load(sel, info)
    inner, outer = pub.pruning(torch.from_numpy(cost), sel, torch.from_numpy(x_star), 8)
    outsiders = [int(o) for o in np.setdiff1d(np.arange(cost.shape[0]), sel)[::25]]
    pairs = [*itertools.product(inner, [*outer, *outsiders]), *twins.items()]
    gaps = []
    for i, o in pairs:
        trial = [s for s in sel if s != i] + [o]
        k, m = len(trial), cost.shape[1]
        exact = ot.emd2(np.full(k, 1 / k), np.full(m, 1 / m), cost[trial], numItermax=10**7)
        bound = judge.lower_bound(i, o)
        assert bound <= exact + 1e-12, (i, o, bound, exact)
        gaps.append(exact - bound)
        if o in twins.values():
            assert abs(exact - value) < 1e-12
            assert exact - bound < 1e-12  # tight
    # a bound, not a constant: loose for most trials
    assert max(gaps) > 1e-3
