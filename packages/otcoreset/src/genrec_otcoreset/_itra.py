"""ITRA: greedy facility-location initialisation, then swap refinement driven by the OT duals.

Refinement, one accepted swap per round:

1. Solve the exact OT of the current selection ``S`` (warm-started from the previous duals) for the
   potentials ``f`` (rows) and ``g`` (columns).
2. Score members for removal with a *true* leave-one-out: the column potentials recomputed without
   member ``r`` (its columns fall back to their second-best member). The published code meant to do
   this and, because its mask update writes into a temporary copy, scores every member against the
   unchanged minimum.
3. Score outsiders for insertion: the best potential ``phi`` a new row of mass ``1/k`` can take
   against ``g`` (the ``ceil(m/k)``-th smallest reduced cost) and what it captures.
4. For the best ``candidates`` of each, the pair score is the semi-dual value of ``S - r + o`` with
   ``f`` kept on ``S - r``, ``phi`` on ``o`` and the c-transform on the columns: a certified *lower
   bound* on the swapped POO, so pairs whose bound is not below the current POO are dropped unseen.
   Moving r's transport in the current plan onto o gives a feasible plan, hence an *upper* bound;
   pairs are ranked by a mix of the two (``RANK_MIX``).
5. The best few pairs are screened at once with gathered Sinkhorn warm-started from ``(f, g)``,
   (on CUDA; on CPU the bounds rank them) and the best are confirmed with the exact solver, warm-
   started from the current duals; a swap is accepted only if its exact POO is lower. The round stops at ``max_swaps`` accepted swaps or when no confirmed pair improves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from genrec_otcoreset._cost import ExactSolution, chunk_rows, solve_exact

if TYPE_CHECKING:
    import torch

__all__ = ["RefineStats", "greedy_init", "refine_swaps"]

log = logging.getLogger(__name__)

# An exact POO must drop by more than this to count as an improvement: network-simplex costs of two
# selections with the same optimum can differ in the last bits.
_IMPROVE_TOL = 1e-12
# Pairs are ranked by this mix of their lower bound (semi-dual) and upper bound (transplanted plan):
# on the bench problems, leaning on the upper bound accepts more swaps per exact solve.
RANK_MIX = 0.25


def greedy_init(cost: torch.Tensor, budget: int, *, batch: int = 64) -> list[int]:
    """Facility-location greedy: repeatedly add the row that most lowers ``sum_j min_{i in S} C_ij``.

    Lazy evaluation over batches: the gain of a row can only shrink as ``S`` grows (submodularity), so
    its last computed gain is an upper bound; a row is taken once its fresh gain beats every other
    row's bound. This returns what the plain greedy returns, at a fraction of its ``O(N m)`` per step.
    The first pick (against the column maxima) is the row with the smallest cost sum.
    """
    import torch

    n, m = cost.shape
    step = chunk_rows(m)
    cmin = cost.max(dim=0).values
    upper = torch.empty(n, dtype=torch.float64, device=cost.device)
    for lo in range(0, n, step):
        upper[lo : lo + step] = (cmin[None, :] - cost[lo : lo + step]).clamp_(min=0).sum(1, dtype=torch.float64)
    neg_inf = float("-inf")
    selected: list[int] = []
    fresh = torch.zeros(n, dtype=torch.bool, device=cost.device)  # bound computed against the current cmin
    while len(selected) < budget:
        width = min(batch, n - len(selected))
        vals, cand = torch.topk(upper, min(width + 1, n))
        # Every row outside the batch has a bound <= the (width+1)-th largest.
        threshold = float(vals[width]) if vals.numel() > width else neg_inf
        cand = cand[:width]
        stale = cand[~fresh[cand]]
        if stale.numel():
            upper[stale] = (cmin[None, :] - cost[stale]).clamp_(min=0).sum(1, dtype=torch.float64)
            fresh[stale] = True
        best_val = float(upper[cand].max())
        if best_val < threshold:
            continue
        if best_val == threshold:
            # Rows outside the batch whose bound ties the best might tie it exactly (zero gains do,
            # late in the greedy): refresh them, then take the lowest index, as a plain argmax would.
            cand = torch.nonzero(upper >= best_val).flatten()
            stale = cand[~fresh[cand]]
            if stale.numel():
                upper[stale] = (cmin[None, :] - cost[stale]).clamp_(min=0).sum(1, dtype=torch.float64)
                fresh[stale] = True
        pick = int(cand[upper[cand] == best_val].min())
        selected.append(pick)
        upper[pick] = neg_inf
        cmin = torch.minimum(cmin, cost[pick])
        fresh.zero_()
    return selected


@dataclass(frozen=True, kw_only=True)
class RefineStats:
    """What the swap refinement did: the POO trace and how many exact solves it spent."""

    indices: np.ndarray
    trace: tuple[float, ...]
    swaps: int
    exact_solves: int
    screened: int


def _gathered_objective(
    cost: torch.Tensor,
    rows: torch.Tensor,
    f0: torch.Tensor,
    g0: torch.Tensor,
    *,
    eps: float,
    max_iter: int,
) -> torch.Tensor:
    """Transport costs of ``B`` row selections under warm-started entropic plans (issue-5 engine)."""
    import torch

    from genrec_otcoreset._sinkhorn import sinkhorn_gathered

    res = sinkhorn_gathered(
        cost, rows, eps=eps, f0=f0.to(cost.dtype), g0=g0.to(cost.dtype), max_iter=max_iter, tol=1e-9,
        check_finite=False,
    )
    return torch.as_tensor(res.cost).reshape(-1).double()


def _kth_smallest(x: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r``-th smallest value of each row: ``topk`` for small ``r`` (a partial sort, about 4x faster
    than ``kthvalue`` at ``r`` = 5 on the CPU), ``kthvalue`` otherwise. Both give the same value."""
    import torch

    if r <= 64:
        return torch.topk(x, r, dim=1, largest=False).values[:, -1]
    return torch.kthvalue(x, r, dim=1).values


