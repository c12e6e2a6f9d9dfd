"""Non-finite values, localized the DeepLocalize way: the first module whose forward output turns
NaN/Inf (in completion order, so the innermost culprit is named first), or the parameter whose
gradient does, and the step where it happens.

Checks are recorded as device tensors and read only when the loss itself is non-finite, so a
healthy run pays one reduction per module output and no extra host synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class NonFiniteEvent:
    """Where a NaN/Inf first appeared: ``kind`` is activation, loss, gradient or weight."""

    kind: str
    step: int
    where: str | None
    value: str
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "step": self.step,
            "where": self.where,
            "value": self.value,
            "detail": self.detail,
        }


def _tensors(output: object) -> Iterable[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                yield item
    elif isinstance(output, dict):
        for item in output.values():
            if isinstance(item, torch.Tensor):
                yield item


class ActivationWatch:
    """Collects, per forward pass, a non-finite flag for each module output."""

    MAX_PENDING = 20000

    def __init__(self) -> None:
        self.pending: list[tuple[nn.Module, torch.Tensor]] = []

    def record(self, module: nn.Module, output: object) -> None:
        if not torch.is_grad_enabled():
            return
        flags = [
            ~torch.isfinite(t.detach()).all()
            for t in _tensors(output)
            if t.is_floating_point() or t.is_complex()
        ]
        if not flags:
            return
        if len(self.pending) >= self.MAX_PENDING:
            del self.pending[: self.MAX_PENDING // 2]
        flag = flags[0] if len(flags) == 1 else torch.stack(flags).any()
        self.pending.append((module, flag))

    def first_bad(self) -> nn.Module | None:
        """The first module (in completion order) whose output was non-finite, if any."""
        if not self.pending:
            return None
        flags = torch.stack([f.to("cpu") for _, f in self.pending]).tolist()
        for (module, _), bad in zip(self.pending, flags, strict=True):
            if bad:
                return module
        return None

    def clear(self) -> None:
        self.pending.clear()


def describe_value(x: float) -> str:
    if x != x:
        return "nan"
    return "inf" if x > 0 else "-inf"


class GradientWatch:
    """Non-finite flags of each component's ``.grad`` right after ``backward`` returns.

    The optimizer-step hook sees gradients only after the script's own post-processing:
    ``clip_grad_norm_`` with a NaN total norm multiplies *every* gradient by NaN, which would hide
    where the NaN came from. Flags are device tensors, read only when a step's gradients are bad.
    """

    def __init__(self) -> None:
        self.flags: dict[str, torch.Tensor] = {}

    def record(self, components: Iterable[Any]) -> None:
        flags: dict[str, torch.Tensor] = {}
        for comp in components:
            views = [part.view(part.param.grad) for part in comp.parts
                     if part.param.grad is not None]
            if views:
                bad = [~torch.isfinite(v.detach()).all() for v in views]
                flags[comp.name] = bad[0] if len(bad) == 1 else torch.stack(bad).any()
        self.flags = flags

    def bad_components(self) -> list[str] | None:
        """Components whose gradient was non-finite after the last backward (None: no record)."""
        if not self.flags:
            return None
        names = list(self.flags)
        values = torch.stack([f.to("cpu") for f in self.flags.values()]).tolist()
        return [n for n, bad in zip(names, values, strict=True) if bad]

    def clear(self) -> None:
        self.flags = {}
