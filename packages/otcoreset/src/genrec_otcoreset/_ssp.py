"""Exact OT after a one-row swap, by successive shortest paths from the previous optimum.

POO(S) is a transportation problem between ``k`` selected rows of mass ``1/k`` and ``m`` columns of
mass ``1/m``. Scaled by ``k m / G`` (``G = gcd(k, m)``) every row supplies ``s = m / G`` units and every
column demands ``d = k / G``; such a problem has an optimal plan in whole units, and the basic plans
of the network simplex are such plans.

Swapping member ``r`` for outsider ``o`` from an optimal plan and duals ``(f, g)``
(``C_ij - f_i - g_j >= 0``, equality where units flow):

1. drop ``r``'s units: the columns it served are short by what it sent them;
2. give ``o`` the potential ``f_o = min_j (C_oj - g_j)``, so that every reduced cost stays >= 0;
3. send ``o``'s ``s`` units to the short columns along shortest paths of the residual graph (forward
   arcs member -> column at reduced cost, backward arcs column -> member where units flow, at zero),
   found with Dijkstra, lowering the potentials by the distances after each path (successive
   shortest paths with potentials: Edmonds-Karp, Tomizawa).

Each augmentation keeps reduced-cost optimality, so the result is an optimal plan of the swapped
selection with its duals, at a fraction of a network simplex from scratch (which must read all
``k m`` costs just to start; POT's takes 0.2 s at 1,000 x 5,000 even when handed the optimal duals).
Rounding in the potentials cannot make a worse swap look better: the cost returned is that of a
feasible whole-unit plan, an upper bound on the swapped POO, and callers certify optimality with the
dual bound of :func:`dual_gap` before they trust the duals again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FlowState", "SwapResult", "dual_gap", "from_plan", "swap"]


@dataclass(frozen=True, kw_only=True)
class SwapResult:
    """The optimum after one swap, not yet applied to its :class:`FlowState`."""

    pos: int
    row: np.ndarray
    arcs: tuple[np.ndarray, np.ndarray, np.ndarray]
    f: np.ndarray
    g: np.ndarray
    total_cost: float
    poo: float


class FlowState:
    """An optimal whole-unit plan of a selection, its duals and the members' cost rows.

    ``rows`` is ``(k, m)`` float64 in selection order; the plan is kept sparse as arcs
    ``(column, member, units)`` (a basic plan has at most ``k + m - 1`` of them); ``f`` ``(k,)`` and
    ``g`` ``(m,)`` are the potentials; ``total_cost`` is ``sum units * C`` (POO times ``k s``).
    """

    def __init__(
        self, rows: np.ndarray, arcs: tuple[np.ndarray, np.ndarray, np.ndarray], f: np.ndarray, g: np.ndarray,
        supply: int, demand: int, total_cost: float,
    ) -> None:
        self.rows = rows
        self.arcs = arcs
        self.f = f
        self.g = g
        self.supply = supply
        self.demand = demand
        self.total_cost = total_cost

    @property
    def poo(self) -> float:
        return self.total_cost / (self.supply * self.rows.shape[0])

    def plan_rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows ``positions`` of the plan in masses, ``(len, m)`` float64 (each row sums to ``1/k``)."""
        k, m = self.rows.shape
        out = np.zeros((len(positions), m))
        col, member, units = self.arcs
        where = np.full(k, -1, dtype=np.int64)
        where[np.asarray(positions, dtype=np.int64)] = np.arange(len(positions))
        hit = where[member] >= 0
        out[where[member[hit]], col[hit]] = units[hit] / (self.supply * k)
        return out

    def apply(self, result: SwapResult) -> None:
        """Make ``result`` (from :func:`swap` on this state) the current optimum, in place."""
        self.rows[result.pos] = result.row
        self.arcs, self.f, self.g, self.total_cost = result.arcs, result.f, result.g, result.total_cost


def from_plan(rows: np.ndarray, plan: np.ndarray, f: np.ndarray, g: np.ndarray) -> FlowState | None:
    """The whole-unit form of an optimal plan between uniform masses (``None`` if it is not one)."""
    k, m = rows.shape
    gcd = math.gcd(k, m)
    supply, demand = m // gcd, k // gcd
    scale = k * supply
    plan = np.asarray(plan, dtype=np.float64)
    member, col = np.nonzero(plan > 0.5 / scale)
    units = np.rint(plan[member, col] * scale)
    if np.abs(units - plan[member, col] * scale).max(initial=0.0) > 1e-6 or np.abs(plan).sum() * scale - units.sum() > 1e-6:
        return None  # not a whole-unit plan
    units = units.astype(np.int64)
    if (np.bincount(member, units, minlength=k) != supply).any() or (np.bincount(col, units, minlength=m) != demand).any():
        return None
    rows64 = np.array(rows, dtype=np.float64)
    order = np.argsort(col, kind="stable")
    return FlowState(
        rows64, (col[order], member[order], units[order]), np.asarray(f, np.float64).copy(),
        np.asarray(g, np.float64).copy(), supply, demand, float(units @ rows64[member, col]),
    )


def dual_gap(state: FlowState, colmin: np.ndarray | None = None) -> float:
    """Primal POO minus the dual bound from ``f`` and the c-transform ``g_j = min_a C_aj - f_a``.

    The c-transform makes the dual feasible whatever rounding did to ``g``, so the bound is a true
    lower bound on the optimum: a gap at rounding level certifies the plan optimal. ``colmin`` may
    pass that c-transform when the caller has it already.
    """
    if colmin is None:
        colmin = (state.rows - state.f[:, None]).min(axis=0)
    k, m = state.rows.shape
    dual = state.f.sum() / k + colmin.sum() / m
    return state.poo - dual


