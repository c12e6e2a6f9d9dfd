"""The math SDPA kernel on demand.

Fused attention kernels (flash, memory-efficient, cuDNN; the CPU flash kernel too) have no
double backward, and ``scaled_dot_product_attention`` picks its kernel at forward time. A step
whose loss graph will be differentiated twice (a curvature measurement) must therefore run its
forward on the math kernel: switched on before that forward, off once the measurement is done.
"""

from __future__ import annotations

import torch


class MathAttention:
    """Force the math SDPA backend (the only one with double backward) between ``enter`` and
    ``exit``; the flags are process-global, so the previous values are restored."""

    _FLAGS = ("flash_sdp", "mem_efficient_sdp", "cudnn_sdp")

    def __init__(self) -> None:
        self._saved: dict[str, bool] | None = None

    def enter(self) -> None:
        if self._saved is not None:
            return
        cuda = torch.backends.cuda
        self._saved = {f: getattr(cuda, f"{f}_enabled")() for f in self._FLAGS}
        for f in self._FLAGS:
            getattr(cuda, f"enable_{f}")(False)

    def exit(self) -> None:
        if self._saved is None:
            return
        for f, on in self._saved.items():
            getattr(torch.backends.cuda, f"enable_{f}")(on)
        self._saved = None
