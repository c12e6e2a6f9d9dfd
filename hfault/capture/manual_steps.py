"""Steps of a hand-written update loop: the script changes its parameters itself, no torch.optim.

pytorch/examples' word_language_model (``p.data.add_(p.grad, alpha=-lr)``) and many small
numerical programs (``with torch.no_grad(): W -= lr * W.grad``) never call ``optimizer.step()``,
which is where every probe takes its statistics. When the script's first ``backward`` comes
with no optimizer created, :class:`ManualSteps` stands a :class:`HandWrittenUpdate` in for one
(the session and the probes see an optimizer over the parameters the loss depends on, plus
those of the models that ran) and makes its steps from what the script does:

- after each ``backward`` (the gradients as backward left them: before the script's clipping),
  ``before_step``;
- at the next module forward, the next ``backward`` or the end of the run, whether the script
  changed the parameters since that backward (an in-place write bumps a tensor's version; a
  write through ``.data`` does not, so the parameters' norms are compared too) or reset their
  gradients (set to None or written in place): if so, that backward's step is over and
  ``after_step`` counts it; if not, the next backward adds to the same gradients (gradient
  accumulation) and belongs to the same step.

So a step is the backward calls between two parameter changes, whatever the loop's shape. The
parameter change between steps is measured, so the update ratio needs no learning rate; the
curvature rules do (``--lr``), and are skipped without it.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import EARLY, WINDOW, BackwardEvent, Listener
from hfault.components import find_roots

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession

STEPS_FROM_OPTIMIZER = "optimizer"
"""``run.steps_from``: steps are ``optimizer.step()`` calls."""
STEPS_FROM_BACKWARD = "backward"
"""``run.steps_from``: steps are the backward calls between two parameter changes."""
_AFTER_PROBES = WINDOW + 100  # after_backward: after every probe has read what backward left


class HandWrittenUpdate(torch.optim.SGD):  # its name is HAND_WRITTEN of fixes.lr_snippet
    """Stands for the script's own update in the session's optimizer list: one param group with
    the learning rate given by ``--lr`` (None: unknown). Plain gradient descent, which is what
    such loops write. Never steps, and is built without ``Optimizer.__init__``, so no listener
    takes it for an optimizer of the script's."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float | None) -> None:
        # Not Optimizer.__init__: hooks patch it, and it wants a numeric lr.
        self.defaults = {"lr": lr, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                         "nesterov": False, "maximize": False, "foreach": None,
                         "differentiable": False, "fused": None}
        self.param_groups = [{"params": list(params), **self.defaults}]
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        raise RuntimeError("the script updates its parameters itself")


def is_hand_written(optimizers: Iterable[torch.optim.Optimizer]) -> bool:
    """Whether a run's steps come from a hand-written update."""
    return any(isinstance(o, HandWrittenUpdate) for o in optimizers)


def step_size_unknown(optimizers: Iterable[torch.optim.Optimizer]) -> bool:
    """A hand-written update whose learning rate was not given: curvature rules cannot judge."""
    return any(isinstance(o, HandWrittenUpdate) and o.defaults["lr"] is None
               for o in optimizers)


