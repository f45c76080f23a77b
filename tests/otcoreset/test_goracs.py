"""``method="goracs"`` against an independent, plain re-implementation of the GORACS release.

The reference below is written from the release's description (``codes/select/ITRA.py`` as
``select_seqrec.py`` and ``select_ctrpre.py`` run it), in straightforward numpy with one
``ot.emd2`` per trial and no shortcuts, sharing no code with the package. The distances come from ``torch.cdist`` and the float32 row
sums from torch, as in the release: past the point where no outsider improves the greedy objective,
its gains tie in exact arithmetic and the release's pick is decided by float32 rounding, so the
summation order is part of what it selects.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ot")

from genrec_otcoreset import OtCoresetError, select  # noqa: E402
from genrec_otcoreset._cost import import_ot  # noqa: E402
from genrec_otcoreset._goracs import (  # noqa: E402
    _emd,
    _Judge,
    goracs_budgets,
    goracs_cost,
    goracs_greedy,
    goracs_pruning,
    goracs_refine,
)

ot = import_ot()


# ----------------------------------------------------------------------------- the reference


def ref_emd(cost, rows):
    k, m = len(rows), cost.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value, log = ot.emd2(np.ones(k) / k, np.ones(m) / m, cost[rows], numItermax=300000, log=True)
        if log["warning"]:
            value, log = ot.emd2(np.ones(k) / k, np.ones(m) / m, cost[rows], numItermax=10**7, log=True)
    return value, log["u"]


def _rowsum(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).sum(dim=1).numpy()


def ref_scale(dist, g_scaled, lam):
    c = (dist - lam * g_scaled[:, None]).astype(np.float32)
    return (c - c.min()) / (c.max() - c.min())


def ref_greedy(cost, n, extra=None):
    chosen = [int(np.argmin(cost.sum(axis=1)))]
    filtering = len(set(np.argmin(cost, axis=0).tolist())) > n
    while True:
        if len(chosen) >= n:
            owners = set(np.argmin(cost[chosen], axis=0).tolist())
            if len(owners) >= n or not filtering:
                if extra is not None:
                    extra.append(len(chosen) - n)
                return [s for p, s in enumerate(chosen) if p in owners] if filtering else chosen
        low = cost[chosen].min(axis=0)
        gain = _rowsum(cost) - _rowsum(np.abs(low - cost))
        gain[chosen] = np.inf
        chosen.append(int(np.argmin(gain)))


def ref_candidates(cost, chosen, duals, cut):
    big, m = cost.shape
    k = len(chosen)
    x = np.zeros(big)
    x[chosen] = duals
    work = cost.copy()
    work -= x[:, None]  # float32 storage of a float64 difference, as the release's in-place sub_
    low = work[chosen].min(axis=0)
    work += x[:, None]
    y_hat = np.sort(work - low, axis=1)[:, -math.ceil(m / k)]
    work -= y_hat[:, None]
    score = _rowsum(np.minimum(work - low, 0)) / np.float32(m) + y_hat / k
    outside = np.array([i for i in range(big) if i not in set(chosen)], dtype=np.int64)
    inside = np.array(chosen)
    outer = outside[np.argsort(score[outside], kind="stable")[:cut]]
    inner = inside[np.argsort(score[inside], kind="stable")[-cut:]]
    return [int(i) for i in inner], [int(o) for o in outer]


def ref_itra(cost, n, max_iters, cut, extra=None):
    chosen = ref_greedy(cost, n, extra)
    value, duals = ref_emd(cost, chosen)
    trace = [value]
    while len(trace) - 1 < max_iters:
        inner, outer = ref_candidates(cost, chosen, duals, cut)
        for i, o in itertools.product(inner, outer):
            trial = [s for s in chosen if s != i] + [o]
            v, u = ref_emd(cost, trial)
            if v < value:
                chosen, value, duals = trial, v, u
                trace.append(v)
                break
        else:
            break
    return chosen, trace


def ref_algorithm1(x, g, y, n, lam, max_iters, cut, extra=None):
    dist = torch.cdist(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    dist = dist / dist.max()
    return ref_itra(ref_scale(dist, g / g.max(), lam), n, max_iters, cut, extra)


def ref_algorithm2(x, g, y, lab, vlab, n, lam, max_iters, cut):
    """Binary labels as the release: positives first with round(mean * n), negatives the rest."""
    dist = torch.cdist(torch.from_numpy(x), torch.from_numpy(y)).numpy()  # raw within each block
    gs = g / g.max()  # global maximum
    share = float(np.float32(vlab.sum()) / np.float32(len(vlab)))  # torch's float32 mean
    n_pos = round(share * n)
    out = []
    for value, share in ((1, n_pos), (0, n - n_pos)):
        rows, vrows = np.flatnonzero(lab == value), np.flatnonzero(vlab == value)
        cost = ref_scale(dist[rows][:, vrows], gs[rows], lam)
        chosen, _ = ref_itra(cost, share, max_iters, cut)
        out += rows[chosen].tolist()
    return out


# ----------------------------------------------------------------------------- problems


def _problem(n, m, seed, d=6, clusters=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 2.0
    x = (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d))).astype(np.float32)
    y = (centres[rng.integers(0, clusters, m)] + rng.normal(size=(m, d))).astype(np.float32)
    return x, rng.lognormal(size=n).astype(np.float32), y


CASES = [  # n, m, budget, lam, max_swaps, candidates, seed
    (90, 40, 8, 0.1, 6, 5, 0),
    (120, 30, 12, 0.5, 6, 4, 1),
    (120, 30, 12, 0.0, 5, 4, 2),  # the greedy adds a row past the budget, then drops a non-owner
    (70, 9, 12, 0.0, 4, 4, 2),  # fewer validation points than the budget: no owning filter
    (100, 50, 10, 1.0, 8, 6, 3),
]


@pytest.mark.parametrize("exact_shortcuts", [True, False])
def test_goracs_selects_what_the_reference_selects(exact_shortcuts):
    past_budget = []
    swapped = 0
    for n, m, budget, lam, swaps, cut, seed in CASES:
        x, g, y = _problem(n, m, seed)
        want, trace = ref_algorithm1(x, g, y, budget, lam, swaps, cut, past_budget)
        got = select(
            embeddings=x, grad_norms=g, val_embeddings=y, budget=budget, method="goracs", lam=lam,
            max_swaps=swaps, candidates=cut, exact_shortcuts=exact_shortcuts, device="cpu",
        )
        assert got.indices.tolist() == want, (n, m, budget, seed)
        assert got.trace == pytest.approx(trace, abs=1e-12)
        assert got.swaps == len(trace) - 1
        swapped += got.swaps
    assert swapped >= 4  # the refinement did work
    assert max(past_budget) > 0  # and the greedy went past the budget and dropped non-owners once


@pytest.mark.parametrize("exact_shortcuts", [True, False])
def test_label_enhanced_goracs_selects_what_the_reference_selects(exact_shortcuts):
    for n, m, budget, lam, seed in ((120, 50, 11, 0.3, 4), (100, 45, 9, 0.0, 5), (150, 40, 14, 1.0, 6)):
        x, g, y = _problem(n, m, seed)
        rng = np.random.default_rng(seed + 10)
        lab = (rng.random(n) < 0.4).astype(np.int64)
        vlab = (rng.random(m) < 0.35).astype(np.int64)
        want = ref_algorithm2(x, g, y, lab, vlab, budget, lam, 5, 4)
        got = select(
            embeddings=x, grad_norms=g, val_embeddings=y, budget=budget, method="goracs", lam=lam, labels=lab,
            val_labels=vlab, max_swaps=5, candidates=4, exact_shortcuts=exact_shortcuts, device="cpu",
        )
        assert got.indices.tolist() == want, (n, m, budget, seed)


def test_label_costs_keep_raw_distances_and_the_global_gradient_maximum():
    x, g, y = _problem(60, 20, 7)
    lab = np.arange(60) % 2
    vlab = np.arange(20) % 2
    g[0] = 50.0  # the global maximum sits in label 0's block
    res = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=6, method="goracs", lam=2.0, labels=lab,
                 val_labels=vlab, max_swaps=0, device="cpu")
    dist = torch.cdist(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    rows, vrows = np.flatnonzero(lab == 1), np.flatnonzero(vlab == 1)
    cost = ref_scale(dist[rows][:, vrows], g[rows] / g.max(), 2.0)
    first = rows[ref_greedy(cost, 3)]
    assert res.indices[:3].tolist() == first.tolist()
    # the block normalised on its own (ours) would differ here
    own = ref_scale(dist[rows][:, vrows] / dist[rows][:, vrows].max(), g[rows] / g[rows].max(), 2.0)
    assert not np.allclose(own, cost)


def test_budget_split_rounds_like_the_release():
    # 0.5 * 5 = 2.5: Python's round gives 2 (half to even), so the negatives get 3
    assert goracs_budgets(np.array([1, 0] * 4), 5) == [(1, 2), (0, 3)]
    assert goracs_budgets(np.array([1] * 3 + [0] * 7), 16) == [(1, 5), (0, 11)]  # 0.3 * 16 = 4.8
    assert goracs_budgets(np.array([0, 1, 2, 2]), 8) == [(2, 4), (1, 2), (0, 2)]
    with pytest.raises(OtCoresetError, match="too small for the goracs label split"):
        goracs_budgets(np.array([0, 1, 1, 1, 2, 2, 2, 3, 3, 3]), 5)


def test_a_label_whose_share_rounds_to_zero_still_gets_the_greedys_first_row():
    x, g, y = _problem(60, 20, 8)
    lab = np.arange(60) % 2
    vlab = np.array([1] + [0] * 19)  # round(0.05 * 6) = 0 positives
    res = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=6, method="goracs", labels=lab,
                 val_labels=vlab, max_swaps=2, device="cpu")
    assert res.indices.size == 7 and lab[res.indices].tolist() == [1] + [0] * 6


def test_the_shortcuts_skip_most_trials_and_their_bound_is_a_lower_bound():
    x, g, y = _problem(400, 120, 9, d=12, clusters=8)
    cost = goracs_cost(x, g, y, 0.1)
    init = goracs_greedy(cost, 24)
    plain = goracs_refine(cost, init, max_iters=10, cut_num=12, exact_shortcuts=False)
    fast = goracs_refine(cost, init, max_iters=10, cut_num=12)
    assert (fast.indices, fast.trace, fast.release_emds) == (plain.indices, plain.trace, plain.release_emds)
    assert plain.emds_run == plain.release_emds and fast.emds_run < plain.emds_run / 3
    assert fast.stats["bound_rejected"] + fast.stats["paths_rejected"] > fast.stats["emd_trials"]
    # the dual bound against the release's EMD, on the trials the pruning proposes and on twins
    value, info = _emd(cost, init, plan=True)
    judge = _Judge(cost)
    judge.load(init, info)
    x_star = np.zeros(cost.shape[0])
    x_star[init] = info["u"]
    inner, outer = goracs_pruning(cost, init, x_star, 8)
    twin = np.vstack([cost, cost[init[:1]]])
    judge_twin = _Judge(twin)
    judge_twin.load(init, info)
    assert judge_twin.lower_bound(init[0], twin.shape[0] - 1) == pytest.approx(value, abs=1e-12)
    for i, o in itertools.product(inner, outer):
        exact, _ = _emd(cost, [s for s in init if s != i] + [o], plan=False)
        assert judge.lower_bound(i, o) <= exact + 1e-12


def test_a_stopped_refinement_is_a_prefix():
    x, g, y = _problem(200, 60, 10)
    cost = goracs_cost(x, g, y, 0.1)
    init = goracs_greedy(cost, 12)
    events = []
    stopped = goracs_refine(cost, init, max_iters=5, cut_num=6, deadline=0.0, progress=events.append)
    assert stopped.stopped and stopped.trace == goracs_refine(cost, init, max_iters=0).trace
    assert events[-1]["event"] == "stopped"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lam": float("nan")}, "lam must be a finite number >= 0, got nan"),
        ({"lam": float("inf")}, "lam must be a finite number >= 0, got inf"),
        ({"lam": -0.5}, "lam must be a finite number >= 0, got -0.5"),
        ({"lam": "0.1"}, "lam must be a finite number"),
        ({"budget": float("nan")}, "budget must be an integer in"),
        ({"budget": -3}, "budget must be an integer in"),
        ({"budget": 0}, "budget must be an integer in"),
        ({"budget": 41}, r"budget must be an integer in \[1, 40\]"),
        ({"candidates": -1}, "candidates must be an integer >= 1, got -1"),
        ({"max_swaps": -1}, "max_swaps must be an integer >= 0, got -1"),
        ({"exact_shortcuts": "yes"}, "exact_shortcuts must be True or False"),
    ],
)
def test_bad_options_fail_before_any_work(monkeypatch, change, match):
    import genrec_otcoreset._goracs as mod

    def boom(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(mod, "goracs_cost", boom)
    x, g, y = _problem(40, 10, 11)
    kw = dict(embeddings=x, grad_norms=g, val_embeddings=y, budget=5, method="goracs", device="cpu")
    kw.update(change)
    with pytest.raises(OtCoresetError, match=match) as info:
        select(**kw)
    assert "\n" not in str(info.value)


def test_goracs_label_budget_beyond_a_block_is_an_error():
    x, g, y = _problem(40, 10, 12)
    lab = np.array([1] * 3 + [0] * 37)
    vlab = np.array([1] * 5 + [0] * 5)
    with pytest.raises(OtCoresetError, match="label 1 needs 4 records"):
        select(embeddings=x, grad_norms=g, val_embeddings=y, budget=8, method="goracs", labels=lab,
               val_labels=vlab, device="cpu")
