"""Input checks for the optimal-transport entry points (issue 5).

Every check raises :class:`OtCoresetError` (a ``ValueError``) whose message names the argument and
the bad value, so a caller deep inside coreset selection can tell which input was wrong.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from genrec_otcoreset._errors import OtCoresetError

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_cost",
    "check_eps",
    "check_marginal",
    "check_nonneg_float",
    "check_points",
    "check_positive_int",
    "check_potential",
    "check_rows",
    "check_same_mass",
    "to_tensor",
]


def to_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` as a torch tensor (numpy arrays and nested lists are converted, not copied when possible)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | list | tuple):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise OtCoresetError(f"{name} could not be converted to a tensor: {exc}") from exc
    raise OtCoresetError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def _as_float(t: torch.Tensor, name: str) -> torch.Tensor:
    import torch

    if t.dtype in (torch.float32, torch.float64):
        return t
    if t.dtype in (torch.float16, torch.bfloat16) or not t.is_floating_point():
        if t.is_complex() or t.dtype == torch.bool:
            raise OtCoresetError(f"{name} must be real-valued, got dtype {t.dtype}")
        # Half precision cannot hold exp() of log-domain iterates: compute in float32.
        return t.to(torch.float32)
    raise OtCoresetError(f"{name} has unsupported dtype {t.dtype}")


def _check_finite(t: torch.Tensor, name: str) -> None:
    import torch

    # A finite sum proves every entry finite (NaN and inf propagate) at the cost of one read; only a
    # non-finite sum (bad entries or a harmless overflow) pays for the element-wise scan.
    if math.isfinite(float(t.sum())):
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
        where = idx[0] if len(idx) == 1 else idx
        raise OtCoresetError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {where}: "
            f"{t[idx].item()}"
        )


def check_cost(cost: Any, name: str = "cost", *, finite: bool = True) -> torch.Tensor:
    """A non-empty 2-D float32/float64 cost matrix, finite unless ``finite=False``."""
    t = _as_float(to_tensor(cost, name), name)
    if t.ndim != 2:
        raise OtCoresetError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise OtCoresetError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    if finite:
        _check_finite(t, name)
    return t


def check_points(x: Any, y: Any, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Point clouds ``x (n, d)`` and ``y (m, d)`` on one device, in one float dtype."""
    import torch

    if metric not in ("sqeuclidean", "euclidean"):
        raise OtCoresetError(f"metric must be 'sqeuclidean' or 'euclidean', got {metric!r}")
    xs = _as_float(to_tensor(x, "x"), "x")
    ys = _as_float(to_tensor(y, "y"), "y")
    for t, nm in ((xs, "x"), (ys, "y")):
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise OtCoresetError(f"{nm} must be a non-empty 2-D array of points (n, d), got shape {tuple(t.shape)}")
        _check_finite(t, nm)
    if xs.shape[1] != ys.shape[1]:
        raise OtCoresetError(f"x and y must have the same dimension d, got x {tuple(xs.shape)} and y {tuple(ys.shape)}")
    if xs.device != ys.device:
        raise OtCoresetError(f"x and y must be on one device, got {xs.device} and {ys.device}")
    dtype = torch.promote_types(xs.dtype, ys.dtype)
    return xs.to(dtype), ys.to(dtype)


