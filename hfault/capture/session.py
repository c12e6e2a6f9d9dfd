"""The capture session: what every listener of a run needs, kept in one place.

The session is the listener at ``CORE`` (see :mod:`hfault.capture.hooks`): it records the
optimizers and the modules that run (with a guard that refuses sharded ones:
``capture.sharded``), counts optimizer steps (several optimizers stepping in one iteration share
a step; an optimizer built later continues the count: ``capture.phases``), sums the losses of
each step (overall and per phase, in a bounded record: ``capture.loss_record``), builds the
components when a new optimizer appears, opens the measured-step window before the forward of a
scheduled step, and ends training at ``--max-steps``. Probes are listeners added to it
(``add``); with none it only observes. Nothing here writes what training uses (the docstring of
``hooks`` says why each hook leaves training bit-exact).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from hfault.capture.compiled import is_compiled_wrapper, models_compiled_away, original_module
from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import CORE, BackwardEvent, Hooks, Listener
from hfault.capture.host_reads import HostReads, Reading
from hfault.capture.loss_record import LossRecord
from hfault.capture.phases import PhaseTracker
from hfault.capture.schedule import Schedule
from hfault.capture.sharded import ShardGuard
from hfault.components import Component, build_components, module_paths

L = TypeVar("L", bound=Listener)


class StopTraining(BaseException):
    """Raised into the script to end training after ``--max-steps`` (BaseException so a user's
    ``except Exception`` cannot swallow it)."""


@dataclass
class CaptureState:
    """What the session observed; every listener reads it."""

    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    optimizer_sources: list[dict[str, Any] | None] = field(default_factory=list)
    """Where each optimizer was constructed (file, line): learning-rate fixes point there."""
    modules: dict[int, nn.Module] = field(default_factory=dict)  # forward order of first call
    cross_modules: dict[int, nn.Module] = field(default_factory=dict)
    found_attention: dict[int, nn.Module] = field(default_factory=dict)
    """Modules the attention probe found computing attention although nothing in their name or
    children says so (``probes.attention``): components inside them belong to that attention."""
    compiled_modules: dict[int, nn.Module] = field(default_factory=dict)
    """Models that run compiled (``torch.compile``; the originals, not the wrappers): their
    submodules count as seen, in registration order."""
    components: list[Component] = field(default_factory=list)
    step: int = 0
    backward_calls: int = 0
    losses: LossRecord = field(default_factory=LossRecord)
    """Every step's loss (the sum over phases stepping at it), sampled past its cap."""
    phases: PhaseTracker = field(default_factory=PhaseTracker)
    """Which optimizer took which step, and each phase's own losses."""
    notes: list[str] = field(default_factory=list)
    """Said by any listener during the run; the report lists them first."""
    device: str | None = None
    started: float = field(default_factory=time.perf_counter)


