"""Exact (unregularised) OT through POT's network simplex, for verification and final scores (issue 5)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genrec_otcoreset._validate import check_cost, check_marginal, check_positive_int, check_same_mass

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["ExactOTResult", "exact_ot"]


@dataclass(frozen=True, kw_only=True)
class ExactOTResult:
    """Exact OT between ``a`` and ``b``: the optimal cost and a pair of optimal duals.

    ``cost = <a, f> + <b, g>`` and ``f_i + g_j <= C_ij``; tensors are float64 on the cost's device.
    """

    cost: float
    """Optimal transport cost ``min_P <P, C>``."""
    f: torch.Tensor
    """Dual potential of the rows (POT's ``u``)."""
    g: torch.Tensor
    """Dual potential of the columns (POT's ``v``)."""
    converged: bool
    """False when the network simplex stopped at ``max_iter`` before proving optimality."""
    plan: torch.Tensor | None = None
    """The optimal plan, only when ``return_plan=True``."""


def exact_ot(
    cost: Any, a: Any = None, b: Any = None, *, max_iter: int = 1_000_000, return_plan: bool = False
) -> ExactOTResult:
    """Exact OT with POT's ``ot.emd`` (network simplex, float64 on the CPU) for the same inputs as
    :func:`sinkhorn`: ``a``/``b`` uniform when None, non-negative (zeros allowed here) with equal sums.
    """
    import numpy as np
    import ot
    import torch

    cmat = check_cost(cost)
    n, m = cmat.shape
    av = check_marginal(a, (n,), "a", cmat, allow_zero=True)
    bv = check_marginal(b, (m,), "b", cmat, allow_zero=True)
    check_same_mass(av, bv)
    max_iter = check_positive_int(max_iter, "max_iter")
    c64 = np.ascontiguousarray(cmat.detach().cpu().numpy(), dtype=np.float64)
    a64 = av.detach().cpu().numpy().astype(np.float64)
    b64 = bv.detach().cpu().numpy().astype(np.float64)
    # float32 sums can differ from float64 ones in the last digits; emd asserts equality to 1e-6.
    b64 *= a64.sum() / b64.sum()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan, log = ot.emd(a64, b64, c64, numItermax=max_iter, log=True)
    for w in caught:
        logger.warning("ot.emd: %s", w.message)
    converged = int(log.get("result_code", 1)) == 1
    device = cmat.device
    return ExactOTResult(
        cost=float(log["cost"]),
        f=torch.as_tensor(np.asarray(log["u"]), dtype=torch.float64, device=device),
        g=torch.as_tensor(np.asarray(log["v"]), dtype=torch.float64, device=device),
        converged=converged,
        plan=torch.as_tensor(plan, dtype=torch.float64, device=device) if return_plan else None,
    )
