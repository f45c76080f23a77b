"""The Triton Sinkhorn backend: fused log-domain half-iterations (issue 5).

Each half-iteration is one pass over the cost with an online max and log-sum-exp, with no
intermediate ``(n, m)`` tensor:

* ``_row_lse``: for a block of rows, ``LSE_j((g_j - C_ij) / eps)`` streaming over column tiles (the
  ``f`` update); optionally also the plan-weighted mean cost of each row (for ``<P, C>``).
* ``_col_lse``: for a block of columns and a segment of rows, the partial ``(max, sum)`` of
  ``(f_i - C_ij) / eps`` (the ``g`` update); segments are merged by a tiny torch reduction, so tall
  matrices still fill the GPU.

Both take an optional row-index table: a gathered batch reads rows ``rows[b, i]`` of the shared cost
in place (the batch is a grid axis), never copying the ``B`` sub-matrices. The kernels also run under
``TRITON_INTERPRET=1`` on CPU tensors, which is how CI tests them.

This module imports triton at import time; :mod:`genrec_otcoreset._sinkhorn` imports it only when
the triton backend is asked for. The kernels are jitted on first use, reading ``TRITON_INTERPRET``
then (not at import), so a test can switch the interpreter on before it calls the backend.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import triton
import triton.language as tl

from genrec_otcoreset._errors import OtCoresetError

if TYPE_CHECKING:
    import torch

    from genrec_otcoreset._sinkhorn import SinkhornResult

__all__ = ["TritonBackend", "interpret_enabled"]


def _row_lse(
    C, rows, g, out_lse, out_mean, k, m, stride_c, stride_g, inv_ptr,
    HAS_ROWS: tl.constexpr, WITH_COST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < k
    if HAS_ROWS:
        src = tl.load(rows + pid_b.to(tl.int64) * k + r, mask=rmask, other=0).to(tl.int64)
    else:
        src = r.to(tl.int64)
    row_ptr = C + src * stride_c
    g_ptr = g + pid_b.to(tl.int64) * stride_g
    # 1/eps is loaded from memory in the cost's dtype: a Python float argument would be float32.
    inv_eps = tl.load(inv_ptr)
    run_max = tl.full((BLOCK_R,), float("-inf"), C.dtype.element_ty)
    run_sum = tl.zeros((BLOCK_R,), C.dtype.element_ty)
    run_cs = tl.zeros((BLOCK_R,), C.dtype.element_ty)
    for j0 in range(0, m, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        cmask = cols < m
        c = tl.load(row_ptr[:, None] + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        gv = tl.load(g_ptr + cols, mask=cmask, other=0.0)
        t = (gv[None, :] - c) * inv_eps
        t = tl.where(cmask[None, :], t, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(t, 1))
        scale = tl.exp(run_max - new_max)
        p = tl.exp(t - new_max[:, None])
        run_sum = run_sum * scale + tl.sum(p, 1)
        if WITH_COST:
            run_cs = run_cs * scale + tl.sum(p * c, 1)
        run_max = new_max
    tl.store(out_lse + pid_b.to(tl.int64) * k + r, run_max + tl.log(run_sum), mask=rmask)
    if WITH_COST:
        tl.store(out_mean + pid_b.to(tl.int64) * k + r, run_cs / run_sum, mask=rmask)


def _col_lse(
    C, rows, f, part_max, part_sum, k, m, stride_c, stride_f, inv_ptr, rows_per_split, n_split,
    HAS_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < m
    f_ptr = f + pid_b.to(tl.int64) * stride_f
    r_lo = pid_s * rows_per_split
    r_hi = tl.minimum(r_lo + rows_per_split, k)
    inv_eps = tl.load(inv_ptr)
    run_max = tl.full((BLOCK_M,), float("-inf"), C.dtype.element_ty)
    run_sum = tl.zeros((BLOCK_M,), C.dtype.element_ty)
    for i0 in range(r_lo, r_hi, BLOCK_R):
        r = i0 + tl.arange(0, BLOCK_R)
        rmask = r < r_hi
        if HAS_ROWS:
            src = tl.load(rows + pid_b.to(tl.int64) * k + r, mask=rmask, other=0).to(tl.int64)
        else:
            src = r.to(tl.int64)
        c = tl.load(C + src[:, None] * stride_c + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        fv = tl.load(f_ptr + r, mask=rmask, other=0.0)
        t = (fv[:, None] - c) * inv_eps
        t = tl.where(rmask[:, None], t, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(t, 0))
        # a column block whose first tile is all masked cannot happen: the loop only runs over rows
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(t - new_max[None, :]), 0)
        run_max = new_max
    out = (pid_b.to(tl.int64) * n_split + pid_s) * m + cols
    tl.store(part_max + out, run_max, mask=cmask)
    tl.store(part_sum + out, run_sum, mask=cmask)


def interpret_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``) right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_KERNELS: dict[bool, SimpleNamespace] = {}


def _kernels() -> SimpleNamespace:
    # triton.jit decides interpreter-or-compiler when it wraps the function, so wrap per mode.
    mode = interpret_enabled()
    if mode not in _KERNELS:
        _KERNELS[mode] = SimpleNamespace(row_lse=triton.jit(_row_lse), col_lse=triton.jit(_col_lse))
    return _KERNELS[mode]


class _Launcher:
    """Launch geometry for one cost (possibly gathered): ``B`` problems of ``k`` rows and ``m`` columns."""

    def __init__(self, C: torch.Tensor, rows: torch.Tensor | None, B: int, k: int, eps: float) -> None:
        import torch

        self.C, self.rows, self.B, self.k = C, rows, B, k
        self.m = C.shape[1]
        self.inv = torch.full((1,), 1.0 / eps, dtype=C.dtype, device=C.device)
        interp = interpret_enabled()
        # Interpreter: each tile costs Python overhead, so few large tiles; GPU: tiles that keep the
        # loads coalesced along the contiguous column axis and the registers per thread bounded.
        self.row_block = (32, 128) if interp else (16, 256 if C.dtype == torch.float32 else 128)
        self.col_block = (64, 128) if interp else (64, 128 if C.dtype == torch.float32 else 64)
        n_col_blocks = triton.cdiv(self.m, self.col_block[1])
        # Enough programs to fill the GPU (a few waves); the interpreter only needs >1 to test splits.
        target = 4 if interp else 4 * _sm_count(C.device)
        want = max(1, math.ceil(target / max(1, n_col_blocks * B)))
        self.n_split = max(1, min(want, triton.cdiv(k, self.col_block[0])))
        rps = triton.cdiv(k, self.n_split)
        self.rows_per_split = triton.cdiv(rps, self.col_block[0]) * self.col_block[0]
        self.n_split = triton.cdiv(k, self.rows_per_split)
        self.part_max = torch.empty((B, self.n_split, self.m), dtype=C.dtype, device=C.device)
        self.part_sum = torch.empty_like(self.part_max)
        self.lse_r = torch.empty((B, k), dtype=C.dtype, device=C.device)
        self.mean_r = torch.empty((B, k), dtype=C.dtype, device=C.device)
        self.dummy_rows = torch.zeros(1, dtype=torch.int64, device=C.device)

    def row_lse(self, g: torch.Tensor, with_cost: bool = False) -> torch.Tensor:
        """``LSE_j((g_j - C_ij)/eps)`` for every problem's rows; ``g (B, m)`` contiguous."""
        br, bm = self.row_block
        grid = (triton.cdiv(self.k, br), self.B)
        _kernels().row_lse[grid](
            self.C, self.rows if self.rows is not None else self.dummy_rows, g, self.lse_r, self.mean_r,
            self.k, self.m, self.C.stride(0), g.stride(0), self.inv,
            HAS_ROWS=self.rows is not None, WITH_COST=with_cost, BLOCK_R=br, BLOCK_M=bm,
        )
        return self.lse_r

    def col_lse(self, f: torch.Tensor) -> torch.Tensor:
        """``LSE_i((f_i - C_ij)/eps)`` for every problem's columns; ``f (B, k)`` contiguous."""
        import torch

        br, bm = self.col_block
        grid = (triton.cdiv(self.m, bm), self.n_split, self.B)
        _kernels().col_lse[grid](
            self.C, self.rows if self.rows is not None else self.dummy_rows, f, self.part_max, self.part_sum,
            self.k, self.m, self.C.stride(0), f.stride(0), self.inv, self.rows_per_split, self.n_split,
            HAS_ROWS=self.rows is not None, BLOCK_R=br, BLOCK_M=bm,
        )
        if self.n_split == 1:
            return self.part_max[:, 0] + self.part_sum[:, 0].log()
        mx = self.part_max.amax(1, keepdim=True)
        return mx.squeeze(1) + (self.part_sum * torch.exp(self.part_max - mx)).sum(1).log()


