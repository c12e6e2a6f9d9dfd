"""What the script feeds its log-likelihood loss: probabilities where log-probabilities or logits
belong (softmax before ``cross_entropy``, softmax without log before ``nll_loss``).

DeepDiagnosis-style checks of the loss input, done where the loss is computed: the functional
``cross_entropy``/``nll_loss`` are wrapped for the session (``nn.CrossEntropyLoss``/``NLLLoss`` call
them too). Only the first ``CHECKED_CALLS`` calls are read (one host sync each): the bug is in the
code, so it shows from the first step. The wrapped function returns exactly what it did.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import Listener, delegate, patch

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession

CHECKED_CALLS = 5
_SUM_TOL = 1e-3


@dataclass
class LossInputEvent:
    """A loss fed values of the wrong kind: ``kind`` is ``probabilities`` (rows in [0, 1] summing
    to 1, given to cross_entropy, which applies log-softmax itself) or ``not_log_probabilities``
    (non-negative values given to nll_loss, which expects log-probabilities ≤ 0)."""

    function: str
    kind: str
    step: int
    calls_checked: int = 0
    calls_flagged: int = 0
    producer: torch.Tensor | None = field(default=None, repr=False, compare=False)
    """The parameter nearest the flagged input in its autograd graph: the layer that made it."""
    scale: torch.Tensor | None = field(default=None, repr=False, compare=False)
    """A one-entry parameter nearer still (a learnable temperature), passed over for it."""

    def to_dict(self) -> dict[str, object]:
        return {
            "function": self.function,
            "kind": self.kind,
            "step": self.step,
            "calls_checked": self.calls_checked,
            "calls_flagged": self.calls_flagged,
        }


def nearest_parameter(tensor: torch.Tensor, limit: int = 256) -> torch.Tensor | None:
    """The trainable leaf nearest ``tensor`` in its autograd graph (fewest backward nodes): a
    parameter of the layer that produced it. With two heads (a detector's class and box
    layers), the last module to run need not be the one whose output the loss reads.

    A one-entry parameter is passed over: a learnable temperature that scales the logits
    (CLIP's ``logit_scale``, a contrastive model's τ) sits nearest them, but the layer that made
    them is the map behind it; it is returned only when nothing else is found."""
    found, scale = nearest_parameters(tensor, limit)
    return found if found is not None else scale


def nearest_parameters(tensor: torch.Tensor, limit: int = 256
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The nearest trainable leaf with more than one entry, and the nearest one-entry leaf
    passed over on the way (a temperature), each None when not found."""
    queue: deque[Any] = deque([tensor.grad_fn])
    seen: set[int] = set()
    scalar: torch.Tensor | None = None
    while queue and len(seen) < limit:
        node = queue.popleft()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            if variable.numel() > 1:
                return variable, scalar
            scalar = scalar if scalar is not None else variable
        queue.extend(next_node for next_node, _ in node.next_functions)
    return None, scalar


def _looks_like_probabilities(x: torch.Tensor) -> bool:
    if x.dim() < 2 or x.shape[1] < 2 or not x.is_floating_point():
        return False
    x = x.detach()
    rows = x.sum(dim=1)
    return bool(((x >= 0).all() & (x <= 1).all() & ((rows - 1).abs() < _SUM_TOL).all()).item())


LOG_LOSSES = ("cross_entropy", "nll_loss")
"""The losses over class scores that the label-fit and next-token probes read: ``nll_loss`` of
``log_softmax`` outputs (pytorch/examples, Lightning's demo) ranks the classes and gives the
same probabilities as ``cross_entropy`` of the logits."""


class LossInputWatch(Listener):
    """Wraps ``F.cross_entropy`` and ``F.nll_loss`` while a session is open."""

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self.events: dict[str, LossInputEvent] = {}
        self._calls: dict[str, int] = {}
        self.batch: int | None = None
        """Leading size of the last loss input (its samples, or samples × positions when the
        script flattens them): shapes only, no host sync."""
        self._restore: list[Callable[[], None]] = []
        self.entries: list[dict[str, object]] = []
        """The flagged losses as reported, with the output component (set at ``close``)."""
        self.observers: list[Callable[[str, Any, tuple[Any, ...], dict[str, Any]], None]] = []
        """Probes that read every loss call too (name, input, the other arguments): the wrapper
        is in place for the whole run, so a wrapper of the script's own, installed after the
        session opened, stays outside it and its changes are seen."""

    def open(self) -> None:
        for name, check in (("cross_entropy", _looks_like_probabilities),
                            ("nll_loss", _non_negative)):
            self._restore.append(patch(F, name, functools.partial(self._wrap, name, check=check)))

    def close(self) -> None:
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()
        output = self.session.output_component()
        owner = {id(part.param): c.name for c in self.session.state.components
                 for part in c.parts}
        self.entries = [{**e.to_dict(), "output_component": _made_by(e, owner, output)}
                        for e in self.flagged()]

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["loss_inputs"] = list(self.entries)

    def _wrap(self, name: str, original: Callable[..., Any],
              check: Callable[[torch.Tensor], bool]) -> Callable[..., Any]:
        kind = "probabilities" if name == "cross_entropy" else "not_log_probabilities"

        @delegate
        def wrapped(input: Any, *args: Any, **kwargs: Any) -> Any:
            calls = self._calls.get(name, 0)
            if isinstance(input, torch.Tensor) and input.dim() >= 2:
                self.batch = int(input.shape[0])
            if calls < CHECKED_CALLS and isinstance(input, torch.Tensor):
                self._calls[name] = calls + 1
                event = self.events.setdefault(
                    name, LossInputEvent(name, kind, self.session.state.step + 1))
                event.calls_checked += 1
                if check(input):
                    event.calls_flagged += 1
                    if event.producer is None and event.scale is None:
                        event.producer, event.scale = nearest_parameters(input)
            for observe in self.observers:
                observe(name, input, args, kwargs)
            return original(input, *args, **kwargs)

        wrapped.__wrapped__ = original  # type: ignore[attr-defined]
        return wrapped

    def flagged(self) -> list[LossInputEvent]:
        """Losses fed the wrong kind of values on most checked calls."""
        return [e for e in self.events.values() if e.calls_flagged * 2 > e.calls_checked]


def _made_by(event: LossInputEvent, owner: dict[int, str], output: str | None) -> str | None:
    """The component that made a flagged loss input. A temperature is passed over for the map
    behind it (CLIP's ``logit_scale``, held by the whole model), except when the module holding
    it is the output layer itself: a ``Similarity`` module that scales cosines by its τ returns
    the logits, and naming one of the two towers behind it would point at half the model."""
    scale = owner.get(id(event.scale)) if event.scale is not None else None
    if scale is not None and (scale == output or event.producer is None):
        return scale
    return owner.get(id(event.producer), output)


def _non_negative(x: torch.Tensor) -> bool:
    if x.dim() < 2 or x.shape[1] < 2 or not x.is_floating_point():
        return False
    return bool((x.detach() >= 0).all().item())
