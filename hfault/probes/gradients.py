"""First-order, per-component statistics: free to compute from ``.grad`` at ``optimizer.step()``.

:class:`GradientStats` takes them at every step; the scheduled steps (and the last one seen) are
the report's snapshots, with the update ratio of the weights and what the script's own gradient
processing (clipping) did to the step.

Any step may turn out to be the last, so every step computes every statistic, but on the device:
a few fused ``torch._foreach_norm`` calls over all the stepping optimizer's gradients and weights
(:mod:`hfault.probes.fused_stats`). Only whether they are all finite is read at each step, with
the step's other values in one host transfer (``capture.host_reads``); the per-component numbers
are read when someone asks for them (a snapshot, the last step, a NaN to localize).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hfault.capture.contribution import ReportDraft, SnapshotDraft
from hfault.capture.hooks import MEASURE, BackwardEvent, Listener
from hfault.capture.manual_steps import is_hand_written
from hfault.components import Component
from hfault.probes.fused_stats import FusedStats, StepLayout
from hfault.probes.many_norms import fast_norms, sum_of_squares

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession


def grad_norm(component: Component) -> float:
    """‖g‖ of the component as the optimizer sees it (the step statistics' ``grad_norm``, read
    now: one host sync)."""
    grads = [part.view(part.param.grad) for part in component.parts
             if part.param.grad is not None]
    grad_sq = sum_of_squares(grads)
    return math.sqrt(grad_sq) if math.isfinite(grad_sq) else grad_sq


def copy_weights(component: Component) -> list[torch.Tensor]:
    """Weights before the step, to measure the update ratio after it."""
    return [part.view(part.param).detach().clone() for part in component.parts]


def update_ratio(component: Component, before: Sequence[torch.Tensor]) -> float | None:
    """‖Δθ‖/‖θ‖ of one step: ~1e-3 is typical; ≳1e-1 means the step rewrote the weights."""
    after = [part.view(part.param).detach() for part in component.parts]
    delta = sum_of_squares([a - b for a, b in zip(after, before, strict=True)])
    base = sum_of_squares(before)
    if base == 0.0:
        return None if delta == 0.0 else math.inf
    return math.sqrt(delta / base)


def raw_grad_norms(components: Sequence[Component]) -> dict[str, torch.Tensor]:
    """The norms of each component's gradient views as backward left them (before the script's
    clipping), as device tensors: no sync until the step reads them. Taken as ``FusedStats``
    takes the step's (:func:`~hfault.probes.many_norms.fast_norms`): an untouched gradient
    gives a ratio of exactly 1."""
    out: dict[str, torch.Tensor] = {}
    for comp in components:
        views = [part.view(part.param.grad) for part in comp.parts
                 if part.param.grad is not None]
        if views:
            with torch.no_grad():
                out[comp.name] = fast_norms(views)[0]
    return out


def grad_scale(applied_norm: object, raw_norms: torch.Tensor | None,
               loss_scale: float = 1.0) -> float | None:
    """‖g applied by the optimizer‖ / ‖g from backward‖: what the script's clipping (or any
    gradient rescaling) did to the step. 1 = untouched; ``clip_grad_norm_(max_norm=c)`` with a
    total norm N > c gives c/N on every component. The effective learning rate is lr × this.
    ``raw_norms`` are ``raw_grad_norms``' (summed as ``FusedStats`` sums, so an untouched
    gradient gives exactly 1); ``loss_scale`` undoes an AMP GradScaler's scale."""
    if raw_norms is None or not isinstance(applied_norm, (int, float)):
        return None
    raw_sq = 0.0
    for norm in raw_norms.tolist():
        raw_sq += norm ** 2
    raw = math.sqrt(raw_sq / (loss_scale * loss_scale))
    if not math.isfinite(raw) or not math.isfinite(applied_norm) or raw == 0.0:
        return None
    return float(applied_norm) / raw


