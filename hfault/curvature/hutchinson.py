"""Hutchinson trace estimators, block-restricted and shared.

*Block-restricted* probes ``z_b`` (Rademacher on block ``b``, zero elsewhere) estimate
``Tr H_bb = E[z_bᵀ H_bb z_b]`` with variance ``2 Σ_{i≠j∈b} H_ij²`` only. Probing by *column*
(``H[:, b] z_b``, one HVP) also yields ``‖H_ab‖²_F = E‖(H z_b)_a‖²`` for every block ``a`` and the
row norm ``‖H_b·‖²_F = E‖H z_b‖²`` from the same products: traces and couplings for the price of
the traces. Blocks outside the coupling set use the cheaper ``H_bb z_b`` products.

*Shared* probes (one Rademacher ``z`` over all blocks, one HVP) give every block's trace at once,
unbiased but with the extra variance ``Σ_{c≠b} ‖H_bc‖²_F``: at init the small query/key blocks drown
in the noise of large blocks (measured in docs/curvature.md, "One shared probe cannot give
per-block traces"). Use it for cheap whole-layer monitoring only.

*Deflation* (optional): given an orthonormal basis ``Q`` of the block (the Lanczos vectors, which
already cost HVPs and capture the extreme eigen-directions), ``Tr H_bb = Tr(QᵀH_bbQ) +
E[z'ᵀH_bb z']`` with ``z' = (I - QQᵀ) z``; the first term is exact and the probes only see the
deflated remainder (Hutch++-style variance reduction). Norms split the same way:
``‖A‖²_F = ‖AQ‖²_F + ‖A(I - QQᵀ)‖²_F``. Standard errors are conditional on ``Q``; the estimator is
unbiased for every ``Q``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from hfault.curvature.hvp import HessianOperator, dot64
from hfault.curvature.probes import Estimate, rademacher

__all__ = [
    "ColumnSamples",
    "CouplingEstimate",
    "Deflation",
    "coupling",
    "probe_columns",
    "probe_diagonal",
    "row_norm",
    "shared_traces",
    "trace_estimate",
]


@dataclass
class Deflation:
    """Exact part of the estimators from an orthonormal basis of the block.

    ``basis`` has shape ``(m, n_b)`` (rows orthonormal). ``trace`` = ``Tr(QᵀH_bbQ)``; ``sq[a]`` =
    ``‖H_ab Q‖²_F`` for every block ``a`` and ``row`` = ``‖H_·b Q‖²_F`` (zeros when only ``H_bb``
    products were taken: then only ``trace`` is valid).
    """

    basis: Tensor
    trace: float
    sq: np.ndarray
    row: float

    def project_out(self, z: Tensor) -> Tensor:
        """``(I - QQᵀ) z`` for a flat ``z`` (in the basis dtype)."""
        q = self.basis
        zz = z.to(q.dtype)
        return zz - q.T @ (q @ zz)


@dataclass
class ColumnSamples:
    """Per-probe samples of one source block ``source`` (``K`` probes, ``L`` blocks)."""

    source: int
    trace: np.ndarray
    """``z'ᵀ (H z')_b``, shape ``(K,)``."""
    sq: np.ndarray
    """``‖(H z')_a‖²`` for every block ``a``, shape ``(K, L)`` (NaN when not measured)."""
    row: np.ndarray
    """``‖H z'‖²`` over all params, shape ``(K,)`` (NaN when not measured)."""
    trace_det: float = 0.0
    sq_det: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_det: float = 0.0

    @property
    def k(self) -> int:
        """Number of probes."""
        return int(self.trace.shape[0])


def _probe(op: HessianOperator, b: int, generator: torch.Generator,
           deflation: Deflation | None) -> Tensor:
    z = rademacher(op.numel(b), generator=generator, dtype=op.dtype(b), device=op.device(b))
    if deflation is not None and deflation.basis.shape[0]:
        z = deflation.project_out(z).to(op.dtype(b))
    return z


def probe_columns(
    op: HessianOperator,
    b: int,
    k: int,
    generator: torch.Generator,
    *,
    deflation: Deflation | None = None,
    batch: int = 1,
) -> ColumnSamples:
    """``k`` column probes ``H[:, b] z_b``: trace, coupling and row-norm samples of block ``b``.

    ``batch > 1`` computes that many probes per vmapped backward (``is_grads_batched``).
    """
    nb = len(op.blocks)
    tr = np.empty(k)
    sq = np.empty((k, nb))
    row = np.empty(k)
    done = 0
    while done < k:
        j = min(batch, k - done)
        zs = [_probe(op, b, generator, deflation) for _ in range(j)]
        cols = op.columns(b, torch.stack(zs)) if j > 1 else [op.column(b, zs[0])]
        for z, col in zip(zs, cols, strict=True):
            tr[done] = float(dot64(z, col.blocks[b]))
            sq[done] = col.block_sq.cpu().numpy()
            row[done] = float(col.norm_sq)
            done += 1
    if deflation is None:
        return ColumnSamples(b, tr, sq, row, 0.0, np.zeros(nb), 0.0)
    return ColumnSamples(b, tr, sq, row, deflation.trace, deflation.sq.copy(), deflation.row)


def probe_diagonal(
    op: HessianOperator,
    b: int,
    k: int,
    generator: torch.Generator,
    *,
    deflation: Deflation | None = None,
) -> ColumnSamples:
    """``k`` probes ``H_bb z_b``: trace samples only (cheaper than columns)."""
    nb = len(op.blocks)
    tr = np.empty(k)
    for i in range(k):
        z = _probe(op, b, generator, deflation)
        tr[i] = float(dot64(z, op.hvp_bb(b, z)))
    nan = np.full((k, nb), np.nan)
    det = 0.0 if deflation is None else deflation.trace
    return ColumnSamples(b, tr, nan, np.full(k, np.nan), det, np.full(nb, np.nan), np.nan)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    k = x.shape[0]
    mean = float(np.mean(x))
    se = float(np.std(x, ddof=1) / np.sqrt(k)) if k > 1 else float("nan")
    return mean, se


def trace_estimate(s: ColumnSamples) -> Estimate:
    """``Tr H_bb`` with its standard error (sample std / √K, conditional on any deflation)."""
    mean, se = _mean_se(s.trace)
    return Estimate(s.trace_det + mean, se)


def row_norm(s: ColumnSamples) -> Estimate:
    """``‖H_b·‖_F`` over all params (sqrt of the mean; SE by the delta method)."""
    mean, se = _mean_se(s.row)
    val = max(s.row_det + mean, 0.0)
    root = np.sqrt(val)
    return Estimate(root, se / (2 * root) if root > 0 else float("nan"))


def _jackknife(stat: Callable[[np.ndarray], float], k: int) -> float:
    if k < 2:
        return float("nan")
    loo = np.array([stat(np.arange(k) != i) for i in range(k)])
    loo = loo[np.isfinite(loo)]
    if loo.shape[0] < 2:
        return float("nan")
    return float(np.sqrt((k - 1) / k * np.sum((loo - loo.mean()) ** 2)))


@dataclass(frozen=True)
class CouplingEstimate:
    """Coupling between blocks ``a`` and ``b`` from their column probes."""

    hfro: Estimate
    """``‖H_ab‖_F`` (both directions averaged when both were probed)."""
    kappa: Estimate
    """``‖H_ab‖_F / sqrt(‖H_a·‖_F ‖H_b·‖_F)`` in ``[0, 1]``."""


def coupling(sa: ColumnSamples, sb: ColumnSamples) -> CouplingEstimate:
    """Frobenius coupling and row-normalized ``kappa`` of two probed blocks.

    ``‖H_ab‖²_F`` is the mean of the two directional estimates (a's probes read at b, b's at a).
    ``kappa`` is computed as ``((F_a/R_a)(F_b/R_b))^{1/4}`` where ``F_a/R_a`` is the share of a's
    column energy landing in ``b``: each ratio lies in ``[0, 1]`` by construction, so the estimate
    does too. Both SEs are delete-one jackknife over probe index (probe ``i`` of ``a`` paired with
    probe ``i`` of ``b``; they are independent so any pairing is valid; needs equal ``K``).
    A block whose Hessian rows are exactly zero (cut from the graph by a ``.detach()``) has no
    column energy to share: it is uncoupled, ``kappa = 0`` (not 0/0).
    """
    a, b = sa.source, sb.source
    k = min(sa.k, sb.k)

    def f_sq(m: np.ndarray) -> float:
        fa = sa.sq_det[b] + np.mean(sa.sq[:k][m, b])
        fb = sb.sq_det[a] + np.mean(sb.sq[:k][m, a])
        return 0.5 * (fa + fb)

    def hfro(m: np.ndarray) -> float:
        return float(np.sqrt(max(f_sq(m), 0.0)))

    def kap(m: np.ndarray) -> float:
        fa = sa.sq_det[b] + np.mean(sa.sq[:k][m, b])
        ra = sa.row_det + np.mean(sa.row[:k][m])
        fb = sb.sq_det[a] + np.mean(sb.sq[:k][m, a])
        rb = sb.row_det + np.mean(sb.row[:k][m])
        if ra <= 0 or rb <= 0:
            return 0.0
        return float((max(fa, 0.0) / ra * max(fb, 0.0) / rb) ** 0.25)

    allk = np.ones(k, dtype=bool)
    return CouplingEstimate(
        Estimate(hfro(allk), _jackknife(hfro, k)),
        Estimate(kap(allk), _jackknife(kap, k)),
    )


def shared_traces(
    op: HessianOperator,
    k: int,
    generator: torch.Generator,
    blocks: Sequence[int] | None = None,
) -> list[Estimate]:
    """Every block's trace from ``k`` shared probes (one HVP each), with per-block SE.

    Unbiased, but each block's variance includes ``Σ_{c≠b} ‖H_bc‖²_F`` over the other probed
    blocks: fine for whole-layer monitoring, not for small blocks next to large ones.
    """
    idx = list(range(len(op.blocks))) if blocks is None else list(blocks)
    samples = np.empty((k, len(idx)))
    for i in range(k):
        zs = {
            b: rademacher(op.numel(b), generator=generator, dtype=op.dtype(b), device=op.device(b))
            for b in idx
        }
        vs = [
            zs[b] if b in zs
            else torch.zeros(op.numel(b), dtype=op.dtype(b), device=op.device(b))
            for b in range(len(op.blocks))
        ]
        hz = op.hvp_blocks(vs)
        samples[i] = [float(dot64(zs[b], hz[b])) for b in idx]
    out = []
    for j in range(len(idx)):
        mean, se = _mean_se(samples[:, j])
        out.append(Estimate(mean, se))
    return out
