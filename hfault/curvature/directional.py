"""Signed directional coupling ρ along given unit directions.

``ρ_ab = u_aᵀ H_ab u_b / sqrt(|u_aᵀ H_aa u_a| · |u_bᵀ H_bb u_b|)`` is the off-diagonal of the
reduced Hessian ``M_ij = u_iᵀ H u_j`` normalized by its diagonal. Default directions are the
normalized gradients ``u_b = g_b/‖g_b‖``: then ``ρ_ab < 0`` means a gradient step on ``a``
*enlarges* ``b``'s gradient (to first order), a destabilizing transfer. ``|ρ| ≤ 1`` whenever the
2×2 reduced Hessian is positive semi-definite; ``|ρ| > 1`` means it is indefinite and ρ is not a
correlation. Flipping a direction flips the sign. One column HVP per block gives a whole column
of ``M``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from hfault.curvature.hvp import HessianOperator, dot64

__all__ = ["directional_matrix", "rho_matrix"]


def directional_matrix(
    op: HessianOperator, blocks: Sequence[int], directions: Sequence[Tensor]
) -> np.ndarray:
    """Reduced Hessian ``M[i, j] = u_iᵀ H u_j`` over ``blocks`` (symmetrized), one HVP per block.

    ``directions[i]`` is the flat unit vector of ``blocks[i]``; a zero direction gives a zero row.
    """
    k = len(blocks)
    m = np.zeros((k, k))
    for j, (b, u) in enumerate(zip(blocks, directions, strict=True)):
        if not float(dot64(u, u)) > 0:
            continue
        col = op.column(b, u)
        for i, (a, ua) in enumerate(zip(blocks, directions, strict=True)):
            m[i, j] = float(dot64(ua, col.blocks[a]))
    return 0.5 * (m + m.T)


def rho_matrix(m: np.ndarray) -> np.ndarray:
    """``ρ_ij = M_ij / sqrt(|M_ii| |M_jj|)``; NaN where a diagonal entry is zero."""
    d = np.sqrt(np.abs(np.diag(m)))
    den = np.outer(d, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, m / np.where(den > 0, den, 1.0), np.nan)
    return r
