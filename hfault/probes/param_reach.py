"""Whether a component that gets no gradient has any influence on the loss at all.

A trainable component whose gradient is None (or exactly zero) at a measured step is either cut
from the loss (a ``.detach()`` on its output, a ``.data`` read, a ``torch.no_grad()`` block: its
values still reach the loss, without a gradient, and the model trains without it: a fault) or
not used by the loss at all: a pooler that ``BertModel`` computes while the script's head reads
``last_hidden_state``, XLNet's segment embedding when no ``token_type_ids`` are passed. Those
are computed or held and ignored by design; calling them dead components is a false error on
ordinary code.

The gradient cannot tell the two apart (there is no path in the graph either way); the values
can. At the measured step after one where such components were found, the probe watches the
forward (a ``TorchFunctionMode``, that one step only) and marks every tensor computed from
their parameters, through any op, ``.detach()`` and ``.data`` included; at the step's first
backward it reads whether the loss is marked, and whether any op read the parameters at all.
Only those components' parameters are followed, so a run where every component gets a gradient
installs nothing.

Read and not reaching the loss is two things, told apart by where the result was dropped (a
module forward hook for that step only records which module calls returned marked tensors): an
output the component's enclosing module returns, which the code around the model then ignores
(``BertModel``'s pooler, an auxiliary head's output), is an optional output, unused by design;
one dropped inside the enclosing module's own forward (``h = self.norm(x)`` and then ``x`` used,
a layer whose result a hook throws away) is dead code. Not read at all is two things as well: a
lone parameter beside a module's layers that an optional input would read (XLNet's segment
embedding) is unused by design; a whole layer whose weights nothing reads was bypassed or never
called (a norm layer defined and left out of ``forward``), unless the model that holds it is a
library's and never called it that step: library models hold layers that only some inputs or
methods use (LUKE's entity attention without entity inputs, ESM's contact head, BART's shared
embedding beside the copies its encoder and decoder read). The rules keep dead code and missing
layers as dead components.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import BackwardEvent, Listener
from hfault.components import Component
from hfault.probes.op_watch import exit_if_on_top

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession

MAX_FOLLOWED = 64
"""Components followed at most (the first ones in forward order): each adds its parameters."""


def _no_gradient(component: Component) -> bool:
    """Every part of the component has a gradient of None or of zeros."""
    for part in component.parts:
        grad = part.param.grad
        if grad is not None and bool(part.view(grad).ne(0).any()):
            return False
    return True


def _tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors in a module's output: tuples, lists, dicts (transformers' ``ModelOutput``)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 3:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, depth + 1)]
    return []


_METADATA = frozenset({
    "numel", "nelement", "dim", "ndimension", "size", "stride", "storage_offset", "data_ptr",
    "element_size", "is_floating_point", "is_complex", "is_contiguous", "is_sparse", "get_device",
    "untyped_storage", "__len__", "_is_view",
})
"""Tensor methods that read no values (transformers' ``self.dtype`` scans the parameters)."""
_DISPATCH = (("hooks.py", "dispatch"), ("step_events.py", "_dispatch"))
"""Where hfault calls its listeners: ops below these frames are hfault's own."""


def _reads_values(func: Any) -> bool:
    """Whether a call reads a tensor's values: an attribute of the tensor other than ``.data``
    (``.grad`` set to None by ``zero_grad``, ``.shape``, ``.requires_grad``) or a metadata
    method does not."""
    name = getattr(func, "__name__", "")
    if name in _METADATA:
        return False
    if name not in ("__get__", "__set__", "__delete__"):
        return True
    return getattr(getattr(func, "__self__", None), "__name__", "") == "data"


def _in_place(func: Any) -> bool:
    """Whether a call writes its first argument: ``__setitem__`` and the trailing-underscore
    methods (``copy_``, ``index_put_``, ``masked_scatter_``). A value written into another tensor
    reaches whatever reads that tensor (Longformer writes its global-attention outputs into the
    sliding-window result by index)."""
    name = getattr(func, "__name__", "")
    return name == "__setitem__" or (name.endswith("_") and not name.startswith("__"))


def _parents(called: Any) -> dict[int, nn.Module]:
    """id(module) -> its parent, over every module under the called ones: a layer never called
    (the case that matters here) has a parent all the same."""
    parents: dict[int, nn.Module] = {}
    seen: set[int] = set()
    for top in called:  # forward order: the root model first, and its subtree covers the rest
        if id(top) in seen:
            continue
        for module in top.modules():
            seen.add(id(module))
            for child in module.children():
                parents[id(child)] = module
    return parents


def _installed(cls: type) -> bool:
    """Whether a module class comes from an installed package (transformers, torch), not from
    the user's code: a library model holds layers that only some inputs use (LUKE's entity
    attention, ESM's contact head, a shared embedding copied into encoder and decoder), where a
    layer the user's own forward never calls was forgotten."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None) or ""
    return any(root and path.startswith(root) for root in _PACKAGE_ROOTS)


_PACKAGE_ROOTS = tuple({os.path.join(p, "") for p in (
    *(sysconfig.get_paths().get(key) for key in ("purelib", "platlib")),
    *site.getsitepackages(), site.getusersitepackages()) if p})


def _from_listener() -> bool:
    """Whether the running op was called by one of hfault's listeners (update ratios, norms)."""
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if any(code.co_filename.endswith(os.sep + "capture" + os.sep + file)
               and code.co_name == fn for file, fn in _DISPATCH):
            return True
        frame = frame.f_back
    return False


class _Mode(TorchFunctionMode):
    """Marks the outputs of every op that reads a marked tensor with the union of its inputs'
    marks (bit i: computed from component i's parameters)."""

    def __init__(self, marked: dict[int, tuple[torch.Tensor, int]]) -> None:
        super().__init__()
        self.marked = marked
        self.params = {key: bits for key, (_, bits) in marked.items()}
        self.read = 0
        """Bits of the components whose parameters an op read directly."""
        self.stopped = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.stopped or not _reads_values(func):
            return out
        bits = read = 0
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and (seen := self.marked.get(id(t))) is not None:
                bits |= seen[1]
                read |= self.params.get(id(t), 0)
        if bits and _from_listener():
            return out
        if torch.is_grad_enabled():  # an EMA copy or a validation pass does not count
            self.read |= read
        if bits:
            written = [kwargs.get("out")]
            if _in_place(func) and args:
                written.append(args[0])  # ``buf[i] = value``, ``buf.copy_(value)``
            for t in tree_flatten((out, written))[0]:
                if isinstance(t, torch.Tensor):
                    # the tensor is kept: its id must not be reused by another one this step
                    self.marked[id(t)] = (t, bits | self.marked.get(id(t), (t, 0))[1])
        return out


class ParamReach(Listener):
    """Records, per component without a gradient, whether an op read its parameters and whether
    its values reached the loss."""

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self._components: list[Component] = []
        self._suspects: list[Component] = []
        self._checked_step: int | None = None
        self._mode: _Mode | None = None
        self._left: _Mode | None = None
        self._marked: dict[int, tuple[torch.Tensor, int]] = {}
        self._measured_backward = False
        self._armed = False
        self._hook: Any = None
        self._returned: dict[int, int] = {}
        """id(module) -> bits of the components whose marked values its calls returned."""
        self._called: set[int] = set()
        """id(module) of every module called in the followed forward."""
        self.record: dict[str, Any] | None = None

    def components_built(self, components: Sequence[Component]) -> None:
        self._components = list(components)

    def after_backward(self, event: BackwardEvent) -> None:
        if event.measured:
            self._measured_backward = True

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        """At the first measured step: the components the optimizer will step without a
        gradient."""
        self._pop_left()
        if not self._measured_backward or self._checked_step is not None:
            return
        self._measured_backward = False
        self._checked_step = self.session.step_of(opt)
        with torch.no_grad():
            suspects = [c for c in self._components if c.parts and _no_gradient(c)]
        self._suspects = suspects[:MAX_FOLLOWED]

    def order(self, event: str) -> int:
        # the mode starts after every other listener's after_step: their own reads of the
        # parameters (update ratios) are not the script's
        return 10_000 if event == "after_step" else self.priority

    def window_opened(self, step: int) -> None:
        self._armed = bool(self._suspects) and self.record is None

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        """The window for the next step's forward is open: start following the parameters."""
        if not self._armed or self._mode is not None:
            return
        self._armed = False
        self._marked = {}
        for i, comp in enumerate(self._suspects):
            for part in comp.parts:
                seen = self._marked.get(id(part.param), (part.param, 0))[1]
                self._marked[id(part.param)] = (part.param, seen | (1 << i))
        self._returned = {}
        self._called = set()
        self._hook = nn.modules.module.register_module_forward_hook(self._module_returned)
        self._mode = _Mode(self._marked)
        self._mode.__enter__()

    def _module_returned(self, module: nn.Module, args: Any, output: Any) -> None:
        self._called.add(id(module))
        bits = self._marks(_tensors(output))
        if bits:
            self._returned[id(module)] = self._returned.get(id(module), 0) | bits

    def before_backward(self, event: BackwardEvent) -> None:
        if self._mode is None or not event.measured:
            return
        bits = self._marks(tree_flatten(event.tensors)[0])
        read = self._mode.read
        self._stop()
        parents = _parents(self.session.state.modules.values())
        components = {}
        for i, comp in enumerate(self._suspects):
            owner = comp.module
            enclosing = parents.get(id(owner), owner) if owner is not None else None
            components[comp.name] = {
                "reaches_loss": bool(bits >> i & 1), "read": bool(read >> i & 1),
                "returned": enclosing is not None
                and bool(self._returned.get(id(enclosing), 0) >> i & 1),
                "called": owner is not None and id(owner) in self._called,
                "library": enclosing is not None and enclosing is not owner
                and _installed(type(enclosing))}
        self.record = {"step": event.step, "found_at": self._checked_step,
                       "components": components}
        self._suspects, self._marked = [], {}

    def _marks(self, values: list[Any]) -> int:
        """The union of the marks of the tensors among ``values``."""
        bits = 0
        for t in values:
            if isinstance(t, torch.Tensor) and (seen := self._marked.get(id(t))) is not None:
                bits |= seen[1]
        return bits

    def _stop(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.stopped = True
            self._left = mode
        self._pop_left()

    def _pop_left(self) -> None:
        """Pop a stopped mode (``exit_if_on_top``); retried at the next step and at the end
        while it cannot be."""
        if self._left is not None and exit_if_on_top(self._left):
            self._left = None

    def close(self) -> None:
        self._stop()
        self._marked = {}

    def contribute(self, draft: ReportDraft) -> None:
        if self.record is not None:
            draft.sections["param_reach"] = self.record
