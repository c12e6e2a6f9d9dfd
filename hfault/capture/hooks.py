"""The one place where capture hooks into torch, and the interface of what listens.

:class:`Hooks` installs, for the length of a ``with`` block:

- ``Optimizer.__init__``: listeners may rewrite the constructor arguments before torch's
  ``__init__`` runs (``optimizer_args``), then hear of each new optimizer (``optimizer_created``,
  with the user's line that built it);
- ``torch.autograd.backward`` (``Tensor.backward`` looks it up at call time): ``before_backward``,
  the original call, ``after_backward``; the script gets exactly its own gradients;
- ``GradScaler.scale``: remembers which tensors are scaled losses, so the loss is unscaled;
- global optimizer step pre/post hooks (``before_step``, ``after_step``; for ``step(closure)``,
  ``before_step`` comes when the closure first returns: ``capture.step_events``) and global
  module forward pre/post hooks (``forward_pre``, ``forward``), registered only when some
  listener listens (a forward hook runs on every module call). Module hooks, and the torch
  functions probes patch (:func:`patch`), do nothing inside code that ``torch.compile``
  compiles, so the compiled graph stays the script's own (``capture.compiled``).

Order: for every event, listeners run by :meth:`Listener.order` (lower first; ties in the order
they were added). The capture session is the listener at :data:`CORE`: it counts steps, ends the
run at ``--max-steps``, builds the components and opens the measured-step window, so a listener
after it sees those up to date, one before it sees the event first (a fix that clips gradients
runs at :data:`FIX`, before any probe reads them). ``open`` runs after everything is installed,
``close`` after everything is removed.

Every hook reads and never writes what training uses (listeners that change training, fixes and
perturbations, say so), and no probe draws from the global random generators.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.optim.optimizer as optim_mod
from torch import nn
from torch.nn.modules import module as module_mod

from hfault.capture.compiled import QuietGlobalHookWarning, eager_only, traced_as_original
from hfault.capture.delegates import delegate
from hfault.capture.frames import user_caller
from hfault.capture.step_events import StepEvents

if TYPE_CHECKING:
    from hfault.capture.contribution import ReportDraft
    from hfault.capture.host_reads import Reading
    from hfault.components import Component

FIX = -200
"""Listeners that change training (a fix's gradient clipping): before anything reads it."""
EARLY = -100
"""Listeners that must see an event before the session acts on it (a loss whose backward the
``--max-steps`` stop then refuses)."""
CORE = 0
"""The capture session itself."""
MEASURE = 100
"""Measurements that later listeners read (per-step gradient statistics)."""
CHECK = 200
"""Checks of those measurements (where a NaN came from)."""
PROBE = 300
"""Independent probes: the default."""
WINDOW = 400
"""Probes of the measured-step window (attention, then curvature: its double backward runs
after the attention probe stopped watching)."""

@dataclass
class BackwardEvent:
    """One call of ``torch.autograd.backward``."""

    tensors: Any
    """What the script passed to ``backward``."""
    loss: torch.Tensor | None
    """The scalar being backpropagated; None when backward got something else."""
    scale: float = 1.0
    """The AMP ``GradScaler`` scale of ``loss`` (1.0 when it was not scaled)."""
    step: int = 0
    """Filled by the session (CORE): the optimizer step this backward belongs to (the next one)."""
    measured: bool = False
    """Filled by the session (CORE): the first backward of the measured-step window; the window
    is closed, and its probes stop watching after reading it."""
    reading: Reading | None = None
    """Filled by the session (CORE): ``loss`` (as float32) on its device until it is read."""

    @property
    def value(self) -> float | None:
        """``loss`` unscaled, as a float. Read before the step, it costs a host sync of its own;
        read at the step, it comes with the step's other values (``capture.host_reads``)."""
        return loss_value(self.reading, self.scale)


def loss_value(reading: Reading | None, scale: float) -> float | None:
    """A backward's loss as a float, unscaled (``BackwardEvent.value``; listeners that keep the
    reading and scale rather than the event read it the same way)."""
    return None if reading is None else reading.value() / scale


class Listener:
    """What capture calls; every method is a no-op by default, override what you need.

    Torch events (from :class:`Hooks`) and session events (from the capture session) share the
    same order. A listener listens to the events it overrides (see :meth:`listens`).
    """

    priority: ClassVar[int] = PROBE

    def order(self, event: str) -> int:
        """Where this listener runs for ``event`` (lower first); :attr:`priority` unless a
        listener needs a different place for one event."""
        return self.priority

    def listens(self, event: str) -> bool:
        """Whether to call this listener for ``event``: when its class overrides it."""
        return getattr(type(self), event) is not getattr(Listener, event)

    # ------------------------------------------------------------------ torch events
    def optimizer_args(
        self, opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments torch's ``Optimizer.__init__`` will get (a fix may rewrite them)."""
        return args, kwargs

    def optimizer_created(
        self, opt: torch.optim.Optimizer, index: int, source: dict[str, Any] | None
    ) -> None:
        """A new optimizer (``index``: creation order), built at ``source`` (file, line)."""

    def forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Before any module's forward."""

    def forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """After any module's forward."""

    def before_backward(self, event: BackwardEvent) -> None:
        """Before the script's backward runs."""

    def after_backward(self, event: BackwardEvent) -> None:
        """After it returned (not when it raised)."""

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        """Before ``opt.step()``: the gradients it will apply are final (the session has not
        counted the step yet)."""

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        """After ``opt.step()`` (listeners after CORE see the step counted)."""

    # ------------------------------------------------------------------ session events
    def open(self) -> None:
        """Capture starts (everything is installed)."""

    def components_built(self, components: Sequence[Component]) -> None:
        """The components were (re)built: a new optimizer was seen."""

    def window_opened(self, step: int) -> None:
        """The measured-step window opened, before the forward of ``step``; it closes at that
        step's first backward (:attr:`BackwardEvent.measured`) or at ``close``."""

    def close(self) -> None:
        """Capture ends (everything is removed)."""

    def contribute(self, draft: ReportDraft) -> None:
        """Add this listener's fields to the report of the run."""


_EVENTS = tuple(
    name for name, value in vars(Listener).items()
    if callable(value) and not name.startswith("_") and name not in ("order", "listens")
)


class Hooks:
    """The listeners of one capture, in order, and the patches that call them."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners: list[Listener] = list(listeners)
        self._ordered: dict[str, list[Callable[..., Any]]] = {}
        self._restore: list[Callable[[], None]] = []
        self._optimizers: dict[int, int] = {}
        self._scaled: dict[int, Any] = {}

    def add(self, listener: Listener) -> None:
        if self._restore:
            raise RuntimeError("listeners are added before capture starts")
        self._listeners.append(listener)
        self._ordered.clear()

    def ordered(self, event: str) -> list[Callable[..., Any]]:
        """The bound methods to call for ``event``, in order."""
        if event not in _EVENTS:
            raise ValueError(f"no listener event {event!r}")
        if event not in self._ordered:
            chosen = sorted(
                (listener.order(event), i) for i, listener in enumerate(self._listeners)
                if listener.listens(event)
            )
            self._ordered[event] = [getattr(self._listeners[i], event) for _, i in chosen]
        return self._ordered[event]

    def dispatch(self, event: str, *args: Any) -> None:
        for method in self.ordered(event):
            method(*args)

    # ------------------------------------------------------------------ install / remove
    def __enter__(self) -> Hooks:
        hooks = self

        original_init = torch.optim.Optimizer.__init__

        @delegate
        def init(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            for rewrite in hooks.ordered("optimizer_args"):
                args, kwargs = rewrite(opt, args, kwargs)
            original_init(opt, *args, **kwargs)
            if id(opt) not in hooks._optimizers:
                hooks._created(opt)

        setattr(torch.optim.Optimizer, "__init__", init)  # noqa: B010 (a patch: no type to check)
        self._restore.append(lambda: setattr(torch.optim.Optimizer, "__init__", original_init))

        original_backward = torch.autograd.backward

        @delegate
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            event = hooks._backward_event(tensors)
            hooks.dispatch("before_backward", event)
            result = original_backward(tensors, *args, **kwargs)
            hooks.dispatch("after_backward", event)
            return result

        torch.autograd.backward = backward
        self._restore.append(lambda: setattr(torch.autograd, "backward", original_backward))

        scaler_cls = torch.amp.GradScaler
        original_scale = scaler_cls.scale

        @delegate
        def scale(scaler: Any, outputs: Any) -> Any:
            result = original_scale(scaler, outputs)
            if isinstance(result, torch.Tensor):
                hooks._scaled[id(result)] = scaler
            return result

        setattr(scaler_cls, "scale", scale)  # noqa: B010 (a patch: no type to check)
        self._restore.append(lambda: setattr(scaler_cls, "scale", original_scale))

        if self.ordered("before_step") or self.ordered("after_step"):
            steps = StepEvents(self.ordered("before_step"), self.ordered("after_step"))
            for handle in (optim_mod.register_optimizer_step_pre_hook(steps.pre_hook),
                           optim_mod.register_optimizer_step_post_hook(steps.post_hook)):
                self._restore.append(handle.remove)
        for event, register in (
            ("forward_pre", module_mod.register_module_forward_pre_hook),
            ("forward", module_mod.register_module_forward_hook),
        ):
            methods = self.ordered(event)
            if methods:
                handle = register(self._module_hook(methods))
                self._restore.append(handle.remove)
        quiet = QuietGlobalHookWarning()
        quiet.enter()
        self._restore.append(quiet.exit)
        try:
            self.dispatch("open")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()
        self.dispatch("close")

    def adopt(self, opt: torch.optim.Optimizer) -> None:
        """An optimizer built before capture started (the Python API, a trainer's callback):
        listeners hear of it as if it had been built now."""
        if id(opt) not in self._optimizers:
            self._created(opt)

    # ------------------------------------------------------------------ helpers
    def _created(self, opt: torch.optim.Optimizer) -> None:
        index = self._optimizers[id(opt)] = len(self._optimizers)
        source = user_caller()
        self.dispatch("optimizer_created", opt, index, source)

    def _backward_event(self, tensors: Any) -> BackwardEvent:
        loss = tensors if isinstance(tensors, torch.Tensor) else None
        if isinstance(tensors, (tuple, list)) and len(tensors) == 1:
            loss = tensors[0]
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return BackwardEvent(tensors, None)
        scaler = self._scaled.pop(id(loss), None)
        return BackwardEvent(
            tensors, loss, float(scaler.get_scale()) if scaler is not None else 1.0)

    @staticmethod
    def _module_hook(methods: Sequence[Callable[..., Any]]) -> Callable[..., None]:
        """One global module hook that calls every method, a no-op while dynamo traces
        (:func:`~hfault.capture.compiled.eager_only` and a fan-out in one frame: it runs twice
        per module call, at every step). It returns None: a forward hook's value would
        replace the module's output."""
        called = tuple(methods)

        def module_hook(*args: Any) -> None:
            if torch.compiler.is_compiling():
                return
            for method in called:
                method(*args)

        return module_hook


# ---------------------------------------------------------------------- for probes
def patch(owner: Any, name: str, wrap: Callable[[Any], Any]) -> Callable[[], None]:
    """Replace ``owner.name`` by ``wrap(original)`` (a probe's own window on a torch function;
    code that dynamo compiles calls the original); returns what puts the original back."""
    original = getattr(owner, name)
    setattr(owner, name, traced_as_original(original, wrap(original)))
    return lambda: setattr(owner, name, original)


def module_hooks(
    pre: Callable[[nn.Module, Any], None],
    post: Callable[[nn.Module, Any, Any], None],
    *,
    always_call: bool = False,
) -> list[Any]:
    """Global module forward pre/post hooks of a probe's own (removable handles)."""
    return [
        module_mod.register_module_forward_pre_hook(eager_only(pre)),
        module_mod.register_module_forward_hook(eager_only(post), always_call=always_call),
    ]
