"""``method="goracs"``: the selection procedure of the GORACS release, decision for decision.

Written from the behaviour of the authors' ``codes/select/ITRA.py`` (KDD 2025) as
``select_seqrec.py`` (Algorithm 1) and ``select_ctrpre.py`` (Algorithm 2, label-enhanced) run it, so
that the same embeddings, gradient norms and settings select the same rows in the same order:

- cost: ``torch.cdist`` distances over the whole pool, gradient norms divided by their global maximum;
  Algorithm 1 divides the distances by their maximum, Algorithm 2 keeps them raw and cuts one block
  per label; then ``dist - lam * g`` is min-max scaled (per block). float32 throughout, as the
  release's saved tensors are.
- greedy: facility location recomputed over the whole matrix at every step (first pick: the smallest
  row sum), continuing past the budget until ``budget`` members own a validation point when the pool
  has more owners than the budget, then dropping the members that own none.
- pruning: from the duals of the current selection's EMD, the Eq. 16 estimate per row with the
  release's leave-one-out as it actually runs (its mask is written into a copy, so every row is
  scored against the plain column minimum), and the ulp the in-place ``sub_``/``add_`` pair leaves
  on the members' rows; the ``cut_num`` lowest-scored outsiders and highest-scored members.
- refinement: trials in ``itertools.product(members, outsiders)`` order, each the release's
  from-scratch ``ot.emd2`` (300,000 iterations); the first strictly lower POO is accepted (the member
  removed, the outsider appended) and the candidates rescored; stop after ``max_iters`` accepted swaps
  or a full pass without one.
- label-enhanced: the positive block first with ``round(share * n)`` records (``share`` the float32
  validation frequency, Python's rounding), the other block the rest; the result is the blocks'
  selections concatenated.

``exact_shortcuts`` (default on) reaches the same decisions without most EMDs: a trial proven worse
than the current POO, by a dual lower bound or by its exact POO from successive shortest paths
(certified by its own dual bound), cannot be accepted by the release's strict test, so it is skipped;
every other trial, and so every accepted swap and every dual the pruning sees, runs the release's EMD.

Departures, where the release cannot run or would be wrong: the EMD is rerun with 10,000,000
iterations when 300,000 do not converge (the release keeps the non-optimal value); a constant cost (or
an all-zero distance or gradient maximum) gives zeros instead of NaN; labels may be any number of
classes (blocks in descending label order, the last one taking the rest of the budget); a training
label with no validation record is left out (the release would fail on an empty block).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from genrec_otcoreset._cost import chunk_rows, import_ot
from genrec_otcoreset._errors import OtCoresetError

if TYPE_CHECKING:
    from genrec_otcoreset._ssp import FlowState

__all__ = [
    "GoracsRun",
    "goracs_budgets",
    "goracs_cost",
    "goracs_greedy",
    "goracs_label_costs",
    "goracs_pruning",
    "goracs_refine",
]

# The release's network-simplex cap, and ours when that cap is hit before optimality.
EMD_ITER = 300_000
EMD_ITER_RETRY = 10_000_000
# A trial is skipped only when a certified lower bound exceeds the current POO by more than this
# (float64 sums of POOs ~0.1-1 are good to ~1e-15); closer ones are left to the release's EMD.
PROOF_MARGIN = 1e-10


def _distances(embeddings: np.ndarray, val_embeddings: np.ndarray) -> Any:
    import torch

    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    y = torch.as_tensor(np.asarray(val_embeddings, dtype=np.float32))
    return torch.cdist(x, y, p=2)


def _scaled_grads(grad_norms: np.ndarray) -> Any:
    import torch

    g = torch.as_tensor(np.asarray(grad_norms, dtype=np.float32))
    top = g.max()
    return g / top if float(top) > 0 else torch.zeros_like(g)


def _min_max(dist: Any, grads: Any, lam: float) -> np.ndarray:
    cost = (dist - lam * grads[:, None]).numpy()
    lo, hi = cost.min(), cost.max()
    if hi == lo:
        return np.zeros_like(cost)
    return (cost - lo) / (hi - lo)


def goracs_cost(embeddings: np.ndarray, grad_norms: np.ndarray, val_embeddings: np.ndarray, lam: float) -> np.ndarray:
    """Algorithm 1's float32 cost: ``d / max d - lam * g / max g``, min-max scaled."""
    dist = _distances(embeddings, val_embeddings)
    top = dist.max()
    if float(top) > 0:
        dist /= top
    return _min_max(dist, _scaled_grads(grad_norms), lam)


