"""Hessian-vector products on the user's own autograd graph (double backward).

``HessianOperator`` takes the graph that already exists when the training script calls
``loss.backward()``: it builds ``g = dL/dθ`` once with ``create_graph=True`` and then every product
``H v`` is one more backward through ``g`` (Pearlmutter). Nothing re-runs the forward, nothing
touches ``.grad`` and every call keeps the graph (``retain_graph=True``), so the caller can still
run the user's original ``backward`` afterwards and get exactly the gradients it would have had.

Block-restricted products are cheap because autograd only walks the part of the graph that
connects the chosen outputs to the chosen inputs:

* ``column(b, v_b)`` = ``H[:, b] v_b``: grad of ``Σ_parts g_part · v_part`` over *all* params. One
  product gives block ``b``'s coupling column (``(H v_b)_a`` for every block ``a``).
* ``hvp_bb(b, v_b)`` = ``H_bb v_b``: the same with only ``b``'s params as inputs (cheaper).

Results follow the parameters' device and dtype; reductions are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hfault.curvature.blocks import Block, validate_blocks

__all__ = ["Column", "HessianOperator", "dot64"]


def dot64(a: Tensor, b: Tensor) -> Tensor:
    """Dot product of two flat vectors, accumulated in float64 on their device (0-d tensor)."""
    return torch.dot(a.to(torch.float64), b.to(torch.float64))


@dataclass
class Column:
    """``H[:, b] v_b`` for one source block ``b``.

    ``blocks[a]`` is the flat restriction to block ``a`` (same order as the operator's blocks);
    ``norm_sq`` is ``‖H[:, b] v_b‖²`` over *all* parameters given to the operator (float64, 0-d),
    which is what row-normalized couplings need; ``block_sq[a]`` is ``‖blocks[a]‖²`` (float64,
    shape ``(L,)``).
    """

    blocks: list[Tensor]
    norm_sq: Tensor
    block_sq: Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.block_sq is None:
            self.block_sq = _sq_norms(self.blocks, self.norm_sq.device)


def _sq_norms(ts: Sequence[Tensor], device: torch.device) -> Tensor:
    """``[‖t‖² for t in ts]`` accumulated in float64, as one fused reduction (shape ``(len,)``)."""
    if not ts:
        return torch.zeros(0, dtype=torch.float64, device=device)
    norms = torch.stack(torch._foreach_norm(list(ts), 2, dtype=torch.float64))
    return (norms * norms).to(device)


class HessianOperator:
    """Block-structured Hessian-vector products on one retained graph.

    Args:
        loss: scalar loss whose graph is still alive (before the user's ``backward``).
        params: unique parameter tensors (tied parameters once). Params that do not require grad
            or do not reach the loss are treated as zero rows (listed in ``unused``).
        blocks: the components, as slices of ``params`` (see ``blocks.py``); need not cover all
            params. They must not overlap.
        loss_scale: the factor the loss carries (``GradScaler``); ``g`` and every product are
            divided by it.
    """

    def __init__(
        self,
        loss: Tensor,
        params: Sequence[Tensor],
        blocks: Sequence[Block],
        *,
        loss_scale: float = 1.0,
    ) -> None:
        if loss.numel() != 1:
            raise ValueError("loss must be a scalar")
        if not loss_scale > 0:
            raise ValueError("loss_scale must be positive")
        self._params: list[Tensor] = list(params)
        self._blocks: list[Block] = list(blocks)
        validate_blocks(self._blocks, self._params)
        self._index = {b.name: i for i, b in enumerate(self._blocks)}
        self._inv_scale = 1.0 / float(loss_scale)
        self.hvp_count = 0
        """Number of Hessian-vector products computed so far (a batched call counts each vector)."""

        trainable = [i for i, p in enumerate(self._params) if p.requires_grad]
        grads = torch.autograd.grad(
            loss,
            [self._params[i] for i in trainable],
            create_graph=True,
            retain_graph=True,
            allow_unused=True,
        )
        self._grads: list[Tensor | None] = [None] * len(self._params)
        for i, g in zip(trainable, grads, strict=True):
            self._grads[i] = g
        self.unused: tuple[int, ...] = tuple(i for i, g in enumerate(self._grads) if g is None)
        """Indices of params with no gradient (frozen or not reaching the loss): zero rows."""
        self.linear: tuple[int, ...] = tuple(
            i for i, g in enumerate(self._grads) if g is not None and not g.requires_grad
        )
        """Indices whose gradient does not depend on any parameter: zero Hessian rows."""
        self._inputs = [i for i in trainable if i not in self.unused]
        self._numel = [
            sum(part.numel(tuple(self._params[part.index].shape)) for part in b.parts)
            for b in self._blocks
        ]
        self._closed = False

    # ------------------------------------------------------------------ structure
    @property
    def blocks(self) -> tuple[Block, ...]:
        """The blocks, in order."""
        return tuple(self._blocks)

    @property
    def params(self) -> tuple[Tensor, ...]:
        """The parameter tensors, in order."""
        return tuple(self._params)

    def index(self, name: str) -> int:
        """Position of the block called ``name``."""
        return self._index[name]

    def numel(self, b: int) -> int:
        """Number of scalars in block ``b``."""
        return self._numel[b]

    def dtype(self, b: int) -> torch.dtype:
        """dtype of block ``b`` (that of its first part)."""
        return self._params[self._blocks[b].parts[0].index].dtype

    def device(self, b: int) -> torch.device:
        """Device of block ``b`` (that of its first part)."""
        return self._params[self._blocks[b].parts[0].index].device

    def unused_blocks(self) -> list[str]:
        """Names of blocks with at least one part whose gradient is missing (zero rows)."""
        bad = set(self.unused)
        return [b.name for b in self._blocks if any(p.index in bad for p in b.parts)]

    # ------------------------------------------------------------------ flat vectors
    def flatten(self, b: int, per_param: Sequence[Tensor | None]) -> Tensor:
        """Flat block-``b`` vector from per-parameter tensors (``None`` → zeros)."""
        pieces = []
        for part in self._blocks[b].parts:
            t = per_param[part.index]
            if t is None:
                p = self._params[part.index]
                pieces.append(
                    torch.zeros(part.numel(tuple(p.shape)), dtype=p.dtype, device=p.device)
                )
            else:
                pieces.append(part.view(t).reshape(-1))
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def _split(self, b: int, v: Tensor) -> list[Tensor]:
        """Cut a flat block vector (or a batch ``(k, n_b)``) into part-shaped tensors."""
        out = []
        offset = 0
        batch = v.shape[:-1]
        for part in self._blocks[b].parts:
            p = self._params[part.index]
            shape = tuple(part.view(p).shape) if p.dim() else ()
            n = part.numel(tuple(p.shape))
            piece = v[..., offset : offset + n].reshape((*batch, *shape))
            out.append(piece.to(dtype=p.dtype, device=p.device))
            offset += n
        if offset != v.shape[-1]:
            raise ValueError(f"vector of size {v.shape[-1]} for block of size {offset}")
        return out

    def gradient_node(self, i: int) -> torch.autograd.graph.Node | None:
        """The autograd node of parameter ``i``'s gradient (built with ``create_graph``): where
        its second derivatives come from. None when it has no gradient, a constant one, or the
        operator is closed."""
        g = self._grads[i]
        return None if g is None else g.grad_fn

    def gradient(self, b: int) -> Tensor:
        """Flat ``g_b`` (detached, divided by the loss scale)."""
        self._check_open()
        per = [None if g is None else g.detach() for g in self._grads]
        return self.flatten(b, per) * self._inv_scale

    # ------------------------------------------------------------------ products
    def _grad(
        self, b: int, v: Tensor, inputs: list[int], batched: bool
    ) -> list[Tensor | None] | None:
        """Double backward of ``Σ g_b·v`` w.r.t. ``inputs``; ``None`` if ``g_b`` is constant."""
        self._check_open()
        outs, gouts = [], []
        for part, piece in zip(self._blocks[b].parts, self._split(b, v), strict=True):
            g = self._grads[part.index]
            if g is None or not g.requires_grad:
                continue
            outs.append(part.view(g))
            gouts.append(piece)
        self.hvp_count += v.shape[0] if batched else 1
        if not outs or not inputs:
            return None
        res = torch.autograd.grad(
            outs,
            [self._params[i] for i in inputs],
            grad_outputs=gouts,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=batched,
        )
        per: list[Tensor | None] = [None] * len(self._params)
        for i, r in zip(inputs, res, strict=True):
            per[i] = r if r is None or self._inv_scale == 1.0 else r * self._inv_scale
        return per

    def column(self, b: int, v: Tensor) -> Column:
        """``H[:, b] v`` restricted to every block, plus its squared norm over all params."""
        per = self._grad(b, v, self._inputs, batched=False)
        if per is None:
            per = [None] * len(self._params)
        return self._make_column(per, v.device)

    def _make_column(self, per: list[Tensor | None], device: torch.device) -> Column:
        present = [r for r in per if r is not None]
        norm_sq = _sq_norms(present, device).sum()
        blocks = [self.flatten(a, per) for a in range(len(self._blocks))]
        return Column(blocks, norm_sq, _sq_norms(blocks, device))

    def columns(self, b: int, vs: Tensor) -> list[Column]:
        """``column`` for a batch ``vs`` of shape ``(k, n_b)`` in one vmapped backward.

        Uses ``is_grads_batched``; falls back to a loop if an op has no batching rule.
        """
        try:
            per = self._grad(b, vs, self._inputs, batched=True)
        except RuntimeError:
            self.hvp_count -= vs.shape[0]
            return [self.column(b, v) for v in vs]
        k = vs.shape[0]
        if per is None:
            return [
                Column(
                    [self.flatten(a, [None] * len(self._params)) for a in range(len(self._blocks))],
                    torch.zeros((), dtype=torch.float64, device=vs.device),
                )
                for _ in range(k)
            ]
        return [self._make_column([None if r is None else r[j] for r in per], vs.device)
                for j in range(k)]

    def hvp_bb(self, b: int, v: Tensor) -> Tensor:
        """``H_bb v`` (flat): the product restricted to block ``b`` on both sides."""
        inputs = sorted({p.index for p in self._blocks[b].parts} - set(self.unused))
        per = self._grad(b, v, inputs, batched=False)
        if per is None:
            per = [None] * len(self._params)
        return self.flatten(b, per)

    def hvp_blocks(self, vs: Sequence[Tensor]) -> list[Tensor]:
        """``H v`` for ``v`` given per block (zero outside blocks), restricted to every block."""
        self._check_open()
        outs, gouts = [], []
        for b, v in enumerate(vs):
            for part, piece in zip(self._blocks[b].parts, self._split(b, v), strict=True):
                g = self._grads[part.index]
                if g is not None and g.requires_grad:
                    outs.append(part.view(g))
                    gouts.append(piece)
        self.hvp_count += 1
        per: list[Tensor | None] = [None] * len(self._params)
        if outs:
            res = torch.autograd.grad(
                outs,
                [self._params[i] for i in self._inputs],
                grad_outputs=gouts,
                retain_graph=True,
                allow_unused=True,
            )
            for i, r in zip(self._inputs, res, strict=True):
                per[i] = r if r is None or self._inv_scale == 1.0 else r * self._inv_scale
        return [self.flatten(a, per) for a in range(len(self._blocks))]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Drop the references to ``g`` (and its double-backward graph). Idempotent."""
        self._grads = [None] * len(self._params)
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("HessianOperator is closed")

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
