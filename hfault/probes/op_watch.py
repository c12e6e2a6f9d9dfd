"""The torch op that first made a NaN/Inf from finite inputs, and the user's line that called it.

Module outputs localize a non-finite value to a module (``probes.numerics``); functional code
outside every module (``torch.log(p)`` in a loss expression, a plain-tensor program) leaves only
"the loss". :class:`OpWatch` then watches every torch call made with gradients enabled (a
``TorchFunctionMode``) and names the first op whose output is non-finite while all its inputs,
tensors and Python numbers, are finite (a ``masked_fill(mask, -inf)`` takes a non-finite
input: deliberate, not blamed), with file and line of the innermost user frame
(``capture.frames``); ops called by hfault's own hooks are not the script's.

A forward cannot be run again, so the watch starts for the steps after the first non-finite
loss no module output explains, and stops when it names an op or after
:data:`WATCHED_STEPS` steps (a NaN that spread into the weights reaches every op through
non-finite inputs, and only a watch from the first step sees where it was born:
``--nan-ops``, which watches from the start at the price of a check per op). Until then it costs
nothing: no mode is installed.
"""

from __future__ import annotations

import contextlib
import linecache
import math
import os
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from hfault.capture.contribution import ReportDraft
from hfault.capture.frames import is_hfault, is_library
from hfault.capture.hooks import CHECK, BackwardEvent, Listener

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession
    from hfault.probes.numerics import NumericsProbe

WATCHED_STEPS = 3
"""Steps watched after the first unexplained non-finite loss before giving up."""
_FORWARD_KINDS = ("activation", "loss")
_MAX_SITES = 64


def exit_if_on_top(mode: TorchFunctionMode) -> bool:
    """Pop ``mode`` if it is the innermost function mode; whether it was popped. It is not
    while one of its own calls is running (a hand-written update's ``W -= lr * W.grad`` is an op
    the mode handles, and the step events fire inside it: the stack is empty until the call
    returns) or when the script pushed a mode of its own on top: the caller retries later, and
    the mode passes calls through meanwhile. A mode left behind would outlive the run."""
    stack = torch.overrides._get_current_function_mode_stack()
    if not stack or stack[-1] is not mode:
        return False
    with contextlib.suppress(RuntimeError, AssertionError):
        mode.__exit__(None, None, None)
        return True
    return False


@dataclass
class OpSite:
    """One op that made a non-finite value from finite inputs."""

    step: int | None
    """The step whose backward the forward fed (None until that backward: a hand-written
    update's step ends only then)."""
    op: str
    value: str
    file: str
    line: int
    code: str | None


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    return name.removeprefix("__").removesuffix("__") if name.startswith("__") else name


def _in_place(name: str) -> bool:
    return name.endswith("_") or name.startswith("__i")


def _finite(values: list[Any]) -> bool:
    for v in values:
        if isinstance(v, torch.Tensor):
            if (v.is_floating_point() or v.is_complex()) and v.numel() and not bool(
                    torch.isfinite(v).all()):
                return False
        elif isinstance(v, float) and not math.isfinite(v):
            return False
    return True


def _first_nonfinite(values: list[Any]) -> str | None:
    for v in values:
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            bad = v.detach()[~torch.isfinite(v.detach())]
            if bad.numel():
                x = float(bad.flatten()[0])
                return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return None