def _sm_count(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1


def _iterate(
    L: _Launcher, a: torch.Tensor, b: torch.Tensor, eps: float, f0: torch.Tensor | None,
    g0: torch.Tensor | None, max_iter: int, tol: float,
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched log-domain iterations; ``a (B, k)``, ``b (m,)``; all problems stop together.

    Returns ``f, g, n_iter, cost (B,), objective (B,), marginal_error (B,)``.
    """
    import torch

    B, k, m = L.B, L.k, L.m
    dtype, device = L.C.dtype, L.C.device
    inv = 1.0 / eps
    loga, logb = a.log(), b.log().unsqueeze(0)
    if g0 is not None:
        g = g0.expand(B, m).contiguous()
        f = eps * (loga - L.row_lse(g))
        warm = True
    else:
        f = (f0 if f0 is not None else torch.zeros((B, k), dtype=dtype, device=device)).contiguous()
        g = torch.zeros((B, m), dtype=dtype, device=device)
        warm = False
    check = tol > 0
    n_iter = 0
    for it in range(max_iter):
        lse_c = L.col_lse(f)
        if check and (it > 0 or warm):
            err = (torch.exp(g * inv + lse_c) - b).abs().sum(1)
            if float(err.max()) < tol:
                break
        g = eps * (logb - lse_c)
        f = eps * (loga - L.row_lse(g))
        n_iter = it + 1
    c = torch.exp(g * inv + L.col_lse(f))
    lse_r = L.row_lse(g, with_cost=True)
    r = torch.exp(f * inv + lse_r)
    cost = (r * L.mean_r).sum(1)
    total = a.sum(1) * b.sum()
    objective = (
        ((f - eps * loga) * r).sum(1) + ((g - eps * logb) * c).sum(1) + eps * (total - r.sum(1))
    )
    err = torch.maximum((r - a).abs().sum(1), (c - b).abs().sum(1))
    return f, g, n_iter, cost, objective, err


class TritonBackend:
    """Fused Triton kernels for CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``)."""

    name = "triton"

    def _check_device(self, cost: torch.Tensor) -> None:
        if cost.device.type != "cuda" and not interpret_enabled():
            raise OtCoresetError(
                f"backend='triton' needs CUDA tensors, got a cost on {cost.device}; use backend='torch' "
                "(or set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly, for tests)"
            )

    def _result(self, out: tuple, eps: float, batched: bool) -> SinkhornResult:
        from genrec_otcoreset._sinkhorn import SinkhornResult

        f, g, n_iter, cost, objective, err = out
        if not batched:
            f, g, cost, objective, err = f[0], g[0], cost[0], objective[0], err[0]
        return SinkhornResult(
            f=f, g=g, cost=cost, objective=objective, n_iter=n_iter, marginal_error=err, eps=eps,
            backend=self.name,
        )

    def solve(
        self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float, max_iter: int, tol: float,
        f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
    ) -> SinkhornResult:
        self._check_device(cost)
        C = cost.contiguous()
        n = C.shape[0]
        L = _Launcher(C, None, 1, n, eps)
        out = _iterate(
            L, a.unsqueeze(0), b, eps, None if f0 is None else f0.unsqueeze(0),
            None if g0 is None else g0.unsqueeze(0), max_iter, tol,
        )
        return self._result(out, eps, batched=False)

    def solve_gathered(
        self, cost: torch.Tensor, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float,
        max_iter: int, tol: float, f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
    ) -> SinkhornResult:
        """All ``B`` problems iterate together (one launch per half-iteration) until every one has
        converged; rows are read from ``cost`` in place."""
        self._check_device(cost)
        C = cost.contiguous()
        B, k = rows.shape
        L = _Launcher(C, rows.contiguous(), B, k, eps)
        out = _iterate(L, a, b, eps, f0, g0, max_iter, tol)
        return self._result(out, eps, batched=True)
