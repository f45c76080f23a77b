"""The torch Sinkhorn backend: log-domain iterates, CPU and GPU, float32 and float64 (issue 5).

Two ways to run the same iterates (both are POT's ``sinkhorn_log`` order: update ``g`` from ``f``,
then ``f`` from ``g``; potentials in POT's convention ``P = exp((f_i + g_j - C_ij) / eps)``):

* ``"scaling"`` (default when one extra ``(n, m)`` buffer fits): stabilised scaling with absorption
  (Schmitzer 2019). The potentials are kept as ``f = alpha + eps log u`` and ``g = beta + eps log v``
  with a stored kernel ``K = exp((alpha_i + beta_j - C_ij) / eps)``; a half-iteration is then one
  matrix-vector product (``v = b / K^T u``), which runs at memory bandwidth, and is *exactly* the
  log-domain update in exact arithmetic. When a scaling leaves a safe range, or a product underflows,
  the scalings are absorbed into ``alpha``/``beta`` and the kernel is rebuilt with an exact
  log-sum-exp pass, so small eps never under- or overflows.
* ``"log"``: plain log-sum-exp half-iterations over row chunks with an online max, no ``(n, m)``
  buffer; used for point clouds whose cost matrix does not fit, and as a fallback.

The column marginal of the current iterate falls out of the next ``g`` update for free, so the
tolerance check costs no extra pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from genrec_otcoreset._sinkhorn import SinkhornResult

logger = logging.getLogger(__name__)

__all__ = ["TorchBackend"]

# Scalings u, v stay within exp(+-_TAU) of the absorbed potentials, and a matrix-vector product must
# exceed _TINY * max(scaling) so entries of K that underflowed cannot matter; otherwise we absorb.
_TAU = {"torch.float32": 40.0, "torch.float64": 300.0}
_TINY = {"torch.float32": 1e-20, "torch.float64": 1e-200}
_CHUNK_BYTES = 1 << 20  # row chunks of ~1 MiB stay in L2 while they are reduced

ChunkFn = Callable[[int, int], "torch.Tensor"]


@dataclass(frozen=True, kw_only=True)
class _Solved:
    f: torch.Tensor
    g: torch.Tensor
    n_iter: int
    cost: torch.Tensor
    objective: torch.Tensor
    marginal_error: torch.Tensor


def _rows_per_chunk(m: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, m * itemsize))


def _objective(
    f: torch.Tensor, g: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor, c: torch.Tensor, eps: float
) -> torch.Tensor:
    # <P,C> + eps KL(P | a x b) with P = exp((f+g-C)/eps): eps sum P log P = <f,r> + <g,c> - <P,C>.
    total = float(a.sum()) * float(b.sum())
    return (
        torch_dot(f - eps * a.log(), r) + torch_dot(g - eps * b.log(), c) + eps * (total - r.sum())
    )


def torch_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum()


def _scaling_solve(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    f0: torch.Tensor | None,
    g0: torch.Tensor | None,
    max_iter: int,
    tol: float,
    K: torch.Tensor,
    chunk_bytes: int,
) -> _Solved:
    """Stabilised scaling iterations on a stored cost ``C``; ``K`` is a scratch buffer like ``C``."""
    import torch

    n, m = C.shape
    inv = 1.0 / eps
    key = str(C.dtype)
    tau, tiny = _TAU[key], _TINY[key]
    lo, hi = math.exp(-tau), math.exp(tau)

    def rebuild_cols(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # K_ij = exp((f_i - C_ij - cmax_j)/eps): the exact log-domain g update, max-stabilised per
        # column (every column keeps an entry 1, so K^T u cannot underflow). Five passes over K.
        torch.sub(f.unsqueeze(1), C, out=K)
        cmax = K.amax(0).mul_(inv)
        torch.add(cmax.neg().unsqueeze(0), K, alpha=inv, out=K)
        K.exp_()
        return K.sum(0), cmax

    def rebuild_rows(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.sub(g.unsqueeze(0), C, out=K)
        rmax = K.amax(1, keepdim=True).mul_(inv)
        torch.add(rmax.neg(), K, alpha=inv, out=K)
        K.exp_()
        return K.sum(1), rmax.squeeze(1)

    def span(x: torch.Tensor) -> tuple[float, float]:
        lo_, hi_ = torch.aminmax(x)
        return float(lo_), float(hi_)

    # A half-iteration's scaling is accepted when it stays within exp(+-tau) and the products it
    # came from cannot be dominated by entries of K that underflowed: s_j = b_j / v_j >= bmin / vmax
    # must exceed tiny * max(u). Range checks use one aminmax per half-iteration (NaN fails them).
    amin, bmin = float(a.amin()), float(b.amin())
    ones_n = torch.ones(n, dtype=C.dtype, device=C.device)
    ones_m = torch.ones(m, dtype=C.dtype, device=C.device)
    u, v = ones_n, ones_m
    umax = vmax = 1.0
    if g0 is not None:
        # Warm start from g alone: the first half-iteration is f's exact update from g0.
        rowsum, rmax = rebuild_rows(g0)
        alpha, beta = -eps * rmax, g0.clone()
        u = a / rowsum
        umax = span(u)[1]
        valid = True
    else:
        alpha = f0.clone() if f0 is not None else torch.zeros(n, dtype=C.dtype, device=C.device)
        beta = torch.zeros(m, dtype=C.dtype, device=C.device)
        valid = False
    check = tol > 0
    n_iter = 0
    rebuilds = 0  # absorptions: each costs one exp pass, so they are logged for tuning tau/tiny
    for it in range(max_iter):
        # --- g half: v = b / K^T u
        good = False
        if valid:
            s = torch.mv(K.t(), u)
            # column marginal of the current iterate is v * s: the stopping test is free
            if check and (it > 0 or g0 is not None) and float(torch.dist(v * s, b, 1)) < tol:
                break
            v_new = b / s
            vmin, vmax = span(v_new)
            good = vmin > lo and vmax < hi and bmin > tiny * umax * vmax
        if not good:
            fcur = alpha + eps * u.log()
            gcur = beta + eps * v.log()
            colsum, cmax = rebuild_cols(fcur)
            rebuilds += 1
            converged = (
                valid and check and (it > 0 or g0 is not None)
                and float(torch.dist(torch.exp(gcur * inv + cmax) * colsum, b, 1)) < tol
            )
            if converged:
                # The state before this half-iteration had converged: keep it, with K its plan.
                torch.sub(fcur.unsqueeze(1), C, out=K)
                K.add_(gcur).mul_(inv).exp_()
                alpha, beta, u, v = fcur, gcur, ones_n, ones_m
                break
            alpha, beta, u, umax = fcur, -eps * cmax, ones_n, 1.0
            v_new = b / colsum
            vmax = span(v_new)[1]
            valid = True
        v = v_new
        # --- f half: u = a / K v
        r = torch.mv(K, v)
        u_new = a / r
        umin, umax = span(u_new)
        if not (umin > lo and umax < hi and amin > tiny * vmax * umax):
            gcur = beta + eps * v.log()
            rowsum, rmax = rebuild_rows(gcur)
            rebuilds += 1
            alpha, beta, v, vmax = -eps * rmax, gcur, ones_m, 1.0
            u_new = a / rowsum
            umax = span(u_new)[1]
        u = u_new
        n_iter = it + 1

    logger.debug("scaling Sinkhorn %dx%d eps=%g: %d iterations, %d kernel rebuilds", n, m, eps, n_iter, rebuilds)
    f = alpha + eps * u.log()
    g = beta + eps * v.log()
    # Final pass over K (and C for the cost), chunked so the product K*C never exists in full.
    r = u * torch.mv(K, v)
    c = v * torch.mv(K.t(), u)
    step = _rows_per_chunk(m, C.element_size(), chunk_bytes)
    cost = torch.zeros((), dtype=C.dtype, device=C.device)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        cost += torch_dot(u[i0:i1], torch.mv(K[i0:i1] * C[i0:i1], v))
    err_total = torch.maximum((r - a).abs().sum(), (c - b).abs().sum())
    return _Solved(
        f=f, g=g, n_iter=n_iter, cost=cost, objective=_objective(f, g, a, b, r, c, eps), marginal_error=err_total
    )


def _log_solve(
    chunk: ChunkFn,
    n: int,
    m: int,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    f0: torch.Tensor | None,
    g0: torch.Tensor | None,
    max_iter: int,
    tol: float,
    chunk_bytes: int,
) -> _Solved:
    """Log-sum-exp iterations over row chunks of a cost given by ``chunk(i0, i1)``; no (n, m) buffer."""
    import torch

    dtype, device = a.dtype, a.device
    inv = 1.0 / eps
    loga, logb = a.log(), b.log()
    step = _rows_per_chunk(m, a.element_size(), chunk_bytes)
    buf = torch.empty((min(step, n), m), dtype=dtype, device=device)

    def col_lse(f: torch.Tensor) -> torch.Tensor:
        cmax = torch.full((m,), -math.inf, dtype=dtype, device=device)
        csum = torch.zeros(m, dtype=dtype, device=device)
        for i0 in range(0, n, step):
            i1 = min(n, i0 + step)
            t = buf[: i1 - i0]
            torch.sub(f[i0:i1].unsqueeze(1), chunk(i0, i1), out=t)
            t.mul_(inv)
            new = torch.maximum(cmax, t.amax(0))
            csum.mul_(torch.exp(cmax - new))
            t.sub_(new)
            t.exp_()
            csum += t.sum(0)
            cmax = new
        return cmax + csum.log()

    def row_lse(g: torch.Tensor) -> torch.Tensor:
        out = torch.empty(n, dtype=dtype, device=device)
        for i0 in range(0, n, step):
            i1 = min(n, i0 + step)
            t = buf[: i1 - i0]
            torch.sub(g.unsqueeze(0), chunk(i0, i1), out=t)
            t.mul_(inv)
            out[i0:i1] = torch.logsumexp(t, 1)
        return out

    if g0 is not None:
        g = g0.clone()
        f = eps * (loga - row_lse(g))
        warm = True
    else:
        f = f0.clone() if f0 is not None else torch.zeros(n, dtype=dtype, device=device)
        g = torch.zeros(m, dtype=dtype, device=device)
        warm = False
    check = tol > 0
    n_iter = 0
    for it in range(max_iter):
        lse = col_lse(f)
        if check and (it > 0 or warm):
            err = float((torch.exp(g * inv + lse) - b).abs().sum())
            if err < tol:
                break
        g = eps * (logb - lse)
        f = eps * (loga - row_lse(g))
        n_iter = it + 1

    r = torch.zeros(n, dtype=dtype, device=device)
    c = torch.zeros(m, dtype=dtype, device=device)
    cost = torch.zeros((), dtype=dtype, device=device)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        t = buf[: i1 - i0]
        cc = chunk(i0, i1)
        torch.sub((f[i0:i1].unsqueeze(1) + g.unsqueeze(0)), cc, out=t)
        t.mul_(inv).exp_()
        r[i0:i1] = t.sum(1)
        c += t.sum(0)
        cost += torch_dot(t, cc)
    err_total = torch.maximum((r - a).abs().sum(), (c - b).abs().sum())
    return _Solved(
        f=f, g=g, n_iter=n_iter, cost=cost, objective=_objective(f, g, a, b, r, c, eps), marginal_error=err_total
    )


def point_chunks(x: torch.Tensor, y: torch.Tensor, metric: str, m: int, chunk_bytes: int) -> ChunkFn:
    """``chunk(i0, i1)``: rows ``i0:i1`` of the pairwise cost between ``x`` and ``y``, computed on the fly."""
    import torch

    xx = (x * x).sum(1)
    yy = (y * y).sum(1)
    yt = y.t().contiguous()
    step = _rows_per_chunk(m, x.element_size(), chunk_bytes)
    out = torch.empty((min(step, x.shape[0]), m), dtype=x.dtype, device=x.device)

    def chunk(i0: int, i1: int) -> torch.Tensor:
        t = out[: i1 - i0] if i1 - i0 <= out.shape[0] else torch.empty((i1 - i0, m), dtype=x.dtype, device=x.device)
        torch.mm(x[i0:i1], yt, out=t)
        t.mul_(-2.0).add_(xx[i0:i1].unsqueeze(1)).add_(yy.unsqueeze(0)).clamp_min_(0.0)
        if metric == "euclidean":
            t.sqrt_()
        return t

    return chunk


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """The full ``(n, m)`` cost between point clouds (squared Euclidean or Euclidean)."""
    chunk = point_chunks(x, y, metric, y.shape[0], x.shape[0] * y.shape[0] * x.element_size() + 1)
    return chunk(0, x.shape[0]).clone()


class TorchBackend:
    """The reference backend: torch on any device, float32 or float64.

    ``method``: ``"scaling"`` (stabilised scaling with absorption; one extra ``(n, m)`` buffer, each
    half-iteration a matrix-vector product), ``"log"`` (chunked log-sum-exp, no ``(n, m)`` buffer),
    or ``"auto"``: scaling when the buffer needs at most ``max_buffer_bytes``. ``chunk_bytes`` bounds
    the row chunks of the log path and of the final pass.
    """

    name = "torch"

    def __init__(
        self,
        *,
        method: Literal["auto", "scaling", "log"] = "auto",
        max_buffer_bytes: int = 4 << 30,
        chunk_bytes: int = _CHUNK_BYTES,
    ) -> None:
        from genrec_otcoreset._errors import OtCoresetError

        if method not in ("auto", "scaling", "log"):
            raise OtCoresetError(f"method must be 'auto', 'scaling' or 'log', got {method!r}")
        self.method = method
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.chunk_bytes = int(chunk_bytes)

    def __repr__(self) -> str:
        return f"TorchBackend(method={self.method!r})"

    def _use_scaling(self, n: int, m: int, itemsize: int) -> bool:
        if self.method == "auto":
            return n * m * itemsize <= self.max_buffer_bytes
        return self.method == "scaling"

    def _result(self, s: _Solved, eps: float) -> SinkhornResult:
        from genrec_otcoreset._sinkhorn import SinkhornResult

        return SinkhornResult(
            f=s.f, g=s.g, cost=s.cost, objective=s.objective, n_iter=s.n_iter,
            marginal_error=s.marginal_error, eps=eps, backend=self.name,
        )

    def _solve_one(
        self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, max_iter: int, tol: float,
        f0: torch.Tensor | None, g0: torch.Tensor | None, K: torch.Tensor | None,
    ) -> _Solved:
        n, m = cost.shape
        if K is not None:
            return _scaling_solve(cost, a, b, eps, f0, g0, max_iter, tol, K, self.chunk_bytes)
        return _log_solve(lambda i0, i1: cost[i0:i1], n, m, a, b, eps, f0, g0, max_iter, tol, self.chunk_bytes)

    def solve(
        self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float, max_iter: int, tol: float,
        f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
    ) -> SinkhornResult:
        import torch

        n, m = cost.shape
        K = torch.empty_like(cost) if self._use_scaling(n, m, cost.element_size()) else None
        return self._result(self._solve_one(cost, a, b, eps, max_iter, tol, f0, g0, K), eps)

    def solve_points(
        self, x: torch.Tensor, y: torch.Tensor, metric: str, a: torch.Tensor, b: torch.Tensor, *, eps: float,
        max_iter: int, tol: float, f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
    ) -> SinkhornResult:
        """Point clouds whose cost matrix is computed chunk by chunk on every pass (never stored)."""
        n, m = x.shape[0], y.shape[0]
        chunk = point_chunks(x, y, metric, m, self.chunk_bytes)
        s = _log_solve(chunk, n, m, a, b, eps, f0, g0, max_iter, tol, self.chunk_bytes)
        return self._result(s, eps)

    def solve_gathered(
        self, cost: torch.Tensor, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float,
        max_iter: int, tol: float, f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
    ) -> SinkhornResult:
        """``B`` problems, each on rows ``rows[i]`` of ``cost``, solved one after another.

        One ``(k, m)`` gather buffer (and one kernel buffer) is reused for every problem, so memory
        stays at two sub-matrices however large ``B`` is.
        """
        import torch

        B, k = rows.shape
        m = cost.shape[1]
        sub = torch.empty((k, m), dtype=cost.dtype, device=cost.device)
        K = torch.empty_like(sub) if self._use_scaling(k, m, cost.element_size()) else None
        outs = []
        for i in range(B):
            torch.index_select(cost, 0, rows[i], out=sub)
            outs.append(
                self._solve_one(
                    sub, a[i], b, eps, max_iter, tol,
                    None if f0 is None else f0[i], None if g0 is None else g0[i], K,
                )
            )
        from genrec_otcoreset._sinkhorn import SinkhornResult

        return SinkhornResult(
            f=torch.stack([o.f for o in outs]),
            g=torch.stack([o.g for o in outs]),
            cost=torch.stack([o.cost for o in outs]),
            objective=torch.stack([o.objective for o in outs]),
            n_iter=max(o.n_iter for o in outs),
            marginal_error=torch.stack([o.marginal_error for o in outs]),
            eps=eps,
            backend=self.name,
        )
