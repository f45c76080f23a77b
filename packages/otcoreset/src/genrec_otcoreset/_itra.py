"""ITRA: greedy facility-location initialisation, then swap refinement driven by the OT duals.

Refinement, one accepted swap per round:

1. Start from the exact OT of the current selection ``S``: its plan and the potentials ``f`` (rows)
   and ``g`` (columns).
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
5. The best few pairs are screened at once with gathered Sinkhorn warm-started from ``(f, g)``
   (on CUDA; on CPU the bounds rank them), and the best are confirmed with an exact solve; a swap is
   accepted only if its exact POO is lower. The round stops at ``max_swaps`` accepted swaps or when no
   confirmed pair improves.

Exact solves: the first is POT's network simplex. Its plan is in whole units (every row ships
``m / gcd(k, m)`` of them), so a swap is then re-solved exactly from the current optimum by successive
shortest paths (:mod:`genrec_otcoreset._ssp`): about 0.1 s at 1,000 x 5,000 where a network simplex
takes 0.3-0.7 s. Every round first certifies the current plan with the dual bound from ``f`` and the
column c-transform (which the removal scores compute anyway); a gap above rounding level sends the
selection back to the network simplex. The POO reported at the end is a network simplex's, always.
Insertion scores are lazy (:class:`_LazyInsertion`): shortest-path updates only lower the column
potentials, so last round's scores bound this round's from below.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from genrec_otcoreset._cost import ExactSolution, _rows_float64, chunk_rows, solve_exact
from genrec_otcoreset._ssp import FlowState, SwapResult, dual_gap, from_plan, swap

if TYPE_CHECKING:
    import torch

__all__ = ["RefineStats", "greedy_init", "refine_swaps"]

log = logging.getLogger(__name__)

# An exact POO must drop by more than this to count as an improvement: network-simplex costs of two
# selections with the same optimum can differ in the last bits.
_IMPROVE_TOL = 1e-12
# A plan whose POO is within this of the dual bound is optimal (rounding level at POO ~ 0.1-1).
_CERTIFY_TOL = 1e-10
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


def _gains(rows: torch.Tensor, g32: torch.Tensor, k: int) -> torch.Tensor:
    """Insertion gains of ``rows``: the semi-dual value of each as a new mass-``1/k`` row against ``g``,
    with its best potential ``phi`` (the ``ceil(m/k)``-th smallest reduced cost). Lower is better."""
    import torch

    m = rows.shape[1]
    r = min(m, math.ceil(m / k))
    low = torch.topk(rows - g32[None, :], r, dim=1, largest=False).values.double()  # ascending
    p = low[:, -1]
    # sum_j min(red_j - p, 0) only has terms among the r smallest (the rest are >= p).
    return p / k + (low - p[:, None]).sum(1) / m


def _insertion_scores(cost: torch.Tensor, g: torch.Tensor, members: torch.Tensor, k: int) -> torch.Tensor:
    """The insertion gain of every row (members get +inf), in row chunks."""
    import torch

    n, m = cost.shape
    step = chunk_rows(m)
    gain = torch.empty(n, dtype=torch.float64, device=cost.device)
    g32 = g.to(cost.dtype)
    for lo in range(0, n, step):
        gain[lo : lo + step] = _gains(cost[lo : lo + step], g32, k)
    gain[members] = float("inf")
    return gain


class _LazyInsertion:
    """The ``c`` outsiders with the smallest insertion gains, without rescoring all of them each round.

    A gain only grows when column potentials fall: with ``g' = g - delta``, ``delta >= 0``, every
    reduced cost rises by ``delta_j >= min delta``, hence every gain by at least ``min delta / k``
    (the semi-dual value is monotone in the reduced costs and shifts by ``t / k`` when they all shift
    by ``t``). Successive shortest paths only ever lower column potentials, so last round's gains,
    raised by ``min delta / k``, are lower bounds; rows are rescored smallest bound first until the
    ``c`` smallest values are all fresh, as in a lazy greedy. The result is the same set a full
    rescoring returns (up to ties). Potentials that rose anywhere (a network-simplex re-solve)
    rescore everything.
    """

    def __init__(self, cost: torch.Tensor, k: int) -> None:
        self.cost = cost
        self.k = k
        self.bound: torch.Tensor | None = None
        self.g_prev: torch.Tensor | None = None
        self.members: torch.Tensor | None = None
        self.rescored = 0

    def smallest(self, g: torch.Tensor, members: torch.Tensor, c: int) -> torch.Tensor:
        import torch

        n = self.cost.shape[0]
        dev = self.cost.device
        g32 = g.to(self.cost.dtype)
        fresh = torch.zeros(n, dtype=torch.bool, device=dev)
        delta = None if self.g_prev is None else self.g_prev - g
        if self.bound is None or delta is None or float(delta.min()) < 0.0:
            self.bound = _insertion_scores(self.cost, g, members, self.k)
            self.rescored += n
            fresh[:] = True
        else:
            self.bound += float(delta.min()) / self.k
            # Members that left are outsiders again: score them first (their bound is -inf).
            assert self.members is not None
            left = self.members[~torch.isin(self.members, members)]
            self.bound[left] = float("-inf")
            self.bound[members] = float("inf")
        fresh[members] = True
        self.g_prev, self.members = g.clone(), members.clone()
        width = min(n, 3 * c)
        while True:
            _, idx = torch.topk(self.bound, min(c, n), largest=False)
            if bool(fresh[idx].all()):
                return idx
            _, wide = torch.topk(self.bound, width, largest=False)
            stale = wide[~fresh[wide]]
            self.bound[stale] = _gains(self.cost[stale], g32, self.k)
            fresh[stale] = True
            self.rescored += int(stale.numel())


class _Current:
    """The exact optimum of the current selection: the whole-unit plan and duals that successive
    shortest paths update after each swap (:mod:`genrec_otcoreset._ssp`), or POT's solution where the
    plan is not whole-unit (then every trial is a network simplex, warm-started)."""

    def __init__(self, cost: torch.Tensor, sel: np.ndarray, sol: ExactSolution) -> None:
        self.cost_matrix = cost
        self._load(sel, sol)

    def _load(self, sel: np.ndarray, sol: ExactSolution) -> None:
        self.sel = sel
        self.sol = sol
        self.flow: FlowState | None = from_plan(_rows_float64(self.cost_matrix, sel), sol.plan, sol.f, sol.g)
        self.poo = sol.cost
        # The duals are the network simplex's own (exact), not yet moved by shortest-path updates.
        self.simplex = True

    @property
    def f(self) -> np.ndarray:
        return self.flow.f if self.flow is not None else self.sol.f

    @property
    def g(self) -> np.ndarray:
        return self.flow.g if self.flow is not None else self.sol.g

    def plan_rows(self, positions: np.ndarray) -> np.ndarray:
        if self.flow is not None:
            return self.flow.plan_rows(positions)
        return self.sol.plan[positions]

    def members(self) -> torch.Tensor:
        """The members' cost rows, ``(k, m)`` float64 on the cost's device."""
        import torch

        if self.flow is not None and self.cost_matrix.device.type == "cpu":
            return torch.from_numpy(self.flow.rows)
        return self.cost_matrix[torch.as_tensor(self.sel, device=self.cost_matrix.device)].double()

    def certify(self, colmin: np.ndarray) -> bool:
        """Whether the dual bound (``f`` and the c-transform ``colmin``) proves the plan optimal."""
        if self.flow is None or self.simplex:
            return True
        return dual_gap(self.flow, colmin) <= _CERTIFY_TOL

    def resolve(self) -> None:
        """A network simplex on the current selection, warm-started from the current duals."""
        self._load(self.sel, solve_exact(self.cost_matrix, self.sel, init=(self.f, self.g)))

    def trial(
        self, pos: int, row: int, f0: np.ndarray
    ) -> tuple[float, tuple[np.ndarray, SwapResult | ExactSolution]]:
        """The exact POO with member ``pos`` replaced by ``row`` (and what :meth:`accept` needs)."""
        trial_sel = self.sel.copy()
        trial_sel[pos] = row
        if self.flow is not None:
            result = swap(self.flow, pos, _rows_float64(self.cost_matrix, [row])[0])
            return result.poo, (trial_sel, result)
        sol = solve_exact(self.cost_matrix, trial_sel, init=(f0, self.sol.g))
        return sol.cost, (trial_sel, sol)

    def accept(self, token: tuple[np.ndarray, SwapResult | ExactSolution]) -> None:
        trial_sel, state = token
        self.sel = trial_sel
        if isinstance(state, SwapResult):
            assert self.flow is not None
            self.flow.apply(state)
            self.poo = state.poo
            self.simplex = False
        else:
            self._load(trial_sel, state)


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
    cur = _Current(cost, sel, solve_exact(cost, sel))
    insertion = _LazyInsertion(cost, k)
    trace = [cur.poo]
    n_exact, n_screened, swaps, n_resolved = 1, 0, 0, 0
    bar = tqdm(total=max_swaps, desc="swaps", unit="swap", disable=not progress)
    try:
        # k == 1: POO of one row is its mean cost and the greedy's first pick minimises it already.
        while swaps < max_swaps and 1 < k < cost.shape[0]:
            sel_t = torch.as_tensor(cur.sel, device=dev)
            f = torch.as_tensor(cur.f, device=dev)
            g = torch.as_tensor(cur.g, device=dev)
            red = cur.members().to(dev) - f[:, None]  # (k, m) reduced costs of the members
            two = torch.topk(red, 2, dim=0, largest=False)
            best1, best2, owner = two.values[0], two.values[1], two.indices[0]
            if not cur.certify(best1.cpu().numpy()):
                # Rounding in the updated duals: the plan is still feasible (its POO an upper bound),
                # but only a network simplex can vouch for the duals the scores below rely on.
                n_resolved += 1
                n_exact += 1
                cur.resolve()
                continue
            # True leave-one-out: without member r, the columns it owns fall back to their second best.
            loss = torch.zeros(k, dtype=torch.float64, device=dev)
            loss.index_add_(0, owner, best2 - best1)
            removal = -f / k + loss / m
            c = min(candidates, k, cost.shape[0] - k)
            out_idx = insertion.smallest(g, sel_t, c)
            in_pos = torch.topk(removal, min(candidates, k), largest=False).indices
            # Pair lower bounds: f on S - r, the best phi for o, the c-transform on the columns.
            best_loo = best1[None, :].expand(in_pos.numel(), m).clone()
            mask = owner[None, :] == in_pos[:, None]
            best_loo[mask] = best2[None, :].expand_as(best_loo)[mask]
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
            plan_r = torch.as_tensor(cur.plan_rows(in_pos.cpu().numpy()), device=dev)  # (c_in, m)
            upper = cur.poo + plan_r @ c_out.T - (plan_r * red[in_pos] + plan_r * f[in_pos, None]).sum(1, keepdim=True)
            flat = bounds.flatten()
            key = (RANK_MIX * flat + (1 - RANK_MIX) * upper.flatten())
            order = torch.argsort(key)
            eligible = order[flat[order] < cur.poo - _IMPROVE_TOL][:screen]
            if eligible.numel() == 0:
                log.info("no candidate swap can lower POO (all lower bounds >= %.6g); stopping", cur.poo)
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
                a, o = pairs[b]
                pos, row = int(in_pos[a]), int(out_idx[o])
                value, token = cur.trial(pos, row, f0[b].cpu().numpy())
                n_exact += 1
                if value < cur.poo - _IMPROVE_TOL:
                    log.debug("swap %d: out %d in %d, POO %.6g -> %.6g", swaps + 1, int(cur.sel[pos]), row, cur.poo, value)
                    cur.accept(token)
                    accepted = True
                    break
            if not accepted:
                log.info("none of the %d best candidate swaps lowers the exact POO; stopping", confirm)
                break
            swaps += 1
            trace.append(cur.poo)
            bar.update(1)
            bar.set_postfix(poo=f"{cur.poo:.5g}")
            if on_swap is not None:
                on_swap(swaps, cur.poo)
    finally:
        bar.close()
    if swaps and cur.flow is not None:
        # The reported POO comes from the network simplex, always: one solve on the final selection.
        final = solve_exact(cost, cur.sel, init=(cur.f, cur.g))
        n_exact += 1
        if abs(final.cost - cur.poo) > _CERTIFY_TOL:
            log.warning("incremental POO %.12g differs from the network simplex's %.12g", cur.poo, final.cost)
        trace[-1] = final.cost
    log.debug(
        "refinement: %d swaps, %d exact solves (%d network-simplex re-solves), %d insertion rescorings",
        swaps, n_exact, n_resolved, insertion.rescored,
    )
    return RefineStats(
        indices=cur.sel, trace=tuple(trace), swaps=swaps, exact_solves=n_exact, screened=n_screened
    )
