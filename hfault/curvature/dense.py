"""Dense reference Hessian for tests and benchmarks (tiny models only).

Rows are built one at a time by double backward, in the params' dtype (use float64 models). This is
the reference because ``torch.func.hessian`` and other ``jacrev``-based Hessians are wrong on
LayerNorm models in torch 2.13 (docs/curvature.md, "The reference Hessian is built by double
backward"); double-backward rows agree with HVPs to rounding. ``rows=`` limits the work to the
rows of some params while keeping every column, which is all that block traces, spectra, couplings
and row norms of those blocks need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hfault.curvature.blocks import Block

__all__ = ["DenseHessian", "dense_hessian"]


@dataclass
class DenseHessian:
    """Rows ``H[rows, :]`` (float64) and the flat layout of all params.

    ``offsets[i]`` is where param ``i`` starts in the flat parameter vector; ``rows`` lists the
    flat indices whose rows were computed (all of them by default).
    """

    matrix: Tensor
    offsets: list[int]
    shapes: list[tuple[int, ...]]
    rows: Tensor

    def flat_indices(self, block: Block) -> Tensor:
        """Flat parameter indices of ``block``, in the block's flat order."""
        idx = []
        for part in block.parts:
            shape = self.shapes[part.index]
            n = 1
            for s in shape:
                n *= s
            local = torch.arange(n).reshape(shape) if shape else torch.arange(1)
            idx.append(part.view(local).reshape(-1) + self.offsets[part.index])
        return torch.cat(idx)

    def _row_pos(self, flat: Tensor) -> Tensor:
        lookup = torch.full((self.offsets[-1],), -1, dtype=torch.long)
        lookup[self.rows] = torch.arange(len(self.rows))
        pos = lookup[flat]
        if bool((pos < 0).any()):
            raise KeyError("block rows were not computed")
        return pos

    def sub(self, a: Block, b: Block) -> Tensor:
        """``H_ab`` (rows of ``a``, columns of ``b``)."""
        return self.matrix[self._row_pos(self.flat_indices(a))][:, self.flat_indices(b)]

    def row(self, a: Block) -> Tensor:
        """``H_a·``: the rows of ``a`` over all columns."""
        return self.matrix[self._row_pos(self.flat_indices(a))]

    def trace(self, b: Block) -> float:
        """Exact ``Tr H_bb``."""
        return float(torch.diagonal(self.sub(b, b)).sum())

    def eigvalsh(self, b: Block) -> Tensor:
        """Eigenvalues of ``H_bb`` (ascending, symmetrized)."""
        h = self.sub(b, b)
        return torch.linalg.eigvalsh(0.5 * (h + h.T))

    def fro(self, a: Block, b: Block) -> float:
        """Exact ``‖H_ab‖_F``."""
        return float(torch.linalg.matrix_norm(self.sub(a, b)))

    def row_fro(self, a: Block) -> float:
        """Exact ``‖H_a·‖_F`` over all params."""
        return float(torch.linalg.matrix_norm(self.row(a)))

    def kappa(self, a: Block, b: Block) -> float:
        """Exact row-normalized coupling ``‖H_ab‖ / sqrt(‖H_a·‖ ‖H_b·‖)``."""
        den = (self.row_fro(a) * self.row_fro(b)) ** 0.5
        return self.fro(a, b) / den if den > 0 else float("nan")


def dense_hessian(
    loss: Tensor,
    params: Sequence[Tensor],
    *,
    rows: Sequence[int] | None = None,
    check_symmetry: bool = True,
) -> DenseHessian:
    """Dense Hessian rows by double backward, one ``autograd.grad`` per row (float64 result).

    Args:
        loss: scalar loss with its graph alive (kept: ``retain_graph=True``).
        params: all params (columns).
        rows: param indices whose rows to compute (default: all). With all rows and
            ``check_symmetry``, asserts ``max|H - Hᵀ| < 1e-12 · max(1, max|H|)`` on the
            computed square sub-block ``H[rows, rows]``.
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, retain_graph=True,
                                allow_unused=True)
    shapes = [tuple(p.shape) for p in params]
    sizes = [p.numel() for p in params]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    row_params = list(range(len(params))) if rows is None else sorted(set(rows))
    row_idx: list[int] = []
    out: list[Tensor] = []
    for i in row_params:
        g = grads[i]
        flat = None if g is None else g.reshape(-1)
        for j in range(sizes[i]):
            row_idx.append(offsets[i] + j)
            if flat is None or not flat.requires_grad:
                out.append(torch.zeros(offsets[-1], dtype=torch.float64))
                continue
            res = torch.autograd.grad(flat[j], params, retain_graph=True, allow_unused=True)
            out.append(
                torch.cat([
                    torch.zeros(n, dtype=torch.float64) if r is None
                    else r.detach().reshape(-1).to("cpu", torch.float64)
                    for r, n in zip(res, sizes, strict=True)
                ])
            )
    matrix = torch.stack(out)
    h = DenseHessian(matrix, offsets, shapes, torch.tensor(row_idx, dtype=torch.long))
    if check_symmetry:
        square = matrix[:, h.rows]
        asym = float((square - square.T).abs().max())
        scale = max(1.0, float(matrix.abs().max()))
        if asym >= 1e-12 * scale:
            raise AssertionError(f"dense Hessian not symmetric: {asym:.3e}")
    return h
