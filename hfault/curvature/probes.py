"""Random probes from a caller-owned ``torch.Generator``.

Probes never use the global RNG: hfault runs inside the user's training loop and must not shift
the user's random stream (dropout masks, shuffling). The generator's device may differ from the
block's (a CPU generator for CUDA params): probes are drawn on the generator's device and moved.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Estimate", "rademacher"]


def rademacher(
    shape: int | tuple[int, ...],
    *,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Tensor:
    """±1 entries with equal probability (Rademacher), drawn from ``generator``."""
    size = (shape,) if isinstance(shape, int) else tuple(shape)
    bits = torch.randint(0, 2, size, generator=generator, device=generator.device,
                         dtype=torch.int8)
    return (bits.to(device=device, dtype=dtype) * 2 - 1)


class Estimate(tuple[float, float]):
    """A ``(value, se)`` pair: a point estimate with its standard error (``nan`` if unknown)."""

    __slots__ = ()

    def __new__(cls, value: float, se: float) -> Estimate:
        return super().__new__(cls, (float(value), float(se)))

    @property
    def value(self) -> float:
        """The point estimate."""
        return self[0]

    @property
    def se(self) -> float:
        """Its standard error."""
        return self[1]