def swap(state: FlowState, pos: int, new_row: np.ndarray) -> SwapResult:
    """The optimal plan and duals once member ``pos`` is replaced by a row of costs ``new_row``
    (``state`` is left as it was; :meth:`FlowState.apply` makes the result current)."""
    k, m = state.rows.shape
    new = np.asarray(new_row, dtype=np.float64)

    def row(a: int) -> np.ndarray:
        return new if a == pos else state.rows[a]

    f = state.f.copy()
    g = state.g.copy()
    f[pos] = float((new - g).min())
    # The arcs that carry units, both ways: who serves a column with how many units (Dijkstra's
    # backward arcs) and which columns a member serves. The leaving member's units become shortages.
    owners: list[dict[int, int]] = [{} for _ in range(m)]
    served: list[list[int]] = [[] for _ in range(k)]
    short = np.zeros(m, dtype=np.int64)
    total = state.total_cost
    old = state.rows[pos]
    for j, a, u in zip(*(x.tolist() for x in state.arcs)):
        if a == pos:
            short[j] += u
            total -= u * float(old[j])
        else:
            owners[j][a] = u
            served[a].append(j)
    n_owners = np.fromiter((len(o) for o in owners), dtype=np.int64, count=m)
    left = state.supply
    buf = np.empty(m)
    mask = np.empty(m, dtype=bool)
    while left > 0:
        target, depth, pred, dist_col, dist_row, via = _dijkstra(
            row, f, g, pos, short, owners, served, n_owners, buf, mask
        )
        # Walk back from the target: column <- member (forward arc) <- column (backward arc) ... <- pos.
        path: list[tuple[int, int]] = []
        delta = min(left, int(short[target]))
        col = target
        while True:
            a = int(pred[col])
            path.append((a, col))
            if a == pos:
                break
            col = via[a]
            delta = min(delta, owners[col][a])
        for a, col in path:
            if a not in owners[col]:
                owners[col][a] = 0
                served[a].append(col)
                n_owners[col] += 1
            owners[col][a] += delta
            total += delta * float(row(a)[col])
            if a != pos:
                back = via[a]
                owners[back][a] -= delta
                total -= delta * float(row(a)[back])
                if owners[back][a] == 0:
                    del owners[back][a]
                    served[a].remove(back)
                    n_owners[back] -= 1
        short[target] -= delta
        left -= delta
        # Potentials: what was settled before the target moves by how much closer it was.
        for a, da in dist_row.items():
            f[a] += depth - da
        settled = dist_col < depth
        g[settled] -= depth - dist_col[settled]
    cols, members, units = [], [], []
    for j, own in enumerate(owners):
        for a, u in own.items():
            cols.append(j)
            members.append(a)
            units.append(u)
    arcs = (np.array(cols, dtype=np.int64), np.array(members, dtype=np.int64), np.array(units, dtype=np.int64))
    return SwapResult(
        pos=pos, row=new, arcs=arcs, f=f, g=g, total_cost=total, poo=total / (state.supply * k)
    )


def _dijkstra(
    row: Callable[[int], np.ndarray],
    f: np.ndarray,
    g: np.ndarray,
    pos: int,
    short: np.ndarray,
    owners: list[dict[int, int]],
    served: list[list[int]],
    n_owners: np.ndarray,
    buf: np.ndarray,
    mask: np.ndarray,
) -> tuple[int, float, np.ndarray, np.ndarray, dict[int, float], dict[int, int]]:
    """The nearest short column from member ``pos`` in reduced costs: (column, distance, the member
    each column was reached from, column distances, member distances, the column each member was
    reached through)."""
    m = g.shape[0]
    dist_col = np.full(m, math.inf)
    # Only columns worth settling are: short ones, and ones that lead to a member not reached yet.
    # Any other column's distance is final already and settling it would add nothing, so the search
    # stays exact with about one step per member reached.
    frontier = np.full(m, math.inf)
    useful = (short > 0) | (n_owners > 0)
    pending = n_owners.copy()
    pred = np.full(m, -1, dtype=np.int64)
    dist_row: dict[int, float] = {}
    via: dict[int, int] = {}

    def reach(a: int, da: float, through: int) -> None:
        dist_row[a] = da
        via[a] = through
        for j in served[a]:
            pending[j] -= 1
            if pending[j] == 0 and short[j] <= 0:
                useful[j] = False
                frontier[j] = math.inf
        # Reduced costs of a's forward arcs, shifted by its distance. Rounding can leave one a few
        # ulps below zero (a's own arcs are zero in exact arithmetic): clamped, so that no column
        # settled before a gets a new predecessor (that could close a loop of arcs).
        red = np.subtract(row(a), g, out=buf)
        red += da - f[a]
        np.maximum(red, da, out=red)
        better = np.less(red, dist_col, out=mask)
        np.putmask(dist_col, better, red)
        np.putmask(pred, better, a)
        np.logical_and(better, useful, out=better)
        np.putmask(frontier, better, red)

    reach(pos, 0.0, -1)
    while True:
        j = int(np.argmin(frontier))
        dj = float(frontier[j])
        if dj == math.inf:
            raise RuntimeError("successive shortest paths: no short column is reachable (corrupt plan)")
        frontier[j] = math.inf
        if short[j] > 0:
            return j, dj, pred, dist_col, dist_row, via
        for a in owners[j]:
            if a not in dist_row:
                reach(a, dj, j)