def check_marginal(
    w: Any, shape: tuple[int, ...], name: str, like: torch.Tensor, *, allow_zero: bool = False
) -> torch.Tensor:
    """A marginal of ``shape``: uniform (summing to one per problem) when ``w`` is None.

    Entries must be finite and non-negative with a positive sum; zero entries only with
    ``allow_zero`` (Sinkhorn rejects them: their log-domain potentials are -inf; drop those points).
    """
    import torch

    if w is None:
        return torch.full(shape, 1.0 / shape[-1], dtype=like.dtype, device=like.device)
    t = _as_float(to_tensor(w, name), name).to(dtype=like.dtype, device=like.device)
    if tuple(t.shape) != tuple(shape):
        raise OtCoresetError(f"{name} must have shape {tuple(shape)} to match the cost, got {tuple(t.shape)}")
    _check_finite(t, name)
    neg = t < 0
    if bool(neg.any()):
        i = tuple(int(j) for j in torch.nonzero(neg)[0].tolist())
        raise OtCoresetError(f"{name} must be non-negative, got {t[i].item()} at index {i if len(i) > 1 else i[0]}")
    if float(t.sum()) <= 0:
        raise OtCoresetError(f"{name} must have a positive total mass, got {float(t.sum())!r}")
    zero = t == 0
    if not allow_zero and bool(zero.any()):
        i = tuple(int(j) for j in torch.nonzero(zero)[0].tolist())
        raise OtCoresetError(
            f"{name} has {int(zero.sum())} zero entries (first at index {i if len(i) > 1 else i[0]}); "
            "zero-mass points have infinite potentials, drop them before solving"
        )
    return t


def check_same_mass(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a`` and ``b`` (or each problem's ``a`` against ``b``) carry the same total mass."""
    import torch

    rtol = 1e-5 if torch.float32 in (a.dtype, b.dtype) else 1e-9
    sa = a.double().sum(-1)
    sb = float(b.double().sum())
    diff = (sa - sb).abs()
    bad = diff > rtol * max(sb, float(sa.abs().max()))
    if bool(bad.any()):
        first = float(sa.flatten()[torch.nonzero(bad.flatten())[0]].item())
        raise OtCoresetError(
            f"marginals must have equal mass: a sums to {first!r} but b sums to {sb!r} (relative tolerance {rtol})"
        )


def check_eps(eps: Any, name: str = "eps") -> float:
    """A finite, strictly positive regularisation strength."""
    try:
        val = float(eps)
    except (TypeError, ValueError) as exc:
        raise OtCoresetError(f"{name} must be a positive number, got {eps!r}") from exc
    if not math.isfinite(val) or val <= 0:
        raise OtCoresetError(f"{name} must be a finite number > 0, got {eps!r}")
    return val


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OtCoresetError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_nonneg_float(value: Any, name: str) -> float:
    try:
        val = float(value)
    except (TypeError, ValueError) as exc:
        raise OtCoresetError(f"{name} must be a number >= 0, got {value!r}") from exc
    if not math.isfinite(val) or val < 0:
        raise OtCoresetError(f"{name} must be a finite number >= 0, got {value!r}")
    return val


def check_potential(p: Any, shape: tuple[int, ...], name: str, like: torch.Tensor) -> torch.Tensor | None:
    """A warm-start potential of ``shape`` (a ``(m,)`` potential is broadcast over a leading batch)."""
    if p is None:
        return None
    t = _as_float(to_tensor(p, name), name).to(dtype=like.dtype, device=like.device)
    if tuple(t.shape) != tuple(shape):
        if len(shape) == 2 and tuple(t.shape) == (shape[1],):
            t = t.unsqueeze(0).expand(shape)
        else:
            raise OtCoresetError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    _check_finite(t, name)
    return t


def check_rows(rows: Any, n_rows: int, like: torch.Tensor) -> torch.Tensor:
    """Row indices ``(B, k)`` into a cost with ``n_rows`` rows, as int64 on the cost's device."""
    import torch

    t = to_tensor(rows, "rows")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise OtCoresetError(f"rows must hold integer indices, got dtype {t.dtype}")
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise OtCoresetError(f"rows must be a non-empty (B, k) index matrix, got shape {tuple(t.shape)}")
    t = t.to(device=like.device, dtype=torch.int64)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= n_rows:
        bad = lo if lo < 0 else hi
        raise OtCoresetError(f"rows out of range: index {bad} for a cost with {n_rows} rows (valid 0..{n_rows - 1})")
    return t
