"""``measure``: one curvature snapshot of every block on one retained graph.

Per block (``m`` = Lanczos steps, ``K`` = probes):

* Lanczos (``≤ m`` HVPs): ``λmax``, ``λmin`` with Ritz residuals. For blocks in the coupling set the
  Lanczos products are full *columns* ``H[:, b] q`` so that they also feed the couplings.
* Hutchinson (``K`` HVPs): block-restricted probes, deflated by the Lanczos basis (exact part from
  the basis, probes on the rest). Coupling-set blocks are probed by column, which gives their
  trace, their row norm and ``‖H_ab‖_F`` to every other block from the same products.
* Preconditioned ``λmax`` (``≤ m`` new HVPs) when an Adam preconditioner is given; stability
  ratio. Every ``H_bb x`` already computed for the block (Lanczos vectors, probes) gives the
  preconditioned operator on ``D^{-1}x`` for free, so ``ritz_max`` starts from that subspace and
  adds products only while the top residual is above ``precond_tol`` (only ``λmax`` is used).
* ρ along the gradient (or given) directions: one more column per coupling-set block.

Cost ≈ ``L·(m + K) + L_P·m + L_c`` HVPs at most (early stops lower it; ``L_P`` blocks with a
preconditioner, ``L_c`` in the coupling set).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hfault.curvature.directional import directional_matrix, rho_matrix
from hfault.curvature.hutchinson import (
    ColumnSamples,
    Deflation,
    coupling,
    probe_columns,
    probe_diagonal,
    row_norm,
    shared_traces,
    trace_estimate,
)
from hfault.curvature.hvp import HessianOperator
from hfault.curvature.lanczos import (
    LanczosResult,
    lanczos,
    restart_lanczos,
    seed_coefficients,
)
from hfault.curvature.stability import StabilityResult, StabilitySetup, stability

__all__ = [
    "BUDGETS",
    "BlockCurvature",
    "CurvatureSettings",
    "CurvatureSnapshot",
    "EdgeCurvature",
    "measure",
]

Budget = Literal["economy", "standard", "thorough"]
BUDGETS: dict[str, tuple[int, int, float]] = {
    "economy": (4, 10, 1e-2),
    "standard": (16, 20, 1e-3),
    "thorough": (64, 30, 1e-4),
}
"""Budget presets: ``(probes K per block, max Lanczos steps m, Lanczos tolerance)``."""

_BASIS_BYTES = 1 << 30


@dataclass(frozen=True)
class CurvatureSettings:
    """What ``measure`` computes and how much it spends.

    ``probes`` / ``lanczos_steps`` / ``tol`` override the ``budget`` preset; ``precond_tol`` is
    the (looser) Lanczos tolerance of the preconditioned λ, which only feeds a stability ratio.
    ``coupling_blocks``: names of the blocks whose pairwise couplings are wanted (``None`` = all,
    ``()`` = none); the others still get traces and eigenvalues. ``eig_blocks``: blocks that get
    Lanczos, plain and preconditioned (``None`` = all).
    ``trace_method="shared"`` estimates the traces of blocks outside the coupling set from shared
    probes (cheap, noisy). ``deflate`` uses the Lanczos basis to reduce trace/coupling variance.
    ``probe_batch > 1`` batches column probes with ``is_grads_batched``.
    """

    budget: Budget = "economy"
    probes: int | None = None
    lanczos_steps: int | None = None
    tol: float | None = None
    precond_tol: float = 1e-2
    coupling_blocks: Sequence[str] | None = None
    eig_blocks: Sequence[str] | None = None
    trace_method: Literal["block", "shared"] = "block"
    deflate: bool = True
    rho: bool = True
    probe_batch: int = 1
    seed: int = 0
    safety: float = 0.8

    @property
    def k(self) -> int:
        """Probes per block."""
        return self.probes if self.probes is not None else BUDGETS[self.budget][0]

    @property
    def m(self) -> int:
        """Maximum Lanczos steps."""
        return self.lanczos_steps if self.lanczos_steps is not None else BUDGETS[self.budget][1]

    @property
    def lanczos_tol(self) -> float:
        """Lanczos early-stop tolerance (relative Ritz residual of both extremes)."""
        return self.tol if self.tol is not None else BUDGETS[self.budget][2]


@dataclass(frozen=True)
class BlockCurvature:
    """One block's measurements (``None`` where not computed)."""

    name: str
    numel: int
    grad_norm: float
    trace: float
    trace_se: float
    lambda_max: float | None = None
    lambda_min: float | None = None
    eig_residual_max: float | None = None
    """Ritz residual bound on ``lambda_max``."""
    eig_residual_min: float | None = None
    """Ritz residual bound on ``lambda_min``."""
    lanczos_steps: int = 0
    lambda_precond: float | None = None
    """``λmax(P^{-1/2}(H_bb + l2·I)P^{-1/2})`` when a preconditioner was given."""
    precond_residual: float | None = None
    row_fro: float | None = None
    """``‖H_b·‖_F`` over all params (coupling-set blocks)."""
    row_fro_se: float | None = None
    stability: StabilityResult | None = None
    hvps: int = 0

    @property
    def eig_residual(self) -> float | None:
        """The looser of the two Ritz residual bounds (what the report gives per block)."""
        return max((r for r in (self.eig_residual_max, self.eig_residual_min) if r is not None),
                   default=None)


