"""Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalization.

Why Lanczos and not power iteration (PyHessian): one Krylov run yields *both* ends of the spectrum
(λmax and λmin; power iteration returns the largest ``|λ|``, which is λmin for many attention
blocks) and converges much faster. Full reorthogonalization (twice, classical Gram–Schmidt against
all kept vectors) prevents ghost eigenvalues; the basis is kept in float64 and the small tridiagonal
is diagonalized with ``torch.linalg.eigh`` in float64.

Error bound: for a Ritz pair ``(θ_i, s_i)`` the residual ``β_m |e_mᵀ s_i|`` bounds the distance from
``θ_i`` to *some* eigenvalue. Ritz values interlace, so ``θ_max ≤ λmax`` and ``θ_min ≥ λmin``; the
residual is the reported ``eig_residual``. The run stops early when both extreme residuals are below
``tol · max|θ|``, or when the Krylov space becomes invariant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hfault.curvature.probes import rademacher

__all__ = ["LanczosResult", "lanczos"]


@dataclass
class LanczosResult:
    """Outcome of one Lanczos run."""

    lambda_max: float
    lambda_min: float
    residual_max: float
    """Ritz residual bound for ``lambda_max``."""
    residual_min: float
    """Ritz residual bound for ``lambda_min``."""
    steps: int
    """Matrix-vector products used."""
    converged: bool
    """True if stopped by the tolerance or an invariant subspace (not by the step limit)."""
    ritz: Tensor
    """All Ritz values (float64, CPU, ascending)."""
    trace_part: float
    """``Tr(QᵀAQ) = Σ α_j`` over the Lanczos basis (exact; used for deflated traces)."""
    basis: Tensor | None = None
    """The Lanczos vectors as rows ``(steps, n)`` (float64), when ``keep_basis``."""

    @property
    def spectral_radius(self) -> float:
        """``max(|λmin|, |λmax|)`` (what PyHessian's power iteration targets)."""
        return max(abs(self.lambda_min), abs(self.lambda_max))


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    *,
    steps: int = 20,
    tol: float = 1e-3,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    keep_basis: bool = False,
    basis_dtype: torch.dtype = torch.float64,
) -> LanczosResult:
    """Lanczos on a symmetric ``n × n`` operator given by ``matvec`` (float64 in, any float out).

    Args:
        matvec: ``v ↦ A v`` for a flat vector of length ``n``.
        steps: maximum number of products (capped at ``n``).
        tol: stop when both extreme Ritz residuals are ``< tol · max|θ|``.
        generator: the start vector is a normalized Rademacher vector from it.
        keep_basis: return the Lanczos vectors (for deflated Hutchinson).
    """
    m = max(1, min(steps, n))
    q = rademacher(n, generator=generator, dtype=basis_dtype, device=device) / n**0.5
    basis = torch.empty((m, n), dtype=basis_dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    q_prev: Tensor | None = None
    beta_prev = 0.0
    converged = False
    theta = torch.zeros(1, dtype=torch.float64)
    res = torch.zeros(1, dtype=torch.float64)
    j = 0
    for j in range(m):
        basis[j] = q
        w = matvec(q).to(device=device, dtype=basis_dtype)
        alpha = float(torch.dot(q, w))
        alphas.append(alpha)
        w = w - alpha * q
        if q_prev is not None:
            w = w - beta_prev * q_prev
        kept = basis[: j + 1]
        for _ in range(2):
            w = w - kept.T @ (kept @ w)
        beta = float(torch.linalg.vector_norm(w))
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(t)
        res = beta * s[-1, :].abs()
        scale = float(theta.abs().max())
        if beta <= 1e-12 * max(scale, abs(alpha)) or scale == 0.0:
            converged = True  # invariant subspace: Ritz values are exact eigenvalues
            res = torch.zeros_like(res)
            break
        if float(res[0]) < tol * scale and float(res[-1]) < tol * scale:
            converged = True
            break
        if j + 1 < m:
            betas.append(beta)
            q_prev, beta_prev = q, beta
            q = w / beta
    used = j + 1
    return LanczosResult(
        lambda_max=float(theta[-1]),
        lambda_min=float(theta[0]),
        residual_max=float(res[-1]),
        residual_min=float(res[0]),
        steps=used,
        converged=converged or used == n,
        ritz=theta.cpu(),
        trace_part=float(sum(alphas)),
        basis=basis[:used] if keep_basis else None,
    )
