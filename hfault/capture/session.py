"""The capture session: hooks that observe an unmodified training script.

What is hooked, and why each hook leaves training bit-exact:
- ``Optimizer.__init__``: records every optimizer created (nothing else).
- ``torch.autograd.backward`` (``Tensor.backward`` looks it up at call time): records the loss and
  then calls the original, so the script gets exactly its own gradients and accumulation.
- global optimizer step pre/post hooks: count steps, read ``.grad`` and weights (read-only).
- global module forward pre-hook: finds the modules that run (roots, names); forward hook: a
  non-finite flag per output (``isfinite`` reads, never writes).
- ``GradScaler.scale``: remembers which tensors are scaled losses, to unscale the loss we record.
Probes draw from no random generator, so the user's random stream is untouched.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.optim.optimizer as optim_mod
from torch import nn
from torch.nn.modules import module as module_mod

from hfault.capture.schedule import Schedule
from hfault.components import (
    Component,
    build_components,
    find_roots,
    is_attention_module,
    root_prefixes,
)
from hfault.probes.attention import AttentionProbe, axis_fault
from hfault.probes.curvature_probe import (
    CurvatureConfig,
    CurvatureRecord,
    MathAttention,
    gradient_hooks,
    measure_step,
)
from hfault.probes.frozen import frozen_modules
from hfault.probes.gradients import (
    copy_weights,
    grad_scale,
    gradient_stats,
    raw_grad_sq,
    update_ratio,
)
from hfault.probes.init_scale import init_statistics
from hfault.probes.loss_input import LossInputWatch
from hfault.probes.numerics import (
    ActivationWatch,
    GradientWatch,
    NonFiniteEvent,
    describe_value,
)
from hfault.probes.zero_grad import StaleGradientWatch


class StopTraining(BaseException):
    """Raised into the script to end training after ``--max-steps`` (BaseException so a user's
    ``except Exception`` cannot swallow it)."""


@dataclass
class StepRecord:
    """First-order statistics of one optimizer step, per component."""

    step: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CaptureState:
    """Everything the session observed; the report is built from this."""

    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    optimizer_sources: list[dict[str, Any] | None] = field(default_factory=list)
    """Where each optimizer was constructed (file, line): learning-rate fixes point there."""
    modules: dict[int, nn.Module] = field(default_factory=dict)  # forward order of first call
    cross_modules: dict[int, nn.Module] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    step: int = 0
    backward_calls: int = 0
    losses: dict[int, float] = field(default_factory=dict)
    snapshots: dict[int, StepRecord] = field(default_factory=dict)
    last: StepRecord | None = None
    events: list[NonFiniteEvent] = field(default_factory=list)
    curvature: dict[int, CurvatureRecord] = field(default_factory=dict)
    attention: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    loss_inputs: list[dict[str, Any]] = field(default_factory=list)
    """Losses fed the wrong kind of values (probabilities into cross_entropy...)."""
    frozen: list[dict[str, Any]] = field(default_factory=list)
    """Modules of the trained model with every parameter frozen (read when components are
    built)."""
    device: str | None = None
    started: float = field(default_factory=time.perf_counter)


class CaptureSession:
    """Install with ``with CaptureSession(schedule): run the script``; read ``.state`` after."""

    def __init__(
        self,
        schedule: Schedule,
        max_steps: int | None = None,
        *,
        nan_watch: bool = True,
        curvature: CurvatureConfig | None = None,
    ):
        self.schedule = schedule
        self.max_steps = max_steps
        self.nan_watch = nan_watch
        self.curvature = curvature
        self._math = MathAttention()
        self._attention = AttentionProbe(is_attention_module)
        self._window_step: int | None = None
        self.state = CaptureState()
        self._watch = ActivationWatch()
        self._grad_watch = GradientWatch()
        self._loss_watch = LossInputWatch(lambda: self.state.step + 1)
        self.stale_grads = StaleGradientWatch()
        self._handles: list[Any] = []
        self._restore: list[Callable[[], None]] = []
        self._opt_steps: dict[int, int] = {}
        self._scaled: dict[int, Any] = {}
        self._before: dict[str, list[torch.Tensor]] = {}
        self._opt_index: dict[int, int] = {}
        self._components_for: int = -1  # number of optimizers the components were built from
        self._pending_loss = 0.0
        self._pending_seen = False
        self._loss_scale = 1.0
        self._raw_grad_sq: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- install / uninstall
    def __enter__(self) -> CaptureSession:
        session = self

        original_init = torch.optim.Optimizer.__init__

        def init(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            original_init(opt, *args, **kwargs)
            if id(opt) not in session._opt_index:
                session._opt_index[id(opt)] = len(session.state.optimizers)
                session.state.optimizers.append(opt)
                session.state.optimizer_sources.append(_caller_outside_libraries())

        torch.optim.Optimizer.__init__ = init  # type: ignore[method-assign]
        self._restore.append(lambda: setattr(torch.optim.Optimizer, "__init__", original_init))

        original_backward = torch.autograd.backward

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            session._before_backward(tensors)
            result = original_backward(tensors, *args, **kwargs)
            session._after_backward()
            return result

        torch.autograd.backward = backward
        self._restore.append(lambda: setattr(torch.autograd, "backward", original_backward))

        scaler_cls = torch.amp.GradScaler
        original_scale = scaler_cls.scale

        def scale(scaler: Any, outputs: Any) -> Any:
            result = original_scale(scaler, outputs)
            if isinstance(result, torch.Tensor):
                session._scaled[id(result)] = scaler
            return result

        scaler_cls.scale = scale  # type: ignore[method-assign]
        self._restore.append(lambda: setattr(scaler_cls, "scale", original_scale))

        self._loss_watch.install()
        self._restore.append(self._loss_watch.uninstall)
        self._handles.append(optim_mod.register_optimizer_step_pre_hook(self._pre_step))
        self._handles.append(optim_mod.register_optimizer_step_post_hook(self._post_step))
        self._handles.append(module_mod.register_module_forward_pre_hook(self._pre_forward))
        if self.nan_watch:
            self._handles.append(module_mod.register_module_forward_hook(self._post_forward))
        self._open_window(1)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        for restore in reversed(self._restore):
            restore()
        self._handles.clear()
        self._restore.clear()
        self._close_window()
        self._watch.clear()
        self._grad_watch.clear()
        output = self.output_component()
        self.state.loss_inputs = [
            {**e.to_dict(), "output_component": output} for e in self._loss_watch.flagged()
        ]
        self._before.clear()

    # ----------------------------------------------------------------- module hooks
    def _pre_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        modules = self.state.modules
        if id(module) not in modules:
            modules[id(module)] = module
        if (
            isinstance(module, nn.MultiheadAttention)
            and len(args) >= 2
            and args[0] is not args[1]
            and id(module) not in self.state.cross_modules
        ):
            self.state.cross_modules[id(module)] = module

    def _post_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._watch.record(module, output)

    # ----------------------------------------------------------------- backward hook
    def _before_backward(self, tensors: Any) -> None:
        state = self.state
        if self.max_steps is not None and state.step >= self.max_steps:
            raise StopTraining
        state.backward_calls += 1
        self.stale_grads.before_backward(state.optimizers)
        if state.backward_calls == 3 and os.environ.get("HFAULT_DEBUG_RAISE") == "hook":
            raise RuntimeError("HFAULT_DEBUG_RAISE=hook: simulated error in hfault's backward hook")
        loss = tensors if isinstance(tensors, torch.Tensor) else None
        if isinstance(tensors, (tuple, list)) and len(tensors) == 1:
            loss = tensors[0]
        if loss is None or loss.numel() != 1:
            self._watch.clear()
            return
        if state.device is None:
            state.device = str(loss.device)
        scale = 1.0
        scaler = self._scaled.pop(id(loss), None)
        if scaler is not None:
            scale = float(scaler.get_scale())
        value = float(loss.detach().float()) / scale
        self._loss_scale = scale
        self._pending_loss += value
        self._pending_seen = True
        upcoming = state.step + 1
        if not math.isfinite(value):
            self._locate_nonfinite_forward(upcoming, value)
        self._watch.clear()
        self._ensure_components()
        if self._window_step == upcoming:
            self._attention.stop()
            self._record_attention(upcoming)
            if (
                self.curvature is not None
                and loss.requires_grad
                and state.components
            ):
                hooked = gradient_hooks(state.components)
                if hooked and not any("gradient hooks" in n for n in state.notes):
                    state.notes.append(
                        "parameter gradient hooks on " + ", ".join(hooked[:5])
                        + (" ..." if len(hooked) > 5 else "") + " fire inside hfault's gradient "
                        "computation: the curvature measured is that of the hooked gradient, "
                        "and the hooks run twice on measured steps"
                    )
                state.curvature[upcoming] = measure_step(
                    upcoming, loss, scale, state.components, state.optimizers, self.curvature
                )
            self._close_window()

    def _after_backward(self) -> None:
        if self.nan_watch and self.state.components:
            self._grad_watch.record(self.state.components)
        if self.state.components and self.schedule.wants(self.state.step + 1):
            # Gradients as backward left them (accumulated over micro-batches: the last call
            # wins), unscaled by the AMP loss scale; device tensors, read at the step.
            self._raw_grad_sq = raw_grad_sq(self.state.components, self._loss_scale)

    def _locate_nonfinite_forward(self, step: int, value: float) -> None:
        if any(e.kind in ("activation", "loss") for e in self.state.events):
            return
        module = self._watch.first_bad()
        if module is not None:
            name = self.module_names().get(id(module), type(module).__name__)
            self.state.events.append(
                NonFiniteEvent(
                    "activation",
                    step,
                    name,
                    describe_value(value),
                    f"first module whose output was non-finite ({type(module).__name__})",
                )
            )
        else:
            self.state.events.append(
                NonFiniteEvent(
                    "loss",
                    step,
                    None,
                    describe_value(value),
                    "every module output was finite: the loss computation itself "
                    "produced the non-finite value",
                )
            )

    # ----------------------------------------------------------------- step hooks
    def _pre_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        count = self._opt_steps.get(id(opt), 0) + 1
        if self.max_steps is not None and count > self.max_steps:
            raise StopTraining
        self.stale_grads.before_step(opt)
        step = max(self.state.step, count)
        self._ensure_components()
        index = self._opt_index.get(id(opt))
        record = self.state.last if self.state.last and self.state.last.step == step else None
        if record is None:
            record = StepRecord(step)
        for comp in self.state.components:
            if comp.optimizer != index:
                continue
            record.metrics[comp.name] = gradient_stats(comp, opt)
            if self.schedule.wants(step):
                self._before[comp.name] = copy_weights(comp)
                record.metrics[comp.name]["grad_scale"] = grad_scale(
                    record.metrics[comp.name]["grad_norm"], self._raw_grad_sq.pop(comp.name, None)
                )
        self.state.last = record
        self._check_gradients(record, step)

    def _post_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        count = self._opt_steps.get(id(opt), 0) + 1
        self._opt_steps[id(opt)] = count
        state = self.state
        state.step = max(state.step, count)
        record = state.last
        if record is not None:
            index = self._opt_index.get(id(opt))
            for comp in state.components:
                if comp.optimizer == index and comp.name in self._before:
                    before = self._before.pop(comp.name)
                    record.metrics[comp.name]["update_ratio"] = update_ratio(comp, before)
            if self.schedule.wants(state.step):
                state.snapshots[state.step] = record
        self._open_window(state.step + 1)
        if self._pending_seen:
            # The loss of step s is the sum of the losses backpropagated since step s-1 (the
            # gradient it applies is theirs): micro-batch losses of an accumulated step add up.
            state.losses[state.step] = state.losses.get(state.step, 0.0) + self._pending_loss
            self._pending_loss, self._pending_seen = 0.0, False

    # ----------------------------------------------------------------- measured-step window
    def _open_window(self, step: int) -> None:
        """Before a scheduled step's forward: attention probes on, and (with curvature) the math
        SDPA kernel, since the kernel is chosen at forward time."""
        if self._window_step is not None or not self.schedule.wants(step):
            return
        self._window_step = step
        self._attention.start()
        if self.curvature is not None:
            self._math.enter()

    def _close_window(self) -> None:
        self._attention.stop()
        self._math.exit()
        self._window_step = None

    def _record_attention(self, step: int) -> None:
        if not self._attention.stats:
            return
        names = self.module_names()
        modules = self._attention.modules
        out: dict[str, dict[str, Any]] = {}
        for mid, stats in self._attention.stats.items():
            name = names.get(mid, type(modules[mid]).__name__)
            parent, _, leaf = name.rpartition(".")
            if leaf == "self" and parent:
                name = parent  # BERT/ViT: attention.self belongs to attention
            record = stats.to_dict()
            faults = [axis_fault(a["shape"], a["dim"], self._loss_watch.batch)
                      for a in record["softmax_axes"]]
            record["axis_fault"] = next((f for f in faults if f), None)
            record["batch"] = self._loss_watch.batch
            record["type"] = type(modules[mid]).__name__
            out[name] = record
        self.state.attention[step] = out

    def _check_gradients(self, record: StepRecord, step: int) -> None:
        if not any(e.kind == "weight" for e in self.state.events):
            bad_w = [n for n, m in record.metrics.items() if not math.isfinite(m["weight_norm"])]
            if bad_w:
                self.state.events.append(
                    NonFiniteEvent("weight", step, bad_w[0], "nan", "non-finite weights")
                )
        if any(e.kind == "gradient" for e in self.state.events):
            return
        bad = [
            name
            for name, m in record.metrics.items()
            if not math.isfinite(float(m["grad_norm"]))  # type: ignore[arg-type]
        ]
        if not bad:
            return
        detail = ""
        raw = self._grad_watch.bad_components()
        if raw and set(raw) < set(bad):
            # The script's own gradient processing (clip_grad_norm_ with a NaN total norm) spread
            # the NaN to every gradient; where it came from is what backward left.
            detail = (f"; {len(bad)} after the script's gradient processing (e.g. clipping with a "
                      "non-finite total norm)")
            bad = [n for n in bad if n in raw]
        order = self.forward_order()
        # Backward runs in reverse forward order: the latest component in forward order with a
        # non-finite gradient is where the gradient first went bad.
        culprit = max(bad, key=lambda n: order.get(n, -1))
        value = describe_value(float(record.metrics[culprit]["grad_norm"]))  # type: ignore[arg-type]
        others = [b for b in bad if b != culprit]
        head = f"{len(bad)} component(s) with non-finite gradients"
        if others:
            head += "; also " + ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        detail = head + detail
        self.state.events.append(NonFiniteEvent("gradient", step, culprit, value, detail))

    # ----------------------------------------------------------------- components
    def _ensure_components(self) -> None:
        n = len(self.state.optimizers)
        if n == self._components_for or n == 0:
            return
        components = build_components(
            self.state.optimizers,
            list(self.state.modules.values()),
            self.state.cross_modules.values(),
        )
        # Report components in forward order (where a fault propagates from), not the
        # optimizers' param-group order.
        position = {mid: i for i, mid in enumerate(self.state.modules)}
        known = {c.name: c.init for c in self.state.components}
        for comp in components:  # read once, before the component's first update
            comp.init = known[comp.name] if comp.name in known else init_statistics(comp)
        self.state.components = sorted(
            components,
            key=lambda c: position.get(id(c.module), len(position)) if c.module else len(position),
        )
        self._components_for = n
        params = [part.param for c in components for part in c.parts]
        roots = find_roots(list(self.state.modules.values()), params)
        optimized = {id(p) for opt in self.state.optimizers for g in opt.param_groups
                     for p in g["params"]}
        position = {id(m): i for i, m in enumerate(self.state.modules.values())}
        self.state.frozen = frozen_modules(roots, self.module_names(), optimized, position)

    def module_names(self) -> dict[int, str]:
        """id(module) -> name relative to its root, for every module seen running."""
        seen = list(self.state.modules.values())
        params = [p for c in self.state.components for p in (part.param for part in c.parts)]
        if not params:  # before the first backward: name by what the optimizers hold
            params = [p for opt in self.state.optimizers for g in opt.param_groups
                      for p in g["params"]]
        roots = find_roots(seen, params)
        names: dict[int, str] = {}
        for root, prefix in zip(roots, root_prefixes(roots), strict=True):
            for path, module in root.named_modules():
                full = prefix + path if path else (prefix.rstrip(".") or type(root).__name__)
                names.setdefault(id(module), full)
        for other in find_roots(seen):  # modules outside the trained models (a loss module)
            for path, module in other.named_modules():
                full = f"{type(other).__name__}.{path}" if path else type(other).__name__
                names.setdefault(id(module), full)
        return names

    def output_component(self) -> str | None:
        """The component whose parameters the last module with parameters in the forward used:
        the output layer. A head tied to the embedding (GPT-2's lm_head) runs last but owns no
        component of its own; its weight belongs to the embedding's, which is named then."""
        owner = {id(part.param): c.name for c in self.state.components for part in c.parts}
        for module in reversed(list(self.state.modules.values())):
            for p in module.parameters(recurse=False):
                if id(p) in owner:
                    return owner[id(p)]
        return None

    def forward_order(self) -> dict[str, int]:
        """Component name -> index of its module's first forward call."""
        position = {mid: i for i, mid in enumerate(self.state.modules)}
        return {
            c.name: position.get(id(c.module), -1) if c.module is not None else -1
            for c in self.state.components
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.state.started


def _caller_outside_libraries() -> dict[str, Any] | None:
    """The first stack frame outside torch, hfault and installed packages: the user's line that
    built the optimizer (for a library such as a Trainer, the user's call into it)."""
    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        library = "site-packages" in filename or "dist-packages" in filename
        if not filename.startswith(skip) and not filename.startswith("<") and not library:
            return {"file": filename, "line": frame.f_lineno}
        frame = frame.f_back
    return None
