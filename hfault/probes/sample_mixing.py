"""Which modules mix the samples of a batch: the output of one sample depends on another's input.

A batch/sequence axis swap (a ``batch_first`` flag that does not match the data, a transpose
forgotten before one block, an attention or recurrent layer handed (positions, batch, ...) where
it expects (batch, positions, ...)) trains: each sample's output becomes a function of the other
samples', the loss stays worse than it should, and gradient statistics look normal. What is
exact is the dependence structure: in a correct model the output of one sample does not depend
on another sample's input (BatchNorm in training mode excepted, through its batch statistics).

At the first measured step, for each module whose first input and first output are activations of
three dimensions or more (per-position layers such as ``Linear``, norms and dropout left out, and
modules holding a training-mode BatchNorm), the probe takes the gradient of a random projection
of the output's last index along each of its two leading axes with respect to the module's input,
on the graph the step already built: no extra forward, no parameter gradient touched, nothing the
script sees. A leading axis along which that gradient reaches the other indices is one the module
mixes. In a correct model the modules mix along the positions only; the rule (HF213) calls the
module that mixes along the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import WINDOW, BackwardEvent, Listener
from hfault.probes.attention import leading_sizes

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession
    from hfault.probes.loss_input import LossInputWatch

MAX_MODULES = 256
"""Modules tested at the step: each costs a backward through its own part of the graph."""
MIXING = 1e-4
"""Share of the gradient's norm on the other indices above which an axis counts as mixed; an
independent index gets exactly zero (no path in the graph), a mixed one a share of order 1/n."""
_PER_POSITION = (nn.Linear, nn.Dropout, nn.Identity, nn.Embedding, nn.LayerNorm)
_PER_POSITION_NAMES = ("Linear", "Dropout", "Conv1D", "Norm", "Activation", "GELU", "ReLU",
                       "SiLU", "Tanh", "Sigmoid", "Softmax", "Embedding", "Identity")


def per_position(module: nn.Module) -> bool:
    """A layer that maps each position on its own (it cannot mix anything along the leading
    axes): skipped, as is any module whose class name says so (transformers' ``Conv1D`` is a
    linear layer, ``*Norm`` and activation classes act per position, ``BatchNorm`` excepted)."""
    if isinstance(module, _BatchNorm):
        return False
    name = type(module).__name__
    leaf = not list(module.children())
    return isinstance(module, _PER_POSITION) or (
        leaf and any(part in name for part in _PER_POSITION_NAMES))


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether the module holds a BatchNorm in training mode, which mixes samples by design."""
    return any(isinstance(m, _BatchNorm) and m.training for m in module.modules())


def first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return first_tensor(value[0])
    if isinstance(value, dict) and value:
        return first_tensor(next(iter(value.values())))
    return None


def mixing_shares(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                  ) -> list[torch.Tensor | None]:
    """For each of the two leading axes that ``x`` and ``y`` share (same size, at least 2): the
    share of the gradient of a random projection of ``y``'s last index along that axis, with
    respect to ``x``, that falls on ``x``'s other indices (0 when they do not feed it); None for
    an axis not shared. Device tensors: nothing is read here."""
    out: list[torch.Tensor | None] = []
    for axis in (0, 1):
        n = int(x.shape[axis])
        if n < 2 or int(y.shape[axis]) != n:
            out.append(None)
            continue
        last = y.select(axis, n - 1)
        weights = torch.randn(last.shape, generator=generator).to(last.device, torch.float32)
        (grad,) = torch.autograd.grad((last.float() * weights).sum(), x, retain_graph=True,
                                      allow_unused=True)
        if grad is None:
            out.append(None)
            continue
        grad = grad.detach().double()
        total = grad.norm()
        other = grad.narrow(axis, 0, n - 1).norm()  # not √(total² − own²): 0 must stay 0
        out.append(torch.where(total > 0, other / total, torch.zeros_like(total)))
    return out


