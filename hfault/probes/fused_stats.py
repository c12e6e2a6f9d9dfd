"""One optimizer step's first-order statistics of all its components, in a few fused kernels.

Per component and per step the statistics need ‖g‖, ‖θ‖ and the number of zero gradient entries.
Taken one component at a time they cost several kernels and three host reads each; here one
fused norm (:mod:`hfault.probes.many_norms`: float64 on a GPU, float32 chunks summed in float64
on a CPU) gives ‖·‖ of every gradient and weight view (a slice of a fused parameter is a
``narrow`` view: its norm is exactly the slice's), ``count_nonzero`` counts the non-zero
gradient entries (the exact integers the ``ord=0`` norm gives, without its float64 copy of each
gradient: a third of its time on a CPU), and the results stay on the device as one tensor. In
float64 the norm of any finite float32/float16/bfloat16 tensor is finite, so "every norm is
finite" is "every gradient and weight is finite": that one value is read at each step (a
non-finite one from float32 chunks is checked again in float64 before the optimizer steps); the
rest when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hfault.capture.host_reads import HostReads, Reading
from hfault.components import Component, ParamPart
from hfault.probes.many_norms import exact_norms, fast_norms, stack


@dataclass
class StepLayout:
    """An optimizer's components flattened into their parameter parts, with each part's param
    group (the first group that holds the parameter: where its learning rate is)."""

    components: list[Component]
    parts: list[tuple[int, ParamPart, int]]
    """(index of the component in ``components``, part, its numel)."""
    groups: list[list[dict[str, Any]]]
    """Per component, the distinct param groups of its parts."""
    built_from: list[Component]
    """The session's component list this was built from (a rebuild makes a new list)."""
    group_count: int

    @classmethod
    def build(cls, opt: torch.optim.Optimizer, all_components: list[Component],
              components: Sequence[Component]) -> StepLayout:
        group_of: dict[int, dict[str, Any]] = {}
        for group in opt.param_groups:
            for p in group["params"]:
                group_of.setdefault(id(p), group)
        parts, groups = [], []
        for i, comp in enumerate(components):
            mine: list[dict[str, Any]] = []
            for part in comp.parts:
                parts.append((i, part, part.numel))
                found = group_of.get(id(part.param))
                if found is not None and not any(g is found for g in mine):
                    mine.append(found)
            groups.append(mine)
        return cls(list(components), parts, groups, all_components, len(opt.param_groups))

    def fits(self, opt: torch.optim.Optimizer, components: list[Component]) -> bool:
        return components is self.built_from and len(opt.param_groups) == self.group_count


def _lr(value: object) -> float | torch.Tensor | None:
    """A group's learning rate as of now: a tensor one (``capturable``) is copied, not read."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return float(value)  # type: ignore[arg-type]


class FusedStats:
    """The statistics of one step of one optimizer, on the device until :meth:`metrics`."""

    def __init__(self, layout: StepLayout, owners: list[int], grad_numels: list[int],
                 missing: list[int], lrs: list[list[float | torch.Tensor]],
                 values: torch.Tensor, finite: Reading) -> None:
        self.layout = layout
        self.owners = owners
        self.grad_numels = grad_numels
        self.missing = missing
        self.lrs = lrs
        self.values = values
        self._finite = finite
        self._screened: list[torch.Tensor] | None = None
        """The gradient and weight views while a float32-chunk norm may still need its float64
        check (until :meth:`release`, before the optimizer changes them)."""
        self._verdict: bool | None = None

    @classmethod
    def measure(cls, layout: StepLayout, reads: HostReads) -> FusedStats:
        """Launch the kernels (no host read); ``reads`` gets the all-finite value."""
        owners, grad_numels, grads, weights = [], [], [], []
        missing = [0] * len(layout.components)
        strided = torch.strided
        for i, part, numel in layout.parts:
            # ``part.view`` inlined for a whole parameter (most parts): this loop runs over every
            # part at every step.
            param, whole = part.param, part.start is None or part.stop is None
            weights.append(param if whole and param.layout == strided else part.view(param))
            g = param.grad
            if g is None:
                missing[i] += numel
                continue
            grads.append(g if whole and g.layout == strided else part.view(g))
            owners.append(i)
            grad_numels.append(numel)
        tensors = grads + weights
        with torch.no_grad():
            values, screened = fast_norms(tensors)
            if grads:  # the int64 counts, promoted to float64 (exact) by the cat: a stack of
                # mixed dtypes would take several times as long
                values = torch.cat([values, stack([torch.count_nonzero(g) for g in grads])])
            finite = reads.put(values[: len(tensors)].sum())
        lrs = [[lr for g in groups if (lr := _lr(g.get("lr"))) is not None]
               for groups in layout.groups]
        stats = cls(layout, owners, grad_numels, missing, lrs, values, finite)
        if screened:
            stats._screened = tensors
        return stats

    def finite(self) -> bool:
        """Whether every gradient and weight is finite (read with the step's other values).
        Before :meth:`release`, a non-finite float32-chunk norm is taken again in float64 (an
        overflow of finite entries above ~1e17 is not a NaN)."""
        if self._verdict is not None:
            return self._verdict
        finite = math.isfinite(self._finite.value())
        if finite or self._screened is None:
            return finite
        tensors, self._screened = self._screened, None
        with torch.no_grad():
            exact = exact_norms(tensors).to(self.values.device)
            self.values = torch.cat([exact, self.values[len(tensors):]])
        self._verdict = bool(torch.isfinite(exact).all())
        return self._verdict

    def release(self) -> None:
        """The step is taken: the views now hold the new weights (and keep the gradients alive);
        drop them."""
        self._screened = None

    def metrics(self) -> dict[str, dict[str, object]]:
        """Per component, as :class:`~hfault.probes.gradients.StepRecord` reports them (one host
        read). A parameter whose ``.grad`` is None received no gradient (cut from the graph, e.g.
        by a stray ``.detach()``): it counts as all-zero and sets ``grad_missing``."""
        if self._screened is not None:
            self.finite()  # an overflowed float32 chunk is replaced by its float64 norm
        values = self.values.tolist()
        n_grads, n = len(self.owners), len(self.layout.components)
        grad_sq, weight_sq, zeros = [0.0] * n, [0.0] * n, [0] * n
        for k, i in enumerate(self.owners):
            grad_sq[i] += values[k] ** 2
            zeros[i] += self.grad_numels[k] - int(values[n_grads + len(self.layout.parts) + k])
        for k, (i, _, _) in enumerate(self.layout.parts):
            weight_sq[i] += values[n_grads + k] ** 2
        out: dict[str, dict[str, object]] = {}
        for i, comp in enumerate(self.layout.components):
            numel, sq = comp.numel, grad_sq[i]
            lrs = {float(lr) for lr in self.lrs[i]}
            out[comp.name] = {
                "grad_norm": math.sqrt(sq) if math.isfinite(sq) else sq,
                "grad_rms": math.sqrt(sq / numel) if math.isfinite(sq) else sq,
                "weight_norm": math.sqrt(weight_sq[i]),
                "zero_grad_fraction": (zeros[i] + self.missing[i]) / numel,
                "grad_missing": self.missing[i] == numel,
                "lr": max(lrs) if lrs else None,
            }
        return out