def _insertion_scores(
    cost: torch.Tensor, g: torch.Tensor, members: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row: the best potential ``phi`` of a new mass-``1/k`` row and its semi-dual gain."""
    import torch

    n, m = cost.shape
    r = min(m, math.ceil(m / k))
    step = chunk_rows(m)
    phi = torch.empty(n, dtype=torch.float64, device=cost.device)
    gain = torch.empty(n, dtype=torch.float64, device=cost.device)
    g32 = g.to(cost.dtype)
    for lo in range(0, n, step):
        red = cost[lo : lo + step] - g32[None, :]
        low = torch.topk(red, r, dim=1, largest=False).values.double()  # the r smallest, ascending
        p = low[:, -1]
        phi[lo : lo + step] = p
        # sum_j min(red_j - p, 0) only has terms among the r smallest (the rest are >= p).
        gain[lo : lo + step] = p / k + (low - p[:, None]).sum(1) / m
    gain[members] = float("inf")
    return phi, gain


def refine_swaps(
    cost: torch.Tensor,
    initial: list[int],
    *,
    candidates: int = 30,
    max_swaps: int = 100,
    screen: int = 8,
    confirm: int = 4,
    screen_iter: int = 20,
    eps: float = 1e-3,
    use_sinkhorn: bool = True,
    progress: bool = False,
    on_swap: Callable[[int, float], None] | None = None,
) -> RefineStats:
    """Swap refinement of ``initial`` (see the module docstring); every accepted swap lowers exact POO."""
    import torch
    from tqdm.auto import tqdm

    dev = cost.device
    sel = np.asarray(initial, dtype=np.int64).copy()
    k = sel.size
    m = cost.shape[1]
    r_cap = min(m, math.ceil(m / k))
    sol: ExactSolution = solve_exact(cost, sel)
    trace = [sol.cost]
    n_exact, n_screened, swaps = 1, 0, 0
    bar = tqdm(total=max_swaps, desc="swaps", unit="swap", disable=not progress)
    try:
        # k == 1: POO of one row is its mean cost and the greedy's first pick minimises it already.
        while swaps < max_swaps and 1 < k < cost.shape[0]:
            sel_t = torch.as_tensor(sel, device=dev)
            f = torch.as_tensor(sol.f, device=dev)
            g = torch.as_tensor(sol.g, device=dev)
            red = cost[sel_t].double() - f[:, None]  # (k, m) reduced costs of the members
            if k > 1:
                two = torch.topk(red, 2, dim=0, largest=False)
                best1, best2, owner = two.values[0], two.values[1], two.indices[0]
            else:
                best1, owner = red[0], torch.zeros(m, dtype=torch.int64, device=dev)
                best2 = torch.full_like(best1, float("inf"))
            # True leave-one-out: without member r, the columns it owns fall back to their second best.
            loss = torch.zeros(k, dtype=torch.float64, device=dev)
            if k > 1:
                loss.index_add_(0, owner, best2 - best1)
            removal = -f / k + loss / m
            _, insert = _insertion_scores(cost, g, sel_t, k)
            c = min(candidates, k, cost.shape[0] - k)
            out_idx = torch.topk(insert, c, largest=False).indices
            in_pos = torch.topk(removal, min(candidates, k), largest=False).indices
            # Pair lower bounds: f on S - r, the best phi for o, the c-transform on the columns.
            best_loo = best1[None, :].expand(in_pos.numel(), m).clone()
            if k > 1:
                mask = owner[None, :] == in_pos[:, None]
                best_loo[mask] = best2[None, :].expand_as(best_loo)[mask]
            else:
                best_loo.fill_(float("inf"))
            c_out = cost[out_idx].double()  # (c, m)
            bounds = torch.empty((in_pos.numel(), out_idx.numel()), dtype=torch.float64, device=dev)
            phis = torch.empty_like(bounds)
            base = f.sum() / k
            for a in range(in_pos.numel()):
                diff = c_out - best_loo[a][None, :]
                p = _kth_smallest(diff, r_cap)
                col = torch.minimum(best_loo[a][None, :], c_out - p[:, None]).sum(dim=1) / m
                bounds[a] = base - f[in_pos[a]] / k + p / k + col
                phis[a] = p
            # Upper bound from a feasible plan: o takes over exactly r's transport.
            plan_r = torch.as_tensor(sol.plan, device=dev)[in_pos]  # (c_in, m)
            upper = sol.cost + plan_r @ c_out.T - (plan_r * red[in_pos] + plan_r * f[in_pos, None]).sum(1, keepdim=True)
            flat = bounds.flatten()
            key = (RANK_MIX * flat + (1 - RANK_MIX) * upper.flatten())
            order = torch.argsort(key)
            eligible = order[flat[order] < sol.cost - _IMPROVE_TOL][:screen]
            if eligible.numel() == 0:
                log.info("no candidate swap can lower POO (all lower bounds >= %.6g); stopping", sol.cost)
                break
            pairs = [(int(e) // out_idx.numel(), int(e) % out_idx.numel()) for e in eligible.tolist()]
            rows = sel_t[None, :].repeat(len(pairs), 1)
            f0 = f[None, :].repeat(len(pairs), 1)
            for b, (a, o) in enumerate(pairs):
                rows[b, in_pos[a]] = out_idx[o]
                f0[b, in_pos[a]] = phis[a, o]
            if use_sinkhorn and len(pairs) > 1:
                values = _gathered_objective(cost, rows, f0, g, eps=eps, max_iter=screen_iter)
                n_screened += len(pairs)
                ranking = torch.argsort(values).tolist()
            else:
                ranking = list(range(len(pairs)))
            accepted = False
            for b in ranking[:confirm]:
                trial = rows[b].cpu().numpy()
                cand_sol = solve_exact(cost, trial, init=(f0[b].cpu().numpy(), sol.g))
                n_exact += 1
                if cand_sol.cost < sol.cost - _IMPROVE_TOL:
                    a, o = pairs[b]
                    log.debug(
                        "swap %d: out %d in %d, POO %.6g -> %.6g",
                        swaps + 1, int(sel[int(in_pos[a])]), int(out_idx[o]), sol.cost, cand_sol.cost,
                    )
                    sel, sol, accepted = trial, cand_sol, True
                    break
            if not accepted:
                log.info("none of the %d best candidate swaps lowers the exact POO; stopping", confirm)
                break
            swaps += 1
            trace.append(sol.cost)
            bar.update(1)
            bar.set_postfix(poo=f"{sol.cost:.5g}")
            if on_swap is not None:
                on_swap(swaps, sol.cost)
    finally:
        bar.close()
    return RefineStats(
        indices=sel, trace=tuple(trace), swaps=swaps, exact_solves=n_exact, screened=n_screened
    )
