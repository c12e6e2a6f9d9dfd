"""The 2-norms of many tensors at once: float64 on a GPU, float32 chunks summed in float64 on a CPU.

``torch._foreach_norm(ts, 2, dtype=torch.float64)`` is one fused kernel on a GPU, but on a CPU it
first copies every float32 tensor to float64: at nanoGPT's size (10.7M parameters, gradients and
weights) that copy is most of hfault's cost on a step it does not measure. Here, on a CPU, each
contiguous float32/float16/bfloat16 tensor is cut into chunks of :data:`CHUNK` entries, each
chunk's norm is taken in float32 (one ``_foreach_norm`` over all chunks) and the squares are
summed per tensor in float64: within a few 1e-6 of the float64 norm (3e-7 on nanoGPT-sized float32
tensors, 1.3e-6 on a float16 chunk), at half the time.

The float32 chunk norm overflows to ``inf`` for finite entries above ~1e17, where the float64
norm stays finite; so a non-finite result is only a screen: :func:`exact_norms` is the float64
norm that decides (every norm finite exactly when every tensor is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

CHUNK = 1 << 16
"""Entries per float32 partial norm: its rounding stays near 1e-7 of the chunk's norm."""

_SCREENED = (torch.float32, torch.float16, torch.bfloat16)


def _chunkable(t: torch.Tensor) -> bool:
    # ``is_cpu``, not ``device.type``: this runs for every tensor of every step, and building a
    # device object costs more than the rest of the test.
    return t.is_cpu and t.dtype in _SCREENED and t.layout == torch.strided and t.is_contiguous()


def stack(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of scalars, moved to the first one's device if they are not all there."""
    device = values[0].device
    if any(v.device != device for v in values):  # a model split over devices
        values = [v.to(device) for v in values]
    return torch.stack(list(values))


def exact_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float64 norms (finite for any finite float32/float16/bfloat16 tensor), stacked on the
    first tensor's device."""
    return stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float64))


def fast_norms(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Float64 norms of ``tensors`` as one float64 tensor, and whether any was taken in float32
    chunks (then a non-finite norm may be an overflow: ask :func:`exact_norms`). A tensor on the
    CPU, contiguous and of a float32 or narrower dtype is taken in chunks, any other exactly:
    the choice depends on the tensor alone, so a tensor gets the same bits in any list (a ratio
    of two norms of the same gradient is exactly 1)."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device="cpu"), False
    chunked = [i for i, t in enumerate(tensors) if _chunkable(t)]
    if not chunked:
        return exact_norms(tensors), False
    chunks: list[torch.Tensor] = []
    owners: list[int] = []
    split = False
    for i in chunked:
        t = tensors[i]
        n = t.numel()
        if n <= CHUNK:  # one chunk: the tensor as it is
            chunks.append(t)
            owners.append(i)
            continue
        split = True
        flat = t.reshape(-1)
        for start in range(0, n, CHUNK):
            chunks.append(flat[start:start + CHUNK])
            owners.append(i)
    partial = torch.stack(torch._foreach_norm(chunks, 2, dtype=torch.float32)).to(torch.float64)
    if not split and len(chunked) == len(tensors):
        return partial, True
    squares = torch.zeros(len(tensors), dtype=torch.float64, device=partial.device)
    squares.index_add_(0, torch.tensor(owners, device=partial.device), partial * partial)
    norms = squares.sqrt()
    if len(chunked) < len(tensors):
        taken = set(chunked)
        rest = [i for i in range(len(tensors)) if i not in taken]
        norms[rest] = exact_norms([tensors[i] for i in rest]).to(norms.device)
    return norms, True


def sum_of_squares(tensors: Sequence[torch.Tensor]) -> float:
    """Σ‖t‖² over ``tensors`` as a Python float (one host read), taken as :func:`fast_norms`
    takes norms: a 128M-entry embedding table (LUKE's entity vocabulary) costs a few hundredths
    of a second where a float64 copy of it costs seconds and a gigabyte."""
    if not tensors:
        return 0.0
    detached = [t.detach() for t in tensors]
    with torch.no_grad():
        norms, screened = fast_norms(detached)
        total = float(norms.square().sum())
        if screened and not math.isfinite(total):
            total = float(exact_norms(detached).square().sum())
    return total
