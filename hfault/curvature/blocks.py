"""Blocks: the components whose Hessian sub-blocks are measured.

A block is a set of *parts*; a part is a whole parameter tensor or a contiguous slice of one along
one dimension (q/k/v rows of a fused ``in_proj_weight``, columns of GPT-2's ``Conv1D`` ``c_attn``).
Parts index into the parameter list handed to the operator, so tied parameters (one ``Parameter``
object used twice) are one part of one block, never two.

A block's *flat vector* is the concatenation, in part order, of each part's slice flattened in
row-major order. All estimators work on flat vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["Block", "BlockPart", "validate_blocks", "whole"]


@dataclass(frozen=True)
class BlockPart:
    """A parameter tensor, or the slice ``start:stop`` of it along ``dim``.

    ``index`` is the position in the params list given to the operator; ``start = stop = None``
    means the whole tensor.
    """

    index: int
    dim: int = 0
    start: int | None = None
    stop: int | None = None

    @property
    def is_whole(self) -> bool:
        """True when the part is the whole tensor (no slice)."""
        return self.start is None and self.stop is None

    def bounds(self, shape: Sequence[int]) -> tuple[int, int]:
        """Resolved ``(start, stop)`` along ``dim`` for a tensor of this shape."""
        if self.is_whole:
            return 0, int(shape[self.dim]) if len(shape) else 1
        size = int(shape[self.dim])
        start = 0 if self.start is None else self.start
        stop = size if self.stop is None else self.stop
        return start, stop

    def view(self, t: Tensor) -> Tensor:
        """The slice of ``t`` this part denotes (a view, no copy)."""
        if self.is_whole:
            return t
        start, stop = self.bounds(t.shape)
        return t.narrow(self.dim, start, stop - start)

    def numel(self, shape: Sequence[int]) -> int:
        """Number of scalars in the part for a tensor of this shape."""
        n = 1
        for s in shape:
            n *= int(s)
        if self.is_whole or not len(shape):
            return n
        start, stop = self.bounds(shape)
        return n // int(shape[self.dim]) * (stop - start)


@dataclass(frozen=True)
class Block:
    """A named component: an ordered tuple of parts."""

    name: str
    parts: tuple[BlockPart, ...]


def whole(name: str, *indices: int) -> Block:
    """A block made of whole parameters (``whole("fc1", 0, 1)`` = weight and bias)."""
    return Block(name, tuple(BlockPart(i) for i in indices))


def validate_blocks(blocks: Sequence[Block], params: Sequence[Tensor]) -> None:
    """Raise ``ValueError`` unless names are unique, parts in range and no scalar in two parts.

    Slices of one tensor must all be taken along the same dimension (disjointness is checked on
    intervals along it).
    """
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate block names in {names}")
    spans: dict[int, list[tuple[int | None, int, int, str]]] = {}
    for b in blocks:
        if not b.parts:
            raise ValueError(f"block {b.name!r} has no parts")
        for part in b.parts:
            if not 0 <= part.index < len(params):
                raise ValueError(f"block {b.name!r}: index {part.index} out of range")
            shape = tuple(params[part.index].shape)
            if part.is_whole:
                dim: int | None = None
                start, stop = 0, 1
            else:
                if not 0 <= part.dim < len(shape):
                    raise ValueError(f"block {b.name!r}: dim {part.dim} invalid for {shape}")
                dim = part.dim
                start, stop = part.bounds(shape)
                if not 0 <= start < stop <= shape[part.dim]:
                    raise ValueError(f"block {b.name!r}: slice {start}:{stop} invalid for {shape}")
            for odim, ostart, ostop, oname in spans.get(part.index, []):
                if dim is None or odim is None:
                    clash = True
                elif dim != odim:
                    raise ValueError(
                        f"blocks {oname!r} and {b.name!r} slice param {part.index} along "
                        "different dims"
                    )
                else:
                    clash = start < ostop and ostart < stop
                if clash:
                    raise ValueError(
                        f"blocks {oname!r} and {b.name!r} overlap on param {part.index}"
                    )
            spans.setdefault(part.index, []).append((dim, start, stop, b.name))