def position_ids_size(ids: torch.Tensor) -> int | None:
    """T when ``ids`` (an embedding's integer input) are position ids: 0, 1, …, T − 1 (from any
    offset) along the last axis, the same in every row (``arange(T)``, expanded over the batch or
    not). A learned position embedding tells the positions axis apart from the batch where the
    loss cannot (a per-token loss over samples × positions)."""
    if ids.is_floating_point() or ids.dim() == 0 or ids.shape[-1] < 3:
        return None
    n = int(ids.shape[-1])
    steps = torch.arange(n, device=ids.device)
    rows = ids.reshape(-1, n)
    return n if bool((rows == rows[:1, :1] + steps).all()) else None


def reentrant_checkpoint(loss: torch.Tensor, limit: int = 200_000) -> bool:
    """Whether the loss's graph holds a reentrant ``torch.utils.checkpoint`` region (a bounded
    walk: a graph larger than ``limit`` nodes is taken to hold one, and left untested)."""
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > limit or "CheckpointFunction" in type(node).__name__:
            return True
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return False


class SampleMixingProbe(Listener):
    """At the first measured step: along which leading sizes each tested module mixes."""

    priority = WINDOW

    def __init__(self, session: CaptureSession, loss_inputs: LossInputWatch | None = None) -> None:
        self.session = session
        self.loss_inputs = loss_inputs
        self._watching = False
        self._done = False
        self._seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self._input_axes: tuple[int, int] | None = None
        self._positions: int | None = None
        self.record: dict[str, Any] | None = None

    def window_opened(self, step: int) -> None:
        if not self._done:
            self._watching, self._seen, self._input_axes = True, [], None
            self._positions = None

    def forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._watching and self._input_axes is None:
            self._input_axes = leading_sizes(args)

    def forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._watching or len(self._seen) >= MAX_MODULES or not torch.is_grad_enabled():
            return
        x = first_tensor(args)
        y = first_tensor(output)
        if self._positions is None and isinstance(module, nn.Embedding) and x is not None:
            self._positions = position_ids_size(x)
        if (x is None or y is None or x.dim() < 3 or y.dim() < 3 or not x.requires_grad
                or not y.requires_grad or not x.is_floating_point()
                or not y.is_floating_point()):
            return
        if per_position(module) or uses_batch_statistics(module):
            return
        self._seen.append((module, x, y))

    def before_backward(self, event: BackwardEvent) -> None:
        if not (event.measured and self._watching):
            return
        self._watching, self._done = False, True
        seen, self._seen = self._seen, []
        if not seen:
            return
        if event.loss is not None and reentrant_checkpoint(event.loss):
            # its backward calls torch.autograd.backward itself, which the capture counts as the
            # script's; and it refuses torch.autograd.grad
            self.record = {"step": event.step, "skipped": "reentrant activation checkpointing"}
            return
        names = self.session.module_names()
        generator = torch.Generator().manual_seed(0)  # the script's random stream is not drawn
        entries: list[tuple[str, str, list[int], list[torch.Tensor | None]]] = []
        for module, x, y in seen:
            try:
                shares = mixing_shares(x, y, generator)
            except RuntimeError:  # a graph that cannot be differentiated there: not tested
                continue
            entries.append((names.get(id(module), type(module).__name__),
                            type(module).__name__, [int(x.shape[0]), int(x.shape[1])], shares))
        present = [s for _, _, _, shares in entries for s in shares if s is not None]
        values = torch.stack([s.to("cpu") for s in present]).tolist() if present else []
        it = iter(values)
        modules = []
        for name, kind, sizes, shares in entries:
            read = [next(it) if s is not None else None for s in shares]
            modules.append({"module": name, "type": kind, "sizes": sizes, "shares": read,
                            "mixes": [v is not None and v > MIXING for v in read]})
        batch = self.loss_inputs.batch if self.loss_inputs is not None else None
        self.record = {"step": event.step, "input_axes": list(self._input_axes or []) or None,
                       "batch": batch, "positions": self._positions, "modules": modules}

    def close(self) -> None:
        self._watching, self._seen = False, []

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["sample_mixing"] = self.record