def _caller() -> types.FrameType | None:
    """The innermost frame outside torch and the standard library that led to this op."""
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None and (is_library(frame.f_code.co_filename)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return frame


class _Mode(TorchFunctionMode):
    def __init__(self, watch: OpWatch) -> None:
        super().__init__()
        self.watch = watch
        self.stopped = False
        """Set when the watch ended while the mode could not be popped (below): it then only
        passes calls through until it can be."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.stopped or not torch.is_grad_enabled() or self.watch.seen_this_step():
            return func(*args, **kwargs)
        name = _op_name(func)
        inputs = tree_flatten((args, kwargs))[0]
        before = _finite(inputs) if _in_place(name) else None
        out = func(*args, **kwargs)
        outputs = tree_flatten(out)[0]
        value = _first_nonfinite(outputs)
        if value is None:
            return out
        if before is False or (before is None and not _finite(inputs)):
            return out
        frame = _caller()
        if frame is None or is_hfault(frame.f_code.co_filename):
            return out  # hfault's own arithmetic inside a hook
        self.watch.found(name, value, frame)
        return out


class OpWatch(Listener):
    """Names the op of a non-finite value made outside every module (``numerics[].op``)."""

    priority = CHECK + 1  # after the NaN check has recorded the step's events

    def __init__(self, session: CaptureSession, numerics: NumericsProbe, *,
                 always: bool = False) -> None:
        self.session = session
        self.numerics = numerics
        self.always = always
        self.sites: list[OpSite] = []
        self._mode: _Mode | None = None
        self._unpopped: _Mode | None = None
        """A stopped mode still on the stack, popped at the next chance (``_pop_stopped``)."""
        self._watched = 0
        self._done = False

    # ------------------------------------------------------------------ the mode
    def seen_this_step(self) -> bool:
        return bool(self.sites) and self.sites[-1].step is None

    def found(self, op: str, value: str, frame: types.FrameType) -> None:
        if len(self.sites) >= _MAX_SITES:
            del self.sites[: _MAX_SITES // 2]
        file, line = frame.f_code.co_filename, frame.f_lineno
        code = linecache.getline(file, line).strip() or None
        self.sites.append(OpSite(None, op, value, file, line, code))

    def _start(self) -> None:
        if self._mode is None and not self._done:
            self._mode = _Mode(self)
            self._mode.__enter__()

    def _stop(self) -> None:
        self._done = True
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.stopped = True
            self._unpopped = mode
            self._pop_stopped()

    def _pop_stopped(self) -> None:
        """Pop the stopped mode (``exit_if_on_top``); retried at the next step and at the end
        while it cannot be."""
        if self._unpopped is not None and exit_if_on_top(self._unpopped):
            self._unpopped = None

    # ------------------------------------------------------------------ listener events
    def open(self) -> None:
        if self.always:
            self._start()

    def before_backward(self, event: BackwardEvent) -> None:
        if self.sites and self.sites[-1].step is None:
            self.sites[-1].step = event.step  # the forward just made feeds this step

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        self._pop_stopped()
        if self._done:
            return
        first = self._first_forward_event()
        if first is None:
            return
        if self._site_for(first) is not None:
            self._stop()
        elif self._mode is None and first["where"] is None:
            self._start()  # a non-finite loss no module output explains: watch the next steps

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        if self._mode is None or self.always or self._done:
            return
        self._watched += 1
        if self._watched > WATCHED_STEPS:
            self._stop()
            self.session.state.notes.append(
                f"the op watch saw no torch op make a NaN/Inf from finite inputs in the "
                f"{WATCHED_STEPS} steps after the first non-finite loss (the values were "
                "already non-finite, e.g. in the weights): --nan-ops watches from the first "
                "step")

    def close(self) -> None:
        if self._mode is not None:
            self._stop()
        self._pop_stopped()

    def contribute(self, draft: ReportDraft) -> None:
        events = draft.sections.get("numerics") or []
        first = min((e for e in events if e["kind"] in _FORWARD_KINDS),
                    key=lambda e: e["step"], default=None)
        if first is None:
            return
        site = self._site_for(first)
        if site is not None:
            first.update(op=site.op, op_step=site.step, op_value=site.value,
                         file=os.path.abspath(site.file), line=site.line, code=site.code)

    # ------------------------------------------------------------------ helpers
    def _first_forward_event(self) -> dict[str, Any] | None:
        events = [e for e in self.numerics.events if e.kind in _FORWARD_KINDS]
        return events[0].to_dict() if events else None

    def _site_for(self, event: dict[str, Any]) -> OpSite | None:
        """The first op site at or after the event's step."""
        return next((s for s in self.sites if s.step is not None and s.step >= event["step"]),
                    None)
