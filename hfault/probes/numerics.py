"""Non-finite values, localized the DeepLocalize way: the first module whose forward output turns
NaN/Inf (in completion order, so the innermost culprit is named first), or the parameter whose
gradient does, and the step where it happens.

Checks are recorded as device tensors and read only when the loss itself is non-finite, so a
healthy run pays one reduction per module output and no extra host synchronisation. Weights and
gradients are checked at every step from the first-order statistics (their norms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import CHECK, BackwardEvent, Listener
from hfault.probes.gradients import GradientStats, StepRecord

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession


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


class NumericsProbe(Listener):
    """Where the first NaN/Inf of the run came from: the forward (the first module output, or
    the loss itself), the weights, or the gradients (before the script's clipping spread it).
    ``watch=False`` (``--no-nan-watch``) skips the per-output and per-gradient flags: a
    non-finite loss is then blamed on the loss, and gradients as the optimizer sees them."""

    priority = CHECK

    def __init__(self, session: CaptureSession, gradients: GradientStats, *,
                 watch: bool = True) -> None:
        self.session = session
        self.gradients = gradients
        self.watch = watch
        self.activations = ActivationWatch()
        self.gradient_flags = GradientWatch()
        self.events: list[NonFiniteEvent] = []

    def listens(self, event: str) -> bool:
        if event in ("forward", "after_backward") and not self.watch:
            return False
        return super().listens(event)

    def forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.activations.record(module, output)

    def before_backward(self, event: BackwardEvent) -> None:
        if event.value is not None and not math.isfinite(event.value):
            self._locate_nonfinite_forward(event.step, event.value)
        self.activations.clear()

    def after_backward(self, event: BackwardEvent) -> None:
        if self.session.state.components:
            self.gradient_flags.record(self.session.state.components)

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        record = self.gradients.last
        if record is not None:
            self._check_gradients(record, record.step)

    def close(self) -> None:
        self.activations.clear()
        self.gradient_flags.clear()

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["numerics"] = [e.to_dict() for e in self.events]

    # ------------------------------------------------------------------ culprits
    def _locate_nonfinite_forward(self, step: int, value: float) -> None:
        if any(e.kind in ("activation", "loss") for e in self.events):
            return
        module = self.activations.first_bad()
        if module is not None:
            name = self.session.module_names().get(id(module), type(module).__name__)
            self.events.append(
                NonFiniteEvent(
                    "activation",
                    step,
                    name,
                    describe_value(value),
                    f"first module whose output was non-finite ({type(module).__name__})",
                )
            )
        else:
            self.events.append(
                NonFiniteEvent(
                    "loss",
                    step,
                    None,
                    describe_value(value),
                    "every module output was finite: the loss computation itself "
                    "produced the non-finite value",
                )
            )

    def _check_gradients(self, record: StepRecord, step: int) -> None:
        if not any(e.kind == "weight" for e in self.events):
            bad_w = [n for n, m in record.metrics.items() if not math.isfinite(m["weight_norm"])]
            if bad_w:
                self.events.append(
                    NonFiniteEvent("weight", step, bad_w[0], "nan", "non-finite weights")
                )
        if any(e.kind == "gradient" for e in self.events):
            return
        bad = [
            name
            for name, m in record.metrics.items()
            if not math.isfinite(float(m["grad_norm"]))
        ]
        if not bad:
            return
        detail = ""
        raw = self.gradient_flags.bad_components()
        if raw and set(raw) < set(bad):
            # The script's own gradient processing (clip_grad_norm_ with a NaN total norm) spread
            # the NaN to every gradient; where it came from is what backward left.
            detail = (f"; {len(bad)} after the script's gradient processing (e.g. clipping with a "
                      "non-finite total norm)")
            bad = [n for n in bad if n in raw]
        order = self.session.forward_order()
        # Backward runs in reverse forward order: the latest component in forward order with a
        # non-finite gradient is where the gradient first went bad.
        culprit = max(bad, key=lambda n: order.get(n, -1))
        value = describe_value(float(record.metrics[culprit]["grad_norm"]))
        others = [b for b in bad if b != culprit]
        head = f"{len(bad)} component(s) with non-finite gradients"
        if others:
            head += "; also " + ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        detail = head + detail
        self.events.append(NonFiniteEvent("gradient", step, culprit, value, detail))
