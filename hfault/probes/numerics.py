"""Non-finite values, localized the DeepLocalize way: the first module whose forward output turns
NaN/Inf (in completion order, so the innermost culprit is named first), or the parameter whose
gradient does, and the step where it happens.

Checks are recorded as device tensors and read only when the loss itself is non-finite, so a
healthy run pays one reduction per module output (``aminmax``) and no host read of its own: the
loss is read at the step with the step's other values (``capture.host_reads``), and so is whether
the first-order statistics (the norms of weights and gradients) are all finite. The gradients as
backward left them are watched by ``probes.raw_gradients``. An output already checked in the same
forward, unchanged since (a container returns its last child's output; ``Dropout(p=0)`` returns
its input), is not checked again: a third of the reductions of a transformer's forward. (A
dropout with p > 0 is checked: after a functional softmax it is the first module to hold its NaN.)
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import CHECK, BackwardEvent, Listener, loss_value
from hfault.probes.gradients import GradientStats, StepRecord
from hfault.probes.many_norms import stack
from hfault.probes.raw_gradients import GradientWatch

if TYPE_CHECKING:
    from hfault.capture.host_reads import Reading
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


_MIN_MAX = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def finite_probe(t: torch.Tensor) -> Sequence[torch.Tensor]:
    """Scalars that are all finite exactly when ``t`` is. For real floating dtypes ``t``'s
    minimum and maximum: one ``aminmax`` kernel (a NaN propagates to both, an Inf is one of
    them), no temporary (a float64 sum copies ``t`` to float64 first on a CPU: twice the time);
    none for an empty ``t``. For other dtypes log(all finite): 0 or -inf."""
    if t.dtype in _MIN_MAX:
        return torch.aminmax(t) if t.numel() else ()
    return (torch.isfinite(t).all().to(torch.float64).log(),)


@dataclass
class ForwardFlags:
    """The modules whose outputs one forward recorded, in completion order, how many probes
    each has, and all the probes stacked into one device tensor."""

    modules: list[nn.Module]
    counts: list[int]
    probes: torch.Tensor | None

    def first_bad(self) -> nn.Module | None:
        """The first module whose output was non-finite, if any (reads the probes)."""
        if self.probes is None:
            return None
        values, at = self.probes.tolist(), 0
        for module, count in zip(self.modules, self.counts, strict=True):
            if not all(math.isfinite(v) for v in values[at:at + count]):
                return module
            at += count
        return None


class ActivationWatch:
    """Collects, per forward pass, the finite probes of each module output (no host read)."""

    MAX_PENDING = 20000

    def __init__(self) -> None:
        self.pending: list[tuple[nn.Module, Sequence[torch.Tensor]]] = []
        self._checked: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        """The outputs checked in this forward (by id, with their version: one written in place
        since is checked again)."""

    def _new(self, t: torch.Tensor) -> bool:
        """Whether ``t`` (a floating output) was not checked yet in this forward, as it is now."""
        if not (t.is_floating_point() or t.is_complex()):
            return False
        seen = self._checked.get(id(t))
        if seen is not None and seen[0]() is t and seen[1] == t._version:
            return False
        self._checked[id(t)] = (weakref.ref(t), t._version)
        return True

    def record(self, module: nn.Module, output: object) -> None:
        if not torch.is_grad_enabled():
            return
        probes: Sequence[torch.Tensor]
        if isinstance(output, torch.Tensor):  # the common case, without building a list
            if not self._new(output):
                return
            probes = finite_probe(output.detach())
        else:
            probes = [probe for t in _tensors(output) if self._new(t)
                      for probe in finite_probe(t.detach())]
        if not probes:
            return
        if len(self.pending) >= self.MAX_PENDING:
            del self.pending[: self.MAX_PENDING // 2]
            self._checked.clear()
        self.pending.append((module, probes))

    def take(self) -> ForwardFlags:
        """What the forward since the last ``take`` recorded; starts a new one."""
        pending, self.pending = self.pending, []
        self._checked.clear()
        if not pending:
            return ForwardFlags([], [], None)
        return ForwardFlags([m for m, _ in pending], [len(p) for _, p in pending],
                            stack([probe for _, probes in pending for probe in probes]))

    def clear(self) -> None:
        self.pending.clear()
        self._checked.clear()


def describe_value(x: float) -> str:
    if x != x:
        return "nan"
    return "inf" if x > 0 else "-inf"


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
        self._forwards: list[tuple[int, Reading | None, float, ForwardFlags]] = []
        """Per backward since the last check: its step, loss reading and scale, and the flags of
        the forward before it (not the event: the step should not keep the script's graph
        alive, and a copy of the event costs more than the rest of the hook)."""

    def listens(self, event: str) -> bool:
        if event in ("forward", "after_backward") and not self.watch:
            return False
        return super().listens(event)

    def forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.activations.record(module, output)

    def before_backward(self, event: BackwardEvent) -> None:
        # The loss is read at the step, with the step's other values: keep this forward's flags.
        self._forwards.append((event.step, event.reading, event.scale, self.activations.take()))

    def _check_forwards(self) -> None:
        forwards, self._forwards = self._forwards, []
        for step, reading, scale, flags in forwards:
            value = loss_value(reading, scale)
            if value is not None and not math.isfinite(value):
                self._locate_nonfinite_forward(step, value, flags)

    def after_backward(self, event: BackwardEvent) -> None:
        if self.session.state.components:
            self.gradient_flags.record(self.session.state.components)

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        if self.watch:
            self.gradient_flags.step()
        self._check_forwards()
        record = self.gradients.last
        if record is not None and not record.finite():
            self._check_gradients(record, record.step)

    def close(self) -> None:
        self._check_forwards()
        self.activations.clear()
        self.gradient_flags.clear()

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["numerics"] = [e.to_dict() for e in self.events]

    # ------------------------------------------------------------------ culprits
    def _locate_nonfinite_forward(self, step: int, value: float, flags: ForwardFlags) -> None:
        if any(e.kind in ("activation", "loss") for e in self.events):
            return
        module = flags.first_bad()
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