def goracs_budgets(val_labels: np.ndarray, budget: int) -> list[tuple[Any, int]]:
    """Algorithm 2's split: blocks in descending label order (so 1 before 0, as the release takes
    positives first), each but the last ``round(share * budget)`` with ``share`` the float32
    validation frequency; the last takes what is left."""
    values, counts = np.unique(val_labels, return_counts=True)
    m = np.float32(len(val_labels))
    out: list[tuple[Any, int]] = []
    left = budget
    for value, count in list(zip(values, counts))[::-1][:-1]:
        share = float(np.float32(count) / m)
        n = round(share * budget)
        out.append((value.item() if hasattr(value, "item") else value, n))
        left -= n
    last = values[0]
    if left < 0:
        raise OtCoresetError(
            f"budget {budget} is too small for the goracs label split: rounding the shares of "
            f"{len(values)} labels leaves {left} records for label {last!r}"
        )
    out.append((last.item() if hasattr(last, "item") else last, left))
    return out


def goracs_label_costs(
    embeddings: np.ndarray,
    grad_norms: np.ndarray,
    val_embeddings: np.ndarray,
    labels: np.ndarray,
    val_labels: np.ndarray,
    blocks: list[tuple[Any, int]],
    lam: float,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Algorithm 2's per-label costs ``(rows, val_rows, cost)``: raw distances cut from the whole
    pool's, gradient norms over their global maximum, min-max scaled within the block."""
    dist = _distances(embeddings, val_embeddings)
    grads = _scaled_grads(grad_norms)
    out = []
    for value, _ in blocks:
        rows = np.flatnonzero(labels == value)
        vrows = np.flatnonzero(val_labels == value)
        block = dist[rows][:, vrows]
        out.append((rows, vrows, _min_max(block, grads[rows], lam)))
    return out


def goracs_greedy(cost: np.ndarray, n: int, device: Any = "cpu") -> list[int]:
    """The release's greedy initialisation, in its order (see the module docstring)."""
    import torch

    big, m = cost.shape
    t = torch.from_numpy(cost).to(device)
    first = int(cost.sum(axis=1).argmin())
    sel = [first]
    taken = torch.zeros(big, dtype=torch.bool, device=t.device)
    taken[first] = True
    col_min = t[first].clone()
    row_sum = t.sum(dim=1)
    # More owners over the whole pool than the budget: the release then grows until ``n`` members own
    # a column and drops the rest; otherwise it stops at ``n`` members as they are.
    owner_filter = torch.unique(t.argmin(dim=0)).numel() > n
    step = chunk_rows(m)
    gain = torch.empty(big, dtype=t.dtype, device=t.device)
    while True:
        if len(sel) >= n:
            owning = torch.unique(t[sel].argmin(dim=0)).tolist()
            if len(owning) >= n or not owner_filter:
                if owner_filter:
                    keep = set(owning)
                    sel = [s for p, s in enumerate(sel) if p in keep]
                return sel
        # sum_j C_ij - |min_S C_.j - C_ij|: the release's rewriting of the Eq. 14 gain, lowest wins.
        for lo in range(0, big, step):
            hi = min(big, lo + step)
            gain[lo:hi] = row_sum[lo:hi] - (col_min - t[lo:hi]).abs().sum(dim=1)
        gain[taken] = math.inf
        e = int(gain.argmin())
        sel.append(e)
        taken[e] = True
        col_min = torch.minimum(col_min, t[e])


def goracs_pruning(
    cost: np.ndarray, sel: list[int], x_star: np.ndarray, cut_num: int, device: Any = "cpu"
) -> tuple[list[int], list[int]]:
    """The members and outsiders the release keeps for its next pass, in its trial order."""
    import torch

    big, m = cost.shape
    k = len(sel)
    r = math.ceil(m / k)
    t = torch.from_numpy(cost)
    xs = torch.from_numpy(np.asarray(x_star, dtype=np.float64))
    idx = torch.as_tensor(sel)
    # The release subtracts the float64 duals from its float32 copy in place (computed in float64,
    # stored in float32), takes the column minimum over the members there, and adds the duals back:
    # the members' rows can end an ulp away from the cost, and the scores below see that.
    col_min = (t[idx].double() - xs[idx, None]).float().min(dim=0).values.to(device)
    scores = torch.empty(big, dtype=torch.float32)
    step = chunk_rows(m, 8)
    for lo in range(0, big, step):
        hi = min(big, lo + step)
        x = xs[lo:hi, None]
        back = ((t[lo:hi].double() - x).float().double() + x).float().to(device)
        y_hat = (back - col_min).topk(r, dim=1).values[:, -1]
        part = ((back - y_hat[:, None]) - col_min).clamp(max=0).mean(dim=1) + y_hat / k
        scores[lo:hi] = part.cpu()
    members = np.asarray(sel)
    outsiders = np.setdiff1d(np.arange(big), members)
    outer = outsiders[torch.argsort(scores[outsiders], stable=True)[:cut_num].numpy()]
    inner = members[torch.argsort(scores[members], stable=True)[-cut_num:].numpy()]
    return [int(i) for i in inner], [int(o) for o in outer]


def _emd(cost: np.ndarray, sel: list[int], *, plan: bool) -> tuple[float, dict]:
    ot = import_ot()
    sub = cost[sel]
    k, m = sub.shape
    a, b = np.ones(k) / k, np.ones(m) / m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns when the cap is hit; the log says so too
        value, info = ot.emd2(a, b, sub, numItermax=EMD_ITER, log=True, return_matrix=plan)
        if info.get("warning"):
            value, info = ot.emd2(a, b, sub, numItermax=EMD_ITER_RETRY, log=True, return_matrix=plan)
    return float(value), info


class _Judge:
    """Proves trials worse than the current selection without the release's from-scratch EMD.

    Loaded with the current selection's optimal plan and duals (from the release's own EMD). For a
    trial (member ``i`` out, outsider ``o`` in): first a feasible dual of the trial (the other members'
    potentials kept, ``o`` given its best potential, the columns their c-transform over the trial
    rows, ``o`` once more), whose objective bounds the trial's POO from below; then, if that is not
    enough, the trial's optimum by successive shortest paths from the current plan, judged by the dual
    bound of its potentials with the c-transform on the columns (a true lower bound whatever rounding
    did). A bound above the current POO by ``PROOF_MARGIN`` means the release's EMD would not be below
    it either, so the trial cannot be accepted.
    """

    def __init__(self, cost: np.ndarray) -> None:
        self.cost = cost
        self.stats = {"bound_rejected": 0, "paths_rejected": 0, "emd_trials": 0}
        self.flow: FlowState | None = None

    def load(self, sel: list[int], info: dict) -> None:
        from genrec_otcoreset._ssp import from_plan

        rows = np.asarray(self.cost[sel], dtype=np.float64)
        self.u = np.asarray(info["u"], dtype=np.float64)
        self.v = np.asarray(info["v"], dtype=np.float64)
        self.flow = from_plan(rows, info["G"], self.u, self.v)
        # Not a whole-unit plan (never seen from POT): every trial of this round runs its EMD.
        if self.flow is None:
            return
        self.pos = {s: p for p, s in enumerate(sel)}
        reduced = rows - self.u[:, None]
        cols = np.arange(rows.shape[1])
        self.best = reduced.argmin(axis=0)
        self.first = reduced[self.best, cols]
        reduced[self.best, cols] = np.inf
        self.second = reduced.min(axis=0)
        self.u_sum = float(self.u.sum())
        self.k, self.m = rows.shape

    def lower_bound(self, i: int, o: int) -> float:
        p = self.pos[i]
        row = np.asarray(self.cost[o], dtype=np.float64)
        others = np.where(self.best == p, self.second, self.first)
        phi = float((row - self.v).min())
        cols = np.minimum(others, row - phi)
        phi = float((row - cols).min())
        return (self.u_sum - self.u[p] + phi) / self.k + float(cols.sum()) / self.m

    def worse(self, i: int, o: int, value: float) -> bool:
        from genrec_otcoreset._ssp import swap

        flow = self.flow
        if flow is None:
            return False
        if self.lower_bound(i, o) > value + PROOF_MARGIN:
            self.stats["bound_rejected"] += 1
            return True
        p = self.pos[i]
        res = swap(flow, p, np.asarray(self.cost[o], dtype=np.float64))
        reduced = flow.rows - res.f[:, None]
        reduced[p] = res.row - res.f[p]
        certified = float(res.f.sum()) / self.k + float(reduced.min(axis=0).sum()) / self.m
        if certified > value + PROOF_MARGIN:
            self.stats["paths_rejected"] += 1
            return True
        self.stats["emd_trials"] += 1
        return False


@dataclass(kw_only=True)
class GoracsRun:
    """One refinement: the selection in the release's order, its POO after greedy and after each
    accepted swap, the EMDs the release runs (``release_emds``), and what was actually solved."""

    indices: list[int]
    trace: list[float]
    release_emds: int
    emds_run: int
    stats: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    @property
    def swaps(self) -> int:
        return len(self.trace) - 1

    @property
    def exact_solves(self) -> int:
        """Exact OT solves done: EMDs plus shortest-path solves."""
        return self.emds_run + self.stats.get("paths_rejected", 0) + self.stats.get("emd_trials", 0)


def goracs_refine(
    cost: np.ndarray,
    sel: list[int],
    *,
    max_iters: int = 100,
    cut_num: int = 30,
    exact_shortcuts: bool = True,
    device: Any = "cpu",
    deadline: float | None = None,
    progress: Callable[[dict], None] | None = None,
) -> GoracsRun:
    """The release's swap stage from ``sel``.

    ``deadline`` (a ``time.perf_counter()`` value; not in the release) stops before the next trial
    once passed, for benchmark harnesses; ``progress`` gets a dict after each accepted swap, every 100
    trials and at the end.
    """
    t0 = time.perf_counter()
    sel = list(sel)
    value, info = _emd(cost, sel, plan=exact_shortcuts)
    judge = _Judge(cost) if exact_shortcuts else None
    if judge is not None:
        judge.load(sel, info)
    run = GoracsRun(indices=sel, trace=[value], release_emds=1, emds_run=1, stats=judge.stats if judge else {})

    def report(event: str) -> None:
        if progress is not None:
            progress({"event": event, "elapsed_s": time.perf_counter() - t0, "swaps": run.swaps, "poo": value,
                      "emds": run.release_emds, **run.stats})

    while run.swaps < max_iters:
        x_star = np.zeros(cost.shape[0])
        x_star[sel] = info["u"]
        inner, outer = goracs_pruning(cost, sel, x_star, cut_num, device)
        accepted = False
        for i, o in itertools.product(inner, outer):
            if deadline is not None and time.perf_counter() > deadline:
                run.stopped = True
                report("stopped")
                return run
            run.release_emds += 1
            if run.release_emds % 100 == 0:
                report("emds")
            if judge is not None and judge.worse(i, o, value):
                continue
            trial = [s for s in sel if s != i] + [o]
            trial_value, trial_info = _emd(cost, trial, plan=exact_shortcuts)
            run.emds_run += 1
            if trial_value < value:
                value, info = trial_value, trial_info
                sel.remove(i)
                sel.append(o)
                run.trace.append(value)
                if judge is not None:
                    judge.load(sel, info)
                report("swap")
                accepted = True
                break
        if not accepted:
            break
    report("done")
    return run
