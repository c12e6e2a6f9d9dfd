"""Whether each component's ``.grad`` was finite right after ``backward`` returned, before the
script's own gradient processing.

The optimizer-step hook sees gradients only after that processing: ``clip_grad_norm_`` with a
NaN total norm multiplies *every* gradient by NaN, which would hide where the NaN came from.
One fused float64 norm per gradient (finite exactly when the gradient is), kept on the device
and read only when a step's gradients are bad.

Most loops hand backward's gradients to the optimizer untouched; for them these norms are the
step's own gradient norms (``probes.fused_stats``) computed a second time. So after each backward
the watch also keeps which gradient tensors backward left (weak references and their
``_version``, which every in-place op bumps), and at the step compares: once a step has seen them
untouched, later backwards skip the norms, until a step finds them changed (clipping, an AMP
unscale, a new ``.grad``): from then on every backward takes them again. A loop that starts
changing its gradients mid-run has no flags at the first step that does; a NaN localized there
is then placed by the step's own gradients (where the script's changes spread it: by forward
order among the non-finite ones). Writes through ``.data`` or ``.numpy()`` bump no version and
count as untouched.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from hfault.probes.many_norms import stack


def _left(params: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, Any, int]]:
    """Each parameter with a weak reference to its ``.grad`` (None if it has none) and the
    gradient's version."""
    out: list[tuple[torch.Tensor, Any, int]] = []
    for p in params:
        g = p.grad
        out.append((p, None, 0) if g is None else (p, weakref.ref(g), g._version))
    return out


def _changed(left: Sequence[tuple[torch.Tensor, Any, int]]) -> bool:
    for p, ref, version in left:
        g = p.grad
        if ref is None:
            if g is not None:
                return True
        elif g is None or g is not ref() or g._version != version:
            return True
    return False


class GradientWatch:
    """The float64 norms of every component's gradient views as the last backward left them
    (when that backward took them, see the module docstring)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.owners: list[int] = []
        self.norms: torch.Tensor | None = None
        self.touching = False
        """A step found gradients changed since backward left them: every backward takes its
        norms."""
        self._wanted = True
        """Whether the next backward takes its norms (until a step has seen them untouched)."""
        self._params: list[torch.Tensor] = []
        self._params_for: object = None
        self._left: list[tuple[torch.Tensor, Any, int]] = []

    def record(self, components: Sequence[Any]) -> None:
        """After a backward: the norms (when wanted) and what backward left."""
        if components is not self._params_for:
            params = {id(part.param): part.param for comp in components for part in comp.parts}
            self._params = list(params.values())
            self._params_for = components
        self._left = _left(self._params)
        self.names, self.owners, self.norms = [], [], None
        if self._wanted or self.touching:
            self._measure(components)

    def _measure(self, components: Iterable[Any]) -> None:
        names: list[str] = []
        owners: list[int] = []
        views: list[torch.Tensor] = []
        for comp in components:
            for part in comp.parts:
                if part.param.grad is not None:
                    if not names or names[-1] != comp.name:
                        names.append(comp.name)
                    owners.append(len(names) - 1)
                    views.append(part.view(part.param.grad))
        self.names, self.owners = names, owners
        if views:
            with torch.no_grad():
                self.norms = stack(torch._foreach_norm(views, 2, dtype=torch.float64))

    def step(self) -> None:
        """At an optimizer step (the gradients it applies are final): whether the script
        changed them since the last backward decides whether later backwards take norms."""
        if not self._left:
            return
        if _changed(self._left):
            self.touching = True
        self._left = []
        self._wanted = False

    def bad_components(self) -> list[str] | None:
        """Components whose gradient was non-finite after the last backward (None: no record)."""
        if self.norms is None:
            return None
        bad: list[str] = []
        for owner, value in zip(self.owners, self.norms.tolist(), strict=True):
            name = self.names[owner]
            if not math.isfinite(value) and (not bad or bad[-1] != name):
                bad.append(name)
        return bad

    def clear(self) -> None:
        self.names, self.owners, self.norms = [], [], None
        self._left = []
