"""Entropic optimal transport: the public Sinkhorn API and its pluggable backends (issue 5).

Conventions (the same as POT's ``ot.sinkhorn_log``): the plan is
``P_ij = exp((f_i + g_j - C_ij) / eps)``; one iteration updates ``g`` from ``f`` and then ``f`` from
``g``, so after an iteration the row marginal is exact and the stopping rule measures the column
marginal, ``||P^T 1 - b||_1 < tol``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from genrec_otcoreset._errors import OtCoresetError
from genrec_otcoreset._validate import (
    check_cost,
    check_eps,
    check_marginal,
    check_nonneg_float,
    check_points,
    check_positive_int,
    check_potential,
    check_rows,
    check_same_mass,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["SinkhornBackend", "SinkhornResult", "sinkhorn", "sinkhorn_gathered"]

BackendName = Literal["auto", "torch", "triton"]

# Point clouds are turned into a stored cost (fast scaling path) up to this size; above it the
# cost is recomputed chunk by chunk on every pass.
_MATERIALISE_BYTES = 1 << 30


@dataclass(frozen=True, kw_only=True)
class SinkhornResult:
    """The outcome of a Sinkhorn solve (a batch of them for :func:`sinkhorn_gathered`).

    Tensors are on the cost's device in its dtype; batched results have a leading ``B`` dimension
    (``f (B, k)``, ``g (B, m)``, ``cost (B,)``...), single ones are 0-d for the scalars.
    """

    f: torch.Tensor
    """Row potentials, POT's convention: ``P = exp((f_i + g_j - C_ij) / eps)``."""
    g: torch.Tensor
    """Column potentials."""
    cost: torch.Tensor
    """Transport cost ``<P, C>`` of the returned plan (no entropy term)."""
    objective: torch.Tensor
    """Entropic objective ``<P, C> + eps * KL(P | a b^T)`` (KL of unnormalised measures)."""
    n_iter: int
    """Iterations run (summed over eps stages; the most over a batch)."""
    marginal_error: torch.Tensor
    """``max(||P 1 - a||_1, ||P^T 1 - b||_1)`` of the returned potentials (the row error is only
    rounding after an ``f`` update, so this is the column error that ``tol`` bounds)."""
    eps: float
    """The (final) regularisation strength."""
    backend: str
    """Name of the backend that ran."""
    plan: torch.Tensor | None = None
    """``P`` itself, only when ``return_plan=True``."""


@runtime_checkable
class SinkhornBackend(Protocol):
    """What a Sinkhorn backend provides; plug your own by passing an instance as ``backend=``.

    Inputs arrive validated: ``cost`` is float32/float64 and finite, ``a``/``b`` positive with equal
    mass and on the cost's device and dtype, warm-start potentials of the right shapes or ``None``.
    ``g0`` (when given) takes precedence: the solve starts with ``f``'s update from ``g0``.
    """

    name: str

    def solve(
        self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float, max_iter: int, tol: float,
        f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
    ) -> SinkhornResult:
        """One problem on a stored ``(n, m)`` cost."""
        ...

    def solve_gathered(
        self, cost: torch.Tensor, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float,
        max_iter: int, tol: float, f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
    ) -> SinkhornResult:
        """``B`` problems on rows ``rows (B, k)`` of ``cost (N, m)``; ``a (B, k)``, ``b (m,)``."""
        ...


def _resolve_backend(backend: BackendName | SinkhornBackend, device: torch.device) -> SinkhornBackend:
    if isinstance(backend, str):
        if backend not in ("auto", "torch", "triton"):
            raise OtCoresetError(f"backend must be 'auto', 'torch', 'triton' or a SinkhornBackend, got {backend!r}")
        if backend == "auto":
            backend = "triton" if device.type == "cuda" and _triton_available() else "torch"
        if backend == "torch":
            from genrec_otcoreset._torch_sinkhorn import TorchBackend

            return TorchBackend()
        from genrec_otcoreset._triton_sinkhorn import TritonBackend

        return TritonBackend()
    if not isinstance(backend, SinkhornBackend):
        raise OtCoresetError(
            f"backend must be 'auto', 'torch', 'triton' or a SinkhornBackend, got {type(backend).__name__}"
        )
    return backend


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - triton is a Linux dependency
        return False
    return True


def _stages(eps: float, eps_schedule: Sequence[float] | Literal["geometric"] | None, scale: float) -> list[float]:
    if eps_schedule is None:
        return [eps]
    if isinstance(eps_schedule, str):
        if eps_schedule != "geometric":
            raise OtCoresetError(f"eps_schedule must be a sequence of eps values or 'geometric', got {eps_schedule!r}")
        out: list[float] = []
        e = max(scale, eps)
        while e > eps * 2:
            out.append(e)
            e /= 2
        return [*out, eps]
    return [check_eps(e, "eps_schedule entry") for e in eps_schedule] + [eps]