@dataclass
class StepRecord:
    """First-order statistics of one optimizer step, per component; the fused device values are
    read into ``metrics`` when it is first asked for."""

    step: int
    _metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    _pending: list[FusedStats] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """Component name -> ``grad_norm``, ``grad_rms``, ``weight_norm``,
        ``zero_grad_fraction``, ``grad_missing``, ``lr`` (and, at scheduled steps,
        ``grad_scale`` and ``update_ratio``)."""
        for pending in self._pending:
            self._metrics.update(pending.metrics())
        self._pending.clear()
        return self._metrics

    def add(self, stats: FusedStats) -> None:
        self._pending.append(stats)

    def release(self) -> None:
        """The optimizer stepped: the pending statistics keep no view of its tensors."""
        for pending in self._pending:
            pending.release()

    def finite(self) -> bool:
        """Whether every gradient and weight norm of the step is finite, without reading the
        per-component values."""
        if not all(p.finite() for p in self._pending):
            return False
        return all(math.isfinite(float(m["grad_norm"])) and math.isfinite(m["weight_norm"])
                   for m in self._metrics.values())


class GradientStats(Listener):
    """Statistics of every component at every step (``last``), kept at the scheduled steps
    (``snapshots``); the NaN check reads them."""

    priority = MEASURE

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self.snapshots: dict[int, StepRecord] = {}
        self.last: StepRecord | None = None
        self._before: dict[str, list[torch.Tensor]] = {}
        self._raw_grad_norms: dict[str, torch.Tensor] = {}
        self._raw_loss_scale = 1.0
        self._layouts: dict[int, StepLayout] = {}

    def after_backward(self, event: BackwardEvent) -> None:
        session = self.session
        components = session.state.components
        if (components and session.schedule.wants(session.state.step + 1)
                and not is_hand_written(session.state.optimizers)):
            # (A hand-written update's step is taken right after backward, before the script's
            # clipping: what clipping did is not seen, so grad_scale stays unmeasured.)
            # Gradients as backward left them (accumulated over micro-batches: the last call
            # wins), unscaled by the AMP loss scale; device tensors, read at the step.
            self._raw_grad_norms = raw_grad_norms(components)
            self._raw_loss_scale = session.loss_scale

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        session = self.session
        step = session.step_of(opt)
        record = self.last if self.last and self.last.step == step else None
        if record is None:
            record = StepRecord(step)
        self.last = record
        layout = self._layout(opt)
        if not layout.components:
            return
        record.add(FusedStats.measure(layout, session.reads))
        if session.schedule.wants(step):
            metrics = record.metrics
            for comp in layout.components:
                self._before[comp.name] = copy_weights(comp)
                metrics[comp.name]["grad_scale"] = grad_scale(
                    metrics[comp.name]["grad_norm"], self._raw_grad_norms.pop(comp.name, None),
                    self._raw_loss_scale)

    def _layout(self, opt: torch.optim.Optimizer) -> StepLayout:
        """The optimizer's components flattened into parts, built again when the components
        are rebuilt or the optimizer's param groups change."""
        components = self.session.state.components
        layout = self._layouts.get(id(opt))
        if layout is None or not layout.fits(opt, components):
            index = self.session.optimizer_index(opt)
            held = {id(p) for g in opt.param_groups for p in g["params"]}
            # Its own components, and those of an earlier phase's optimizer that it now trains
            # whole (a fine-tune's new optimizer over the same parameters).
            layout = StepLayout.build(opt, components, [
                c for c in components
                if c.optimizer == index or all(id(part.param) in held for part in c.parts)])
            self._layouts[id(opt)] = layout
        return layout

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        record = self.last
        if record is None:
            return
        record.release()
        session = self.session
        layout = self._layouts.get(id(opt))
        for comp in layout.components if layout is not None else ():
            if comp.name in self._before:
                before = self._before.pop(comp.name)
                record.metrics[comp.name]["update_ratio"] = update_ratio(comp, before)
        if session.schedule.wants(session.state.step):
            self.snapshots[session.state.step] = record

    def close(self) -> None:
        self._before.clear()
        self._layouts.clear()

    def contribute(self, draft: ReportDraft) -> None:
        records = dict(self.snapshots)
        if self.last is not None and self.last.step not in records:
            records[self.last.step] = self.last  # the last step seen, always reported
        for step, record in sorted(records.items()):
            draft.snapshots[step] = SnapshotDraft(
                {name: dict(m) for name, m in record.metrics.items()}
            )
