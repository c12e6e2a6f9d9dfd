"""First-order, per-component statistics: free to compute from ``.grad`` at ``optimizer.step()``.

:class:`GradientStats` takes them at every step; the scheduled steps (and the last one seen) are
the report's snapshots, with the update ratio of the weights and what the script's own gradient
processing (clipping) did to the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hfault.capture.contribution import ReportDraft, SnapshotDraft
from hfault.capture.hooks import MEASURE, BackwardEvent, Listener
from hfault.components import Component

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession


def _sq_norm(tensors: Sequence[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    total = torch.stack([t.detach().double().pow(2).sum() for t in tensors]).sum()
    return float(total)


def group_lr(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float | None:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            lr = group.get("lr")
            return float(lr) if lr is not None else None
    return None


def gradient_stats(component: Component, optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """Gradient norm, weight norm, zero-gradient fraction and learning rate of one component.

    A parameter whose ``.grad`` is None received no gradient (cut from the graph, e.g. by a stray
    ``.detach()``): it counts as all-zero and sets ``grad_missing``.
    """
    grads, missing, zeros = [], 0, 0
    for part in component.parts:
        g = part.param.grad
        if g is None:
            missing += part.numel
            continue
        view = part.view(g)
        grads.append(view)
        zeros += int((view == 0).sum())
    weights = [part.view(part.param) for part in component.parts]
    grad_sq = _sq_norm(grads)
    lrs = {lr for part in component.parts if (lr := group_lr(optimizer, part.param)) is not None}
    numel = component.numel
    return {
        "grad_norm": math.sqrt(grad_sq) if math.isfinite(grad_sq) else grad_sq,
        "grad_rms": math.sqrt(grad_sq / numel) if math.isfinite(grad_sq) else grad_sq,
        "weight_norm": math.sqrt(_sq_norm(weights)),
        "zero_grad_fraction": (zeros + missing) / numel,
        "grad_missing": missing == numel,
        "lr": max(lrs) if lrs else None,
    }


def grad_norm(component: Component) -> float:
    """‖g‖ of the component as the optimizer sees it (``gradient_stats``' ``grad_norm``)."""
    grads = [part.view(part.param.grad) for part in component.parts
             if part.param.grad is not None]
    grad_sq = _sq_norm(grads)
    return math.sqrt(grad_sq) if math.isfinite(grad_sq) else grad_sq


def copy_weights(component: Component) -> list[torch.Tensor]:
    """Weights before the step, to measure the update ratio after it."""
    return [part.view(part.param).detach().clone() for part in component.parts]


def update_ratio(component: Component, before: Sequence[torch.Tensor]) -> float | None:
    """‖Δθ‖/‖θ‖ of one step: ~1e-3 is typical; ≳1e-1 means the step rewrote the weights."""
    after = [part.view(part.param).detach() for part in component.parts]
    delta = _sq_norm([a - b for a, b in zip(after, before, strict=True)])
    base = _sq_norm(before)
    if base == 0.0:
        return None if delta == 0.0 else math.inf
    return math.sqrt(delta / base)


def raw_grad_sq(
    components: Sequence[Component], loss_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """‖g_b‖² of each component as backward left it (before the script's clipping), as device
    tensors: no sync until the step reads them. ``loss_scale`` undoes an AMP GradScaler's scale."""
    out: dict[str, torch.Tensor] = {}
    for comp in components:
        views = [part.view(part.param.grad).detach() for part in comp.parts
                 if part.param.grad is not None]
        if views:
            sq = torch.stack([v.double().pow(2).sum() for v in views]).sum()
            out[comp.name] = sq / (loss_scale * loss_scale)
    return out


def grad_scale(applied_norm: object, raw_sq: torch.Tensor | None) -> float | None:
    """‖g applied by the optimizer‖ / ‖g from backward‖: what the script's clipping (or any
    gradient rescaling) did to the step. 1 = untouched; ``clip_grad_norm_(max_norm=c)`` with a
    total norm N > c gives c/N on every component. The effective learning rate is lr × this."""
    if raw_sq is None or not isinstance(applied_norm, (int, float)):
        return None
    raw = math.sqrt(float(raw_sq))
    if not math.isfinite(raw) or not math.isfinite(applied_norm) or raw == 0.0:
        return None
    return float(applied_norm) / raw


@dataclass
class StepRecord:
    """First-order statistics of one optimizer step, per component."""

    step: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


class GradientStats(Listener):
    """Statistics of every component at every step (``last``), kept at the scheduled steps
    (``snapshots``); the NaN check reads them."""

    priority = MEASURE

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self.snapshots: dict[int, StepRecord] = {}
        self.last: StepRecord | None = None
        self._before: dict[str, list[torch.Tensor]] = {}
        self._raw_grad_sq: dict[str, torch.Tensor] = {}

    def after_backward(self, event: BackwardEvent) -> None:
        session = self.session
        components = session.state.components
        if components and session.schedule.wants(session.state.step + 1):
            # Gradients as backward left them (accumulated over micro-batches: the last call
            # wins), unscaled by the AMP loss scale; device tensors, read at the step.
            self._raw_grad_sq = raw_grad_sq(components, session.loss_scale)

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        session = self.session
        step = session.step_of(opt)
        index = session.optimizer_index(opt)
        record = self.last if self.last and self.last.step == step else None
        if record is None:
            record = StepRecord(step)
        wanted = session.schedule.wants(step)
        for comp in session.state.components:
            if comp.optimizer != index:
                continue
            metrics = record.metrics[comp.name] = gradient_stats(comp, opt)
            if wanted:
                self._before[comp.name] = copy_weights(comp)
                metrics["grad_scale"] = grad_scale(
                    metrics["grad_norm"], self._raw_grad_sq.pop(comp.name, None)
                )
        self.last = record

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        record = self.last
        if record is None:
            return
        session = self.session
        index = session.optimizer_index(opt)
        for comp in session.state.components:
            if comp.optimizer == index and comp.name in self._before:
                before = self._before.pop(comp.name)
                record.metrics[comp.name]["update_ratio"] = update_ratio(comp, before)
        if session.schedule.wants(session.state.step):
            self.snapshots[session.state.step] = record

    def close(self) -> None:
        self._before.clear()

    def contribute(self, draft: ReportDraft) -> None:
        records = dict(self.snapshots)
        if self.last is not None and self.last.step not in records:
            records[self.last.step] = self.last  # the last step seen, always reported
        for step, record in sorted(records.items()):
            draft.snapshots[step] = SnapshotDraft(
                {name: dict(m) for name, m in record.metrics.items()}
            )