@dataclass(frozen=True)
class EdgeCurvature:
    """Coupling of two coupling-set blocks (symmetric; ``source`` precedes ``target``)."""

    source: str
    target: str
    kappa: float
    """``‖H_ab‖_F / sqrt(‖H_a·‖_F ‖H_b·‖_F)`` ∈ [0, 1]."""
    kappa_se: float
    """Delete-one jackknife over probes."""
    hfro: float
    """``‖H_ab‖_F``."""
    hfro_se: float
    rho: float | None = None
    """Signed ``u_aᵀH_ab u_b / sqrt(|u_aᵀH_aa u_a| |u_bᵀH_bb u_b|)``; |ρ|>1: indefinite pair."""


@dataclass(frozen=True)
class CurvatureSnapshot:
    """Everything one ``measure`` call produced."""

    blocks: tuple[BlockCurvature, ...]
    edges: tuple[EdgeCurvature, ...]
    hvp_count: int
    seconds: float
    settings: CurvatureSettings
    unused_blocks: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def block(self, name: str) -> BlockCurvature:
        """The block called ``name``."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    def edge(self, a: str, b: str) -> EdgeCurvature:
        """The edge between ``a`` and ``b`` (either order)."""
        for e in self.edges:
            if {e.source, e.target} == {a, b}:
                return e
        raise KeyError((a, b))


def _names_to_idx(op: HessianOperator, names: Sequence[str] | None) -> list[int]:
    if names is None:
        return list(range(len(op.blocks)))
    return [op.index(n) for n in names]


def _lanczos_block(
    op: HessianOperator, b: int, s: CurvatureSettings, gen: torch.Generator, columns: bool,
    keep: list[Tensor] | None = None,
) -> tuple[LanczosResult, Deflation | None]:
    """Lanczos on ``H_bb`` (by columns if ``columns``).

    ``keep``: collects every product ``H_bb q`` (block dtype), and the basis is then kept in the
    result even without deflation (``_precond_ritz`` reuses both).
    """
    nb = len(op.blocks)
    sq = np.zeros(nb)
    row = [0.0]
    dtype, dev = op.dtype(b), op.device(b)

    def mv(q: Tensor) -> Tensor:
        qq = q.to(dtype)
        if not columns:
            out = op.hvp_bb(b, qq)
        else:
            col = op.column(b, qq)
            sq[:] += col.block_sq.cpu().numpy()
            row[0] += float(col.norm_sq)
            out = col.blocks[b]
        if keep is not None:
            keep.append(out)
        return out

    n = op.numel(b)
    basis_dtype = torch.float64 if min(s.m, n) * n * 8 <= _BASIS_BYTES else dtype
    res = lanczos(mv, n, steps=s.m, tol=s.lanczos_tol, generator=gen, device=dev,
                  keep_basis=s.deflate or keep is not None, basis_dtype=basis_dtype)
    if not s.deflate or res.basis is None:
        return res, None
    if not columns:
        sq[:] = np.nan
        row[0] = float("nan")
    return res, Deflation(res.basis, res.trace_part, sq, row[0])


def _precond_lanczos(
    op: HessianOperator, b: int, setup: StabilitySetup, s: CurvatureSettings,
    gen: torch.Generator,
) -> LanczosResult:
    """The preconditioned ``λmax`` by Lanczos from a random start (reference path)."""
    assert setup.inv_sqrt_p is not None
    dtype, dev = op.dtype(b), op.device(b)
    d = setup.inv_sqrt_p.to(device=dev, dtype=torch.float64)
    l2 = setup.rule.l2

    def mv(q: Tensor) -> Tensor:
        dq = d * q
        out = op.hvp_bb(b, dq.to(dtype)).to(torch.float64)
        return d * (out + l2 * dq) if l2 else d * out

    return lanczos(mv, op.numel(b), steps=s.m, tol=s.precond_tol, generator=gen, device=dev)


def _precond_ritz(
    op: HessianOperator, b: int, setup: StabilitySetup, s: CurvatureSettings,
    basis: Tensor, products: Sequence[Tensor],
) -> LanczosResult:
    """The preconditioned ``λmax`` of ``A = D(H_bb + l2·I)D``, ``D = P^{-1/2}``, reusing products.

    The plain Lanczos products ``w_j = H_bb q_j`` give ``A`` on ``s_j = D^{-1}q_j`` for free:
    ``A s_j = D(w_j + l2·q_j)``, so ``s_iᵀ A s_j = q_iᵀ(w_j + l2·q_j)`` and ``s_iᵀ s_j =
    q_iᵀ D^{-2} q_j``. The top Ritz vector of that span (``seed_coefficients``) is returned as
    is if its residual is ``< precond_tol·|θ|``; otherwise Lanczos restarts from it (its first
    product is known) and stops on the top residual alone (at most ``m`` new products). Only
    ``λmax`` is used (a stability ratio). Built row by row: no extra ``k × n_b`` copies. (For
    float32 blocks the products were taken at the float32-rounded ``q_j``; the mismatch is ~1e-7
    relative, far below ``precond_tol``.)
    """
    assert setup.inv_sqrt_p is not None
    dtype, dev = op.dtype(b), op.device(b)
    d = setup.inv_sqrt_p.to(device=dev, dtype=torch.float64)
    l2 = setup.rule.l2
    k = len(products)
    q = basis[:k]
    inv_d2 = d.pow(-2)

    def w64(j: int) -> Tensor:
        w = products[j].to(device=dev, dtype=torch.float64)
        return w + l2 * q[j].to(torch.float64) if l2 else w

    gram = torch.empty((k, k), dtype=torch.float64, device=dev)
    rq = torch.empty_like(gram)
    for j in range(k):
        gram[:, j] = torch.mv(q, (q[j].to(torch.float64) * inv_d2).to(q.dtype))
        rq[:, j] = torch.mv(q, w64(j).to(q.dtype))
    coef = seed_coefficients(gram, rq)
    x = (coef.to(q.dtype) @ q).to(torch.float64).div_(d)  # top Ritz vector of the seeds
    ax = torch.zeros_like(x)
    for j in range(k):
        ax.add_(w64(j), alpha=float(coef[j]))
    ax.mul_(d)

    def mv(x: Tensor) -> Tensor:
        dx = d * x
        out = op.hvp_bb(b, dx.to(dtype)).to(torch.float64)
        return d * (out + l2 * dx) if l2 else d * out

    return restart_lanczos(mv, x, ax, steps=s.m, tol=s.precond_tol)


def measure(
    op: HessianOperator,
    settings: CurvatureSettings | None = None,
    *,
    generator: torch.Generator | None = None,
    stability_setups: Mapping[str, StabilitySetup] | None = None,
    directions: Mapping[str, Tensor] | None = None,
) -> CurvatureSnapshot:
    """Measure every block of ``op`` (see the module docstring for what and at what cost).

    Args:
        op: the operator on the step's graph (left open: the caller closes it).
        settings: budget and scope (default ``CurvatureSettings()``).
        generator: private RNG for probes and Lanczos starts (default: a new one seeded with
            ``settings.seed`` on the first block's device). The global RNG is never used.
        stability_setups: per block name, the optimizer rule and preconditioner
            (``block_stability_setup``); blocks without one get no stability fields.
        directions: per block name, flat directions for ρ (default: the gradient ``g_b``);
            normalized here.
    """
    s = settings or CurvatureSettings()
    t0 = time.perf_counter()
    nblocks = len(op.blocks)
    if generator is None:
        dev = op.device(0) if nblocks else torch.device("cpu")
        generator = torch.Generator(device=dev)
        generator.manual_seed(s.seed)
    start_count = op.hvp_count
    coupled = _names_to_idx(op, s.coupling_blocks)
    coupled_set = set(coupled)
    eig_set = set(_names_to_idx(op, s.eig_blocks))
    setups = dict(stability_setups or {})
    notes: list[str] = []

    lres: dict[int, LanczosResult] = {}
    presults: dict[int, LanczosResult] = {}
    samples: dict[int, ColumnSamples] = {}
    hvps = [0] * nblocks
    for b in range(nblocks):
        c0 = op.hvp_count
        deflation = None
        setup = setups.get(op.blocks[b].name)
        if setup is not None and setup.moments is not None and setup.moments.foldable:
            grad = op.gradient(b)
            if setup.rule.l2:  # coupled weight decay is part of the gradient Adam normalizes
                grad = grad + setup.rule.l2 * op.flatten(b, [p.detach() for p in op.params])
            setup = setups[op.blocks[b].name] = setup.for_gradient(grad)
        precond = b in eig_set and setup is not None and setup.inv_sqrt_p is not None
        known: list[Tensor] | None = [] if precond else None
        if b in eig_set:
            lres[b], deflation = _lanczos_block(op, b, s, generator, columns=b in coupled_set,
                                                keep=known)
        if b in coupled_set:
            samples[b] = probe_columns(op, b, s.k, generator, deflation=deflation,
                                       batch=s.probe_batch)
        elif s.trace_method == "block":
            samples[b] = probe_diagonal(op, b, s.k, generator, deflation=deflation)
        if precond:
            basis = lres[b].basis
            assert setup is not None and known is not None and basis is not None
            presults[b] = _precond_ritz(op, b, setup, s, basis, known)
        if b in lres:
            lres[b].basis = None  # release the block's basis now, not at the end
        hvps[b] = op.hvp_count - c0

    shared: dict[int, tuple[float, float]] = {}
    if s.trace_method == "shared":
        rest = [b for b in range(nblocks) if b not in coupled_set]
        if rest:
            for b, est in zip(rest, shared_traces(op, s.k, generator, rest), strict=True):
                shared[b] = est
            notes.append(f"traces of {len(rest)} blocks from {s.k} shared probes")

    rho = None
    if s.rho and len(coupled) > 1:
        dirs = []
        for b in coupled:
            name = op.blocks[b].name
            u = (directions[name] if directions and name in directions else op.gradient(b))
            u = u.reshape(-1).to(device=op.device(b), dtype=op.dtype(b))
            nrm = float(torch.linalg.vector_norm(u.to(torch.float64)))
            dirs.append(u / nrm if nrm > 0 else torch.zeros_like(u))
        c0 = op.hvp_count
        rho = rho_matrix(directional_matrix(op, coupled, dirs))
        for b in coupled:
            hvps[b] += (op.hvp_count - c0) // len(coupled)

    blocks_out = []
    for b in range(nblocks):
        name = op.blocks[b].name
        g = op.gradient(b)
        tr: tuple[float, float]
        if b in samples:
            tr = trace_estimate(samples[b])
        elif b in shared:
            tr = shared[b]
        else:
            tr = (float("nan"), float("nan"))
        lr = lres.get(b)
        pr = presults.get(b)
        rn = row_norm(samples[b]) if b in coupled_set else None
        stab = None
        setup = setups.get(name)
        if setup is not None:
            if pr is not None:
                stab = stability(setup.rule, pr.lambda_max, c=s.safety)
            elif lr is not None:
                stab = stability(setup.rule, lr.lambda_max + setup.rule.l2, c=s.safety)
        blocks_out.append(BlockCurvature(
            name=name,
            numel=op.numel(b),
            grad_norm=float(torch.linalg.vector_norm(g.to(torch.float64))),
            trace=tr[0],
            trace_se=tr[1],
            lambda_max=None if lr is None else lr.lambda_max,
            lambda_min=None if lr is None else lr.lambda_min,
            eig_residual_max=None if lr is None else lr.residual_max,
            eig_residual_min=None if lr is None else lr.residual_min,
            lanczos_steps=0 if lr is None else lr.steps,
            lambda_precond=None if pr is None else pr.lambda_max,
            precond_residual=None if pr is None else pr.residual_max,
            row_fro=None if rn is None else rn[0],
            row_fro_se=None if rn is None else rn[1],
            stability=stab,
            hvps=hvps[b],
        ))

    edges = []
    for i, a in enumerate(coupled):
        for j in range(i + 1, len(coupled)):
            b = coupled[j]
            c = coupling(samples[a], samples[b])
            edges.append(EdgeCurvature(
                source=op.blocks[a].name,
                target=op.blocks[b].name,
                kappa=c.kappa.value,
                kappa_se=c.kappa.se,
                hfro=c.hfro.value,
                hfro_se=c.hfro.se,
                rho=None if rho is None else float(rho[i, j]),
            ))
    unused = tuple(op.unused_blocks())
    if unused:
        notes.append(f"blocks with parameters that have no gradient (zero rows): {list(unused)}")
    return CurvatureSnapshot(
        blocks=tuple(blocks_out),
        edges=tuple(edges),
        hvp_count=op.hvp_count - start_count,
        seconds=time.perf_counter() - t0,
        settings=s,
        unused_blocks=unused,
        notes=tuple(notes),
    )