def _plan(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    import torch

    p = torch.sub(f.unsqueeze(-1), cost)
    p.add_(g.unsqueeze(-2)).div_(eps).exp_()
    return p


def sinkhorn(
    cost: Any = None,
    a: Any = None,
    b: Any = None,
    *,
    x: Any = None,
    y: Any = None,
    metric: Literal["sqeuclidean", "euclidean"] = "sqeuclidean",
    eps: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    backend: BackendName | SinkhornBackend = "auto",
    f0: Any = None,
    g0: Any = None,
    eps_schedule: Sequence[float] | Literal["geometric"] | None = None,
    return_plan: bool = False,
) -> SinkhornResult:
    """Entropic OT between ``a`` (n) and ``b`` (m), log-domain Sinkhorn.

    Give either a stored ``cost (n, m)`` or point clouds ``x (n, d)``, ``y (m, d)`` with ``metric``
    (the cost is then built on the fly; large problems never store it). ``a``/``b`` default to
    uniform weights summing to one; they must be positive with equal sums.

    ``max_iter`` iterations at most per eps stage; stop early when the column marginal error
    ``||P^T 1 - b||_1`` drops below ``tol`` (``tol=0``: always run ``max_iter``). ``f0``/``g0``
    warm-start the potentials (with ``g0`` the first half-step is ``f``'s update, and ``f0`` is not
    read). ``eps_schedule``: eps values to solve first, each warm-starting the next, or
    ``"geometric"`` (halving from the cost's range down to ``eps``): use it for small eps.
    ``backend``: ``"torch"``, ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``), ``"auto"``
    (triton for CUDA tensors, else torch) or any :class:`SinkhornBackend`.
    """
    eps = check_eps(eps)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_nonneg_float(tol, "tol")
    points = x is not None or y is not None
    if points and cost is not None:
        raise OtCoresetError("give either cost or the point clouds x and y, not both")
    if points:
        if x is None or y is None:
            raise OtCoresetError("point-cloud form needs both x and y")
        xs, ys = check_points(x, y, metric)
        n, m, like = xs.shape[0], ys.shape[0], xs
    elif cost is None:
        raise OtCoresetError("cost is required (or the point clouds x and y)")
    else:
        cmat = check_cost(cost)
        n, m = cmat.shape
        like = cmat
    av = check_marginal(a, (n,), "a", like)
    bv = check_marginal(b, (m,), "b", like)
    check_same_mass(av, bv)
    fw = check_potential(f0, (n,), "f0", like)
    gw = check_potential(g0, (m,), "g0", like)
    impl = _resolve_backend(backend, like.device)

    if points and n * m * like.element_size() <= _MATERIALISE_BYTES:
        from genrec_otcoreset._torch_sinkhorn import pairwise_cost

        cmat = pairwise_cost(xs, ys, metric)
        points = False
    solve_points: Callable[..., SinkhornResult] | None = None
    if points:
        solve_points = getattr(impl, "solve_points", None)
        if solve_points is None:
            from genrec_otcoreset._torch_sinkhorn import TorchBackend

            logger.info("backend %s has no point-cloud solver; using the torch one", impl.name)
            solve_points = TorchBackend().solve_points
        scale = 1.0
    elif eps_schedule == "geometric":
        scale = float(cmat.max() - cmat.min())
    else:
        scale = 1.0

    stages = _stages(eps, eps_schedule, scale)
    total = 0
    res: SinkhornResult | None = None
    for e in stages:
        kw: dict[str, Any] = {"eps": e, "max_iter": max_iter, "tol": tol, "f0": fw, "g0": gw}
        if solve_points is not None:
            res = solve_points(xs, ys, metric, av, bv, **kw)
        else:
            res = impl.solve(cmat, av, bv, **kw)
        total += res.n_iter
        fw, gw = res.f, None
        logger.debug("sinkhorn eps=%g: %d iterations, marginal error %.3g", e, res.n_iter, float(res.marginal_error))
    assert res is not None
    plan = None
    if return_plan:
        if points:
            from genrec_otcoreset._torch_sinkhorn import pairwise_cost

            cmat = pairwise_cost(xs, ys, metric)
        plan = _plan(cmat, res.f, res.g, eps)
    return dataclasses.replace(res, n_iter=total, plan=plan)


def sinkhorn_gathered(
    cost: Any,
    rows: Any,
    b: Any = None,
    *,
    a: Any = None,
    eps: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    backend: BackendName | SinkhornBackend = "auto",
    f0: Any = None,
    g0: Any = None,
    return_plan: bool = False,
    check_finite: bool = True,
) -> SinkhornResult:
    """``B`` Sinkhorn problems at once, problem ``i`` on rows ``rows[i]`` of a shared ``cost (N, m)``.

    All problems share the column marginal ``b (m,)`` (uniform when None); ``a (B, k)`` defaults to
    uniform rows summing to ``b``'s mass. No backend materialises ``B`` sub-matrices. Warm start
    with ``f0 (B, k)`` or ``g0 (B, m)`` / ``g0 (m,)`` (shared), e.g. the duals of the current
    selection when screening swaps. Returns a batched :class:`SinkhornResult` (``f (B, k)``,
    ``g (B, m)``, ``cost (B,)``, ...). ``check_finite=False`` skips the full scan of a large
    ``cost`` that the caller knows is finite.
    """
    import torch

    eps = check_eps(eps)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_nonneg_float(tol, "tol")
    cmat = check_cost(cost, finite=check_finite)
    N, m = cmat.shape
    idx = check_rows(rows, N, cmat)
    B, k = idx.shape
    bv = check_marginal(b, (m,), "b", cmat)
    if a is None:
        av = torch.full((B, k), float(bv.sum()) / k, dtype=cmat.dtype, device=cmat.device)
    else:
        av = check_marginal(a, (B, k), "a", cmat)
        check_same_mass(av, bv)
    fw = check_potential(f0, (B, k), "f0", cmat)
    gw = check_potential(g0, (B, m), "g0", cmat)
    impl = _resolve_backend(backend, cmat.device)
    res = impl.solve_gathered(cmat, idx, av, bv, eps=eps, max_iter=max_iter, tol=tol, f0=fw, g0=gw)
    if return_plan:
        sub = cmat[idx]  # (B, k, m): the caller asked for B plans, which are this size anyway
        res = dataclasses.replace(res, plan=_plan(sub, res.f, res.g, eps))
    return res
