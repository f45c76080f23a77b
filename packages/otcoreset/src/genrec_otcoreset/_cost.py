"""The GORACS cost matrix and the exact POO score.

``C_ij = d_ij / max d - lam * g_i / max g``, then min-max scaled into [0, 1], where ``d`` is the
Euclidean distance between train embedding ``i`` and validation embedding ``j`` and ``g`` the gradient
norm of train record ``i``. The matrix is built in row chunks straight into its one full-size buffer:
at Games scale (140,000 x 5,000) a second float32 copy would be another 2.8 GB.

POO(S) is the exact optimal-transport cost between uniform weights on the selected rows and on the
validation set (network simplex through POT); it is always what we report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from genrec_otcoreset._errors import OtCoresetError

if TYPE_CHECKING:
    import torch

__all__ = ["ExactSolution", "build_cost", "exact_poo", "resolve_device", "solve_exact"]

log = logging.getLogger(__name__)

# Bytes of float32 per row chunk: large enough for a fast matmul, small enough to be a rounding error
# next to the full matrix.
_CHUNK_BYTES = 64 * 2**20
# POT's default of 100,000 network-simplex iterations is too few at 1,000 x 5,000.
_EMD_MAX_ITER = 10_000_000


def import_ot() -> Any:
    """POT, imported with its compile-time SyntaxWarning silenced.

    POT 0.9.7's ``ot/datasets.py`` has an invalid escape sequence in a docstring (a SyntaxWarning, DeprecationWarning on 3.11); when no bytecode is
    cached, compiling it warns, and under ``-W error`` (our pytest settings) that aborts the import.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.11 files it as a DeprecationWarning
        import ot
    return ot


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OtCoresetError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OtCoresetError(f"device is {device!r} but CUDA is not available")
    return dev


def chunk_rows(n_cols: int, itemsize: int = 4) -> int:
    """Rows per chunk so that one ``(rows, n_cols)`` temporary stays near ``_CHUNK_BYTES``."""
    return max(1, _CHUNK_BYTES // max(1, n_cols * itemsize))


def build_cost(
    embeddings: Any,
    grad_norms: Any,
    val_embeddings: Any,
    *,
    lam: float,
    device: str | torch.device = "cpu",
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """The ``(N, m)`` float32 GORACS cost on ``device``, built chunk by chunk into one buffer."""
    import torch

    dev = resolve_device(device) if isinstance(device, str) else device
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).to(dev)
    y = torch.as_tensor(np.asarray(val_embeddings, dtype=np.float32)).to(dev)
    g = torch.as_tensor(np.asarray(grad_norms, dtype=np.float64)).to(dev)
    n, m = x.shape[0], y.shape[0]
    # Distances are translation invariant; centring on the validation mean keeps the ||x||^2 + ||y||^2
    # - 2 x.y expansion from cancelling catastrophically in float32.
    centre = y.mean(dim=0, keepdim=True)
    y = y - centre
    y2 = (y * y).sum(dim=1)
    step = rows_per_chunk or chunk_rows(m)
    out = torch.empty((n, m), dtype=torch.float32, device=dev)
    dmax = 0.0
    for lo in range(0, n, step):
        xc = x[lo : lo + step] - centre
        block = out[lo : lo + step]
        torch.mm(xc, y.T, out=block)
        block.mul_(-2.0).add_(y2[None, :]).add_((xc * xc).sum(dim=1, keepdim=True))
        block.clamp_(min=0.0).sqrt_()
        dmax = max(dmax, float(block.max()))
    gmax = float(g.max()) if n else 0.0
    # All-equal embeddings or all-zero gradients make a term constant; it then drops out instead of
    # dividing by zero.
    gterm = (g / gmax * lam).to(torch.float32) if gmax > 0 else torch.zeros(n, device=dev)
    lo_all, hi_all = float("inf"), float("-inf")
    for lo in range(0, n, step):
        block = out[lo : lo + step]
        if dmax > 0:
            block.div_(dmax)
        block.sub_(gterm[lo : lo + step, None])
        lo_all = min(lo_all, float(block.min()))
        hi_all = max(hi_all, float(block.max()))
    span = hi_all - lo_all
    for lo in range(0, n, step):
        block = out[lo : lo + step]
        block.sub_(lo_all)
        if span > 0:
            block.div_(span)
    log.debug("cost %d x %d built (max distance %.4g, max grad norm %.4g)", n, m, dmax, gmax)
    return out


@dataclass(frozen=True, kw_only=True)
class ExactSolution:
    """An exact OT solution between uniform weights on ``k`` selected rows and ``m`` validation points."""

    cost: float
    plan: np.ndarray  # (k, m) float64
    f: np.ndarray  # (k,) row potentials
    g: np.ndarray  # (m,) column potentials


def _rows_float64(cost: Any, indices: Any) -> np.ndarray:
    import torch

    idx = np.asarray(indices, dtype=np.int64)
    if isinstance(cost, torch.Tensor):
        sub = cost[torch.as_tensor(idx, device=cost.device)].double().cpu().numpy()
    else:
        sub = np.asarray(cost)[idx].astype(np.float64)
    return np.ascontiguousarray(sub)


def solve_exact(
    cost: Any, indices: Any, *, init: tuple[np.ndarray, np.ndarray] | None = None
) -> ExactSolution:
    """Exact OT (network simplex) on the rows ``indices`` of ``cost``; ``init`` warm-starts the duals."""
    ot = import_ot()
    sub = _rows_float64(cost, indices)
    k, m = sub.shape
    a = np.full(k, 1.0 / k)
    b = np.full(m, 1.0 / m)
    kwargs: dict[str, Any] = {}
    if init is not None:
        kwargs["potentials_init"] = (np.asarray(init[0], np.float64), np.asarray(init[1], np.float64))
    plan, info = ot.emd(a, b, sub, numItermax=_EMD_MAX_ITER, log=True, **kwargs)
    if info.get("warning"):
        raise OtCoresetError(f"exact OT did not converge on a {k} x {m} problem: {info['warning']}")
    return ExactSolution(cost=float(info["cost"]), plan=plan, f=np.asarray(info["u"]), g=np.asarray(info["v"]))


def exact_poo(cost: Any, indices: Any) -> float:
    """POO: the exact OT cost between uniform weights on rows ``indices`` and on all columns."""
    return solve_exact(cost, indices).cost
