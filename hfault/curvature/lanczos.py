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
from typing import Literal

import torch
from torch import Tensor

from hfault.curvature.probes import rademacher

__all__ = ["LanczosResult", "lanczos", "restart_lanczos", "ritz_max", "seed_coefficients"]


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
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    keep_basis: bool = False,
    basis_dtype: torch.dtype = torch.float64,
    start: Tensor | None = None,
    start_product: Tensor | None = None,
    which: Literal["both", "max"] = "both",
) -> LanczosResult:
    """Lanczos on a symmetric ``n × n`` operator given by ``matvec`` (float64 in, any float out).

    Args:
        matvec: ``v ↦ A v`` for a flat vector of length ``n``.
        steps: maximum number of products (capped at ``n``).
        tol: stop when both extreme Ritz residuals are ``< tol · max|θ|``.
        generator: the start vector is a normalized Rademacher vector from it.
        keep_basis: return the Lanczos vectors (for deflated Hutchinson).
        start: the start vector instead of a random one (normalized here).
        start_product: ``matvec(start)`` when already known (saves one product; ``steps``
            still counts the Krylov dimension, the result's ``steps`` only the new products).
        which: ``"max"`` stops on the top residual alone (when ``lambda_min`` is not used).
    """
    m = max(1, min(steps, n))
    if start_product is not None and start is None:
        raise ValueError("start_product needs start")
    if start is None:
        if generator is None:
            raise ValueError("lanczos needs a generator or a start vector")
        q = rademacher(n, generator=generator, dtype=basis_dtype, device=device) / n**0.5
    else:
        q = start.to(device=device, dtype=basis_dtype)
        q = q / torch.linalg.vector_norm(q)
    free = start_product is not None
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
        if j == 0 and start_product is not None:
            w = start_product.to(device=device, dtype=basis_dtype) / float(
                torch.linalg.vector_norm(start.to(torch.float64)))  # type: ignore[union-attr]
        else:
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
        if (which == "max" or float(res[0]) < tol * scale) and float(res[-1]) < tol * scale:
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
        steps=used - free,
        converged=converged or used == n,
        ritz=theta.cpu(),
        trace_part=float(sum(alphas)),
        basis=basis[:used] if keep_basis else None,
    )


def ritz_max(
    matvec: Callable[[Tensor], Tensor],
    vectors: Tensor,
    products: Tensor,
    *,
    steps: int,
    tol: float,
    rank_tol: float = 1e-10,
) -> LanczosResult:
    """Largest eigenvalue of a symmetric operator from a subspace whose products are known.

    ``vectors`` (rows, any basis, not necessarily orthonormal) and ``products`` (``A`` applied to
    each row) give a Rayleigh–Ritz on their span at no matvec cost. If its top Ritz residual is
    ``≥ tol · max|θ|``, Lanczos restarts from that top Ritz vector (whose product is known) and
    runs until its own top residual is below ``tol · max|θ|``, at most ``steps`` new products.

    ``lambda_max ≤ λmax`` (a Rayleigh quotient) and the residual is ``‖A x − θ x‖`` of the unit
    Ritz vector (it bounds the distance from θ to some eigenvalue). Only the top end is targeted:
    ``lambda_min`` is that of the final search space, with its residual. Seed rows whose span is
    numerically dependent (Gram eigenvalue ``< rank_tol ·`` the largest) are dropped.
    """
    s = vectors.to(torch.float64)
    a_s = products.to(device=s.device, dtype=torch.float64)
    coef = seed_coefficients(s @ s.T, s @ a_s.T, rank_tol=rank_tol)
    return restart_lanczos(matvec, coef @ s, coef @ a_s, steps=steps, tol=tol)


def seed_coefficients(gram: Tensor, rq: Tensor, *, rank_tol: float = 1e-10) -> Tensor:
    """Rayleigh–Ritz on a seed span given only ``G = S Sᵀ`` and ``R = S (AS)ᵀ`` (``k × k``).

    Returns ``c`` (length ``k``) such that ``cᵀ S`` is the unit top Ritz vector of the span.
    Zero rows and numerically dependent directions (Gram eigenvalue ``< rank_tol ·`` the
    largest, after normalizing rows) are dropped.
    """
    gram = gram.to(torch.float64)
    rq = rq.to(torch.float64)
    diag = torch.diagonal(gram).clamp(min=0.0)
    idx = torch.nonzero(diag > 0).flatten()
    if idx.numel() == 0:
        raise ValueError("ritz_max needs at least one nonzero seed vector")
    inv = torch.zeros_like(diag)
    inv[idx] = diag[idx].rsqrt()
    g = (inv[:, None] * gram * inv[None, :])[idx][:, idx]
    r = (inv[:, None] * rq * inv[None, :])[idx][:, idx]
    mu, u = torch.linalg.eigh(0.5 * (g + g.T))
    ok = mu > rank_tol * float(mu[-1])
    c = u[:, ok] / mu[ok].sqrt()  # cᵀ (unit seed rows) are orthonormal
    _, y = torch.linalg.eigh(c.T @ (0.5 * (r + r.T)) @ c)
    coef = torch.zeros(gram.shape[0], dtype=torch.float64, device=gram.device)
    coef[idx] = inv[idx] * (c @ y[:, -1])
    return coef


def restart_lanczos(
    matvec: Callable[[Tensor], Tensor], x: Tensor, ax: Tensor, *, steps: int, tol: float
) -> LanczosResult:
    """``λmax`` from a start vector ``x`` whose product ``ax`` is known: no product if ``x`` is
    already converged (residual ``< tol·|θ|``), else Lanczos from ``x`` (top end only)."""
    nx = float(torch.linalg.vector_norm(x))
    x, ax = x / nx, ax / nx
    theta = float(x @ ax)
    res = float(torch.linalg.vector_norm(ax - theta * x))
    if res < tol * abs(theta) or (theta == 0.0 and res == 0.0):
        return LanczosResult(theta, theta, res, res, 0, True,
                             torch.tensor([theta], dtype=torch.float64), theta)
    return lanczos(matvec, x.shape[0], steps=steps + 1, tol=tol, device=x.device, start=x,
                   start_product=ax, which="max")