class CaptureSession(Listener):
    """Install with ``with CaptureSession(schedule): run the script``; read ``.state`` after."""

    priority = CORE

    def __init__(self, schedule: Schedule, max_steps: int | None = None) -> None:
        self.schedule = schedule
        self.max_steps = max_steps
        self.state = CaptureState()
        self.hooks = Hooks([self, ShardGuard(self.state)])
        self.window_step: int | None = None
        """The scheduled step whose forward is being watched, if any."""
        self.loss_scale = 1.0
        """The AMP loss scale of the last scalar loss backpropagated."""
        self._opt_index: dict[int, int] = {}
        self._components_for: int = -1  # number of optimizers the components were built from
        self.reads = HostReads()
        """Device values listeners want on the host, read in one transfer per step."""
        self._pending_losses: list[tuple[Reading, float]] = []  # (loss, its AMP scale)
        self._stepping: int | None = None
        """id of the optimizer between ``before_step`` and ``after_step``: a backward then is
        a closure step evaluating its loss again (LBFGS), not the next step's."""

    # ----------------------------------------------------------------- listeners
    def add(self, listener: L) -> L:
        """Add a listener (before the run); returns it."""
        self.hooks.add(listener)
        return listener

    def add_all(self, listeners: Iterable[Listener]) -> None:
        for listener in listeners:
            self.add(listener)

    def contribute_all(self, draft: ReportDraft) -> ReportDraft:
        """Every listener's report fields, in listener order."""
        self.hooks.dispatch("contribute", draft)
        return draft

    def __enter__(self) -> CaptureSession:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)

    # ----------------------------------------------------------------- optimizers, modules
    def optimizer_created(
        self, opt: torch.optim.Optimizer, index: int, source: dict[str, Any] | None
    ) -> None:
        self._opt_index[id(opt)] = index
        self.state.optimizers.append(opt)
        self.state.optimizer_sources.append(source)
        self.state.phases.created(opt, index, self.state.step)

    def optimizer_index(self, opt: torch.optim.Optimizer) -> int | None:
        return self._opt_index.get(id(opt))

    def forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        modules = self.state.modules
        if is_compiled_wrapper(module):
            self._compiled(original_module(module))
            return
        if id(module) not in modules:
            modules[id(module)] = module
        if (
            isinstance(module, nn.MultiheadAttention)
            and len(args) >= 2
            and args[0] is not args[1]
            and id(module) not in self.state.cross_modules
        ):
            self.state.cross_modules[id(module)] = module

    def _compiled(self, original: nn.Module) -> None:
        """A module runs compiled (its ``torch.compile`` wrapper was called, or the optimizers'
        parameters are found in it after compiled code ran): hooks do not run inside compiled
        code (``capture.compiled``), so it and all its submodules count as seen now, in their
        registration order (the forward order inside is not observed)."""
        compiled = self.state.compiled_modules
        if id(original) in compiled:
            return
        compiled[id(original)] = original
        for sub in original.modules():
            self.state.modules.setdefault(id(sub), sub)
        if len(compiled) == 1:
            self.state.notes.append(
                f"torch.compile: {type(original).__name__} runs compiled; hfault's forward "
                "hooks stay out of compiled code, so the NaN check of module outputs and the "
                "attention statistics do not see its submodules (gradient statistics and the "
                "NaN check of gradients do)")

    # ----------------------------------------------------------------- backward
    def before_backward(self, event: BackwardEvent) -> None:
        state = self.state
        if self.max_steps is not None and state.step >= self.max_steps:
            raise StopTraining
        state.backward_calls += 1
        if state.backward_calls == 3 and os.environ.get("HFAULT_DEBUG_RAISE") == "hook":
            raise RuntimeError("HFAULT_DEBUG_RAISE=hook: simulated error in hfault's backward hook")
        event.step = state.step + 1
        loss = event.loss
        if loss is None:
            return
        if state.device is None:
            state.device = str(loss.device)
        event.reading = self.reads.put(loss.detach().float())  # read with the step's values
        self.loss_scale = event.scale
        if self._stepping is None:
            # Not a re-evaluation inside a closure step (LBFGS's line search) once its
            # gradients were final: the step's loss is that of the gradient it applies.
            self._pending_losses.append((event.reading, event.scale))
        self._ensure_components()
        if self.window_step == event.step:
            event.measured = True
            self.window_step = None

    # ----------------------------------------------------------------- steps
    def optimizer_steps(self, opt: torch.optim.Optimizer) -> int:
        """How many times ``opt`` has stepped."""
        return self.state.phases.count(opt)

    def step_of(self, opt: torch.optim.Optimizer) -> int:
        """The step ``opt.step()`` takes, read before it is counted: optimizers stepping in the
        same iteration share it; one built after training began continues the count."""
        return self.state.phases.step_of(opt, self.state.step)

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        if self.max_steps is not None and self.step_of(opt) > self.max_steps:
            raise StopTraining
        self._stepping = id(opt)
        self._ensure_components()

    def step_not_taken(self) -> None:
        """A ``before_step`` no ``after_step`` follows: a hand-written update loop's backward
        turned out to be one of several adding into one step's gradients
        (``capture.manual_steps``), so the next backward is not a closure's re-evaluation."""
        self._stepping = None

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        self._stepping = None
        state = self.state
        step = self.step_of(opt)
        state.phases.stepped(opt, step)
        state.step = step
        self._open_window(state.step + 1)
        if self._pending_losses:
            # The loss of step s is the sum of the losses backpropagated since step s-1 (the
            # gradient it applies is theirs): micro-batch losses of an accumulated step add up.
            total = 0.0
            for reading, scale in self._pending_losses:
                total += reading.value() / scale
            keep = self.schedule.wants(step)  # its snapshot shows its loss
            state.losses.add(step, total, keep=keep)
            state.phases.add_loss(opt, step, total, keep=keep)
            self._pending_losses.clear()

    # ----------------------------------------------------------------- measured-step window
    def open(self) -> None:
        self._open_window(1)

    def _open_window(self, step: int) -> None:
        """Before a scheduled step's forward: what watches the forward (attention weights, the
        math SDPA kernel for curvature) must start now, as the forward comes before backward."""
        if self.window_step is not None or not self.schedule.wants(step):
            return
        self.window_step = step
        self.hooks.dispatch("window_opened", step)

    def close(self) -> None:
        self.window_step = None

    # ----------------------------------------------------------------- components
    def _ensure_components(self) -> None:
        n = len(self.state.optimizers)
        if n == self._components_for or n == 0:
            return
        params = [p for opt in self.state.optimizers for g in opt.param_groups
                  for p in g["params"]]
        for model in models_compiled_away(params, list(self.state.modules.values())):
            self._compiled(model)
        components = build_components(
            self.state.optimizers,
            list(self.state.modules.values()),
            self.state.cross_modules.values(),
            self.state.found_attention.values(),
        )
        # Report components in forward order (where a fault propagates from), not the
        # optimizers' param-group order.
        position = {mid: i for i, mid in enumerate(self.state.modules)}
        self.state.components = sorted(
            components,
            key=lambda c: position.get(id(c.module), len(position)) if c.module else len(position),
        )
        self._components_for = n
        self.hooks.dispatch("components_built", self.state.components)

    def module_names(self) -> dict[int, str]:
        """id(module) -> name relative to its root, for every module seen running."""
        params = [p for c in self.state.components for p in (part.param for part in c.parts)]
        if not params:  # before the first step: name by what the optimizers hold
            params = [p for opt in self.state.optimizers for g in opt.param_groups
                      for p in g["params"]]
        return module_paths(list(self.state.modules.values()), params)

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