def graph_leaves(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The leaf tensors that ``backward`` from ``tensors`` writes ``.grad`` of, in about the
    order the forward used them (the graph is walked from the loss, then reversed)."""
    found: dict[int, torch.Tensor] = {}
    stack: list[Any] = []
    for t in tensors:
        if t.grad_fn is not None:
            stack.append(t.grad_fn)
        elif t.requires_grad:
            found.setdefault(id(t), t)
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf's gradient sink
        if isinstance(variable, torch.Tensor):
            found.setdefault(id(variable), variable)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return list(reversed(found.values()))


def trained_parameters(event: BackwardEvent, modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    """What a hand-written loop trains: the trainable parameters of the models that ran (a
    module cut from the graph by mistake still counts: its missing gradient is a finding),
    then the other leaves the loss depends on (plain tensors with ``requires_grad``)."""
    tensors = [t for t in _as_tensors(event.tensors) if isinstance(t, torch.Tensor)]
    leaves = graph_leaves(tensors)
    params: dict[int, torch.Tensor] = {}
    for root in find_roots(modules, leaves):  # type: ignore[arg-type]
        for p in root.parameters():
            if p.requires_grad:
                params.setdefault(id(p), p)
    for leaf in leaves:
        params.setdefault(id(leaf), leaf)
    return list(params.values())


def optimizers_holding(params: Sequence[torch.Tensor]) -> list[torch.optim.Optimizer]:
    """Live optimizers (built before capture started, so no hook saw them built) that hold any
    of ``params``, in the order the garbage collector lists them. One scan of the collector's
    objects, made once per run and only when a backward comes with no optimizer known."""
    wanted = {id(p) for p in params}
    found = []
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance: it reads __class__, which some lazy modules warn on
        if (issubclass(kind, torch.optim.Optimizer) and not issubclass(kind, HandWrittenUpdate)
                and any(id(p) in wanted for g in obj.param_groups for p in g["params"])):
            found.append(obj)
    return found


def _as_tensors(tensors: Any) -> list[Any]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    return list(tensors) if isinstance(tensors, (tuple, list)) else []


@dataclass
class AfterBackward:
    """The parameters and gradients as a backward left them, to tell whether the script has
    applied its update since."""

    params: list[torch.Tensor]
    versions: list[int]
    grads: list[torch.Tensor | None]
    grad_versions: list[int]
    norms: torch.Tensor | None

    @classmethod
    def take(cls, params: list[torch.Tensor]) -> AfterBackward:
        grads = [p.grad for p in params]
        return cls(params, [p._version for p in params], grads,
                   [g._version if g is not None else -1 for g in grads], _norms(params))

    def changed(self) -> bool:
        """Whether a parameter or a gradient was written since (reads the norms only when no
        version counter says so: a write through ``.data`` bumps none)."""
        for p, version, grad, grad_version in zip(
                self.params, self.versions, self.grads, self.grad_versions, strict=True):
            if p._version != version or p.grad is not grad:
                return True
            if grad is not None and grad._version != grad_version:
                return True
        now = _norms(self.params)
        if now is None or self.norms is None:
            return False
        return not torch.equal(now, self.norms)  # NaN != NaN: a non-finite run keeps stepping


def _norms(params: list[torch.Tensor]) -> torch.Tensor | None:
    if not params:
        return None
    with torch.no_grad():
        norms = torch._foreach_norm([p.detach() for p in params], 2, dtype=torch.float64)
    device = norms[0].device
    return torch.stack([n.to(device) for n in norms])


class ManualSteps(Listener):
    """Counts the steps of a script that creates no optimizer before its first backward."""

    priority = EARLY  # a step ends before the session counts the next backward

    def __init__(self, session: CaptureSession, lr: float | None = None) -> None:
        self.session = session
        self.lr = lr
        self.update: HandWrittenUpdate | None = None
        self._decided = False
        self._retired = False
        self._after: AfterBackward | None = None
        self._note = ""

    def order(self, event: str) -> int:
        return _AFTER_PROBES if event == "after_backward" else self.priority

    @property
    def active(self) -> bool:
        return self.update is not None and not self._retired

    def optimizer_created(
        self, opt: torch.optim.Optimizer, index: int, source: dict[str, Any] | None
    ) -> None:
        if self.active and opt is not self.update:
            self._retired = True
            self._after = None
            self.session.step_not_taken()
            self.session.state.notes.append(
                f"the script created a {type(opt).__name__} after its first backward: the "
                "steps before it were counted from its hand-written update, later ones from "
                "optimizer.step()")
        self._decided = True

    def before_backward(self, event: BackwardEvent) -> None:
        if not self._decided:
            self._decided = True
            if not self.session.state.optimizers:
                self._start(event)
            return
        if self.active:
            self._end_step()

    def after_backward(self, event: BackwardEvent) -> None:
        if not self.active or self.update is None:
            return
        self.session.hooks.dispatch("before_step", self.update)
        self._after = AfterBackward.take(self.update.param_groups[0]["params"])

    def forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._after is not None:
            self._end_step()

    def close(self) -> None:
        if self._after is not None and self.active:
            self._end_step()
        if self.update is not None and self.session.state.step == 0:
            self._withdraw()

    def contribute(self, draft: ReportDraft) -> None:
        draft.run["steps_from"] = (STEPS_FROM_BACKWARD if self.update is not None
                                   else STEPS_FROM_OPTIMIZER)

    # ------------------------------------------------------------------ helpers
    def _start(self, event: BackwardEvent) -> None:
        state = self.session.state
        params = trained_parameters(event, list(state.modules.values()))
        if not params:
            return
        built = optimizers_holding(params)
        if built:  # built before capture started (a notebook's optimizer, outside the block)
            for opt in built:
                self.session.hooks.adopt(opt)
            names = ", ".join(type(o).__name__ for o in built)
            state.notes.append(
                f"the {names} that steps these parameters was built before capture started; "
                "it was found at the first backward and diagnosed as if built inside (pass "
                "optimizers= to hfault.watch to name it from the start)")
            return
        self.update = HandWrittenUpdate(params, self.lr)
        self.session.hooks.adopt(self.update)
        lr = (f"the learning rate given by --lr (or lr=) ({self.lr:g}) is used for curvature"
              if self.lr is not None else
              "without --lr (or lr=) its learning rate is unknown: curvature is skipped")
        self._note = (
            "the script creates no torch.optim optimizer: its hand-written update is "
            f"diagnosed first-order over {len(params)} tensors; a step is the backward calls "
            "between two changes of the parameters (update ratios are measured from that "
            f"change); {lr}")
        state.notes.append(self._note)

    def _withdraw(self) -> None:
        """No update ever followed a backward (a script that only computes gradients): the run
        is reported as one without an optimizer, with nothing to diagnose."""
        state = self.session.state
        index = next(i for i, o in enumerate(state.optimizers) if o is self.update)
        del state.optimizers[index], state.optimizer_sources[index]
        state.components = [c for c in state.components if c.optimizer != index]
        state.notes[:] = [n for n in state.notes if n is not self._note]
        self.update = None

    def _end_step(self) -> None:
        """The first forward or backward since the last backward (or the end of the run): that
        backward's step ended if the script applied its update since."""
        after, self._after = self._after, None
        if after is None or self.update is None:
            return
        if after.changed():
            self.session.hooks.dispatch("after_step", self.update)
        else:
            self.session.step_not_taken()
