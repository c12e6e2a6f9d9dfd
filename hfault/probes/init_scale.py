"""How a component's weight was initialized, in units that do not depend on the architecture.

A weight matrix ``W`` with fan-in ``n`` maps unit-variance inputs to outputs of RMS about
``rms(W)·√n``; every standard initializer keeps that near 1 (PyTorch's default Linear/Conv init
gives 1/√3 ≈ 0.58, Kaiming and Xavier ≤ √2, transformers' N(0, 0.02) about 0.16 at width 64 and
0.55 at 768). A layer initialized 50× too large sits at 8-30, far outside that band, whatever the
width, the framework or the optimizer. A mean shift is caught by ``|mean(W)|/std(W)``, which is
about 1/√numel for any zero-mean initializer. Read once, before the first update: these are
properties of the initialization, not of training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from hfault.capture.hooks import Listener
from hfault.components import Component

_TRANSPOSED = {"Conv1D"}  # transformers' GPT-2 Conv1D stores (in, out)
_NOT_A_MAP = {"Embedding", "EmbeddingBag"}  # a lookup table: no fan-in to scale against
_MAPS = ("Linear", "Conv", "Bilinear")
"""Module types whose weight maps its inputs even with a fan-in of 1 (``nn.Linear(1, d)``)."""


def init_statistics(component: Component) -> dict[str, Any] | None:
    """``{"scale", "mean_ratio", "fan_in", "shape"}`` of the component's largest ≥2-D weight, or
    ``None`` when it has none (biases, norm gains, scalars) or it is an embedding table. A
    parameter of fan-in 1 on a module that is not a linear or convolution layer is a column of
    per-unit scalars in a broadcast shape (Swin V2's ``(heads, 1, 1)`` logit scale, set to
    log 10), not a map: it has no fan-in to scale against either.

    A weight of three or more axes outside a convolution is a stack of matrices (Mixtral's
    ``(experts, 2·ffn, hidden)`` expert weights, per-head projections, a ``(1, positions, d)``
    table): each matrix maps its own input, one of its last two axes, stored either way round;
    the smaller is taken, so a stack is never read as one matrix of fan-in ``2·ffn·hidden``
    (which made a healthy Mixtral's experts look 16x too large)."""
    if component.table or component.module_type in _NOT_A_MAP:
        return None
    parts = [p for p in component.parts if p.param.dim() >= 2]
    if not parts:
        return None
    part = max(parts, key=lambda p: p.numel)
    with torch.no_grad():
        w = part.view(part.param.detach()).to(torch.float64)
        if w.numel() < 2 or not bool(torch.isfinite(w).all()):
            return None
        shape = tuple(w.shape)
        if component.module_type in _TRANSPOSED:
            fan_in = shape[0]
        elif len(shape) >= 3 and "Conv" not in (component.module_type or ""):
            fan_in = min(shape[-2:])
        else:
            fan_in = w.numel() // shape[0]
        if fan_in == 1 and not any(kind in (component.module_type or "") for kind in _MAPS):
            return None
        rms = float(w.square().mean().sqrt())
        std = float(w.std())
        mean = float(w.mean())
    return {
        "scale": rms * math.sqrt(fan_in),
        "mean_ratio": abs(mean) / std if std > 0 else None,
        "fan_in": int(fan_in),
        "shape": list(shape),
    }


class InitScaleProbe(Listener):
    """Sets ``Component.init`` when the components are built; a component that was already
    there keeps what was read before its first update."""

    def __init__(self) -> None:
        self._known: dict[str, dict[str, Any] | None] = {}

    def components_built(self, components: Sequence[Component]) -> None:
        known, self._known = self._known, {}
        for comp in components:
            comp.init = known[comp.name] if comp.name in known else init_statistics(comp)
            self._known[comp.name] = comp.init
