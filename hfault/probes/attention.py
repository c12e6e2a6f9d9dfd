"""Attention-weight probes: entropy (mean, and min over heads) and the largest pre-softmax logit of
every attention module, measured during the forward of a measured step.

Collapse (entropy → 0) zeroes the softmax Jacobian diag(a) − aaᵀ, so the query/key gradients and
Hessian blocks vanish while the value block stays active; logit growth precedes it. Weights are
read where they are made: ``softmax`` calls (functional, ``torch.softmax``, ``Tensor.softmax``)
and ``scaled_dot_product_attention`` (whose weights are recomputed without grad, from q and k)
made while an attention module is running. Nothing is recorded outside the measured window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import WINDOW, BackwardEvent, Listener, delegate, module_hooks, patch
from hfault.components import is_attention_module

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession
    from hfault.probes.loss_input import LossInputWatch


@dataclass
class AttentionStats:
    """Running statistics of one attention module's weights over one forward."""

    calls: int = 0
    rows: int = 0
    entropy_sum: float = 0.0
    entropy_norm_sum: float = 0.0
    norm_rows: int = 0
    """Rows with at least two unmasked keys: those the normalized entropy is averaged over."""
    head_min: float = math.inf
    max_logit: float = -math.inf
    heads: int | None = None
    keys: int = 0
    queries: int = 0
    """The most query rows of one call (the weights' second-to-last size): a self-attention's
    equals its keys, a cross-attention's (queries from one sequence, keys from another) need not."""
    mask_offset: int | None = None
    """k when the mask is causal-shaped, 'key j hidden from query i iff j − i > k' (0 = causal)."""
    std_sum: float = 0.0
    std_rows: int = 0
    masked: int = 0
    entries: int = 0
    gain_sum: float = 0.0
    gain_calls: int = 0
    operand_sum: float = 0.0
    """Sum over the calls with a gain of √(RMS(q)·RMS(k)): how large the two operands are."""
    inner: int | None = None
    axes: list[tuple[tuple[int, ...], int]] = field(default_factory=list)
    """(shape, dim) of each distinct softmax this module took over an axis other than its last."""
    summed: list[tuple[int, ...] | None] = field(default_factory=list)
    """Per entry of ``axes``: the axes (of the weights) that the first product applying those
    weights summed over, when a matrix product or einsum consumed them directly; else None."""
    pad_mass: float = 0.0
    pad_share: float = 0.0
    pad_rows: int = 0
    """Over the rows of real queries of padded samples whose keys are the model input's
    positions: the attention weight that lands on padding, the share of keys that are padding."""
    values_calls: int = 0
    values_constant: int = 0
    """Of the calls whose values were seen (SDPA's ``value``, the operand a product applies the
    weights to), those where every key's value vector was the same: the weights then cannot
    change the output, and the query and key projections get no gradient worth the name
    (DETR's first decoder layer, whose queries start at zero)."""
    pad_alike: int = 0
    pad_several: int = 0
    """Of those rows with two or more open padded keys (``pad_several``), the ones whose scores at
    every padded key are alike (``pad_alike``): the padding is one constant "null" slot."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "entropy_mean": self.entropy_sum / self.rows if self.rows else None,
            "entropy_norm_mean": (self.entropy_norm_sum / self.norm_rows if self.norm_rows
                                  else None),
            "entropy_norm_head_min": self.head_min if math.isfinite(self.head_min) else None,
            "max_logit": self.max_logit if math.isfinite(self.max_logit) else None,
            "heads": self.heads,
            "keys": self.keys,
            "queries": self.queries or None,
            "calls": self.calls,
            "mask_offset": self.mask_offset,
            "logit_std": self.std_sum / self.std_rows if self.std_rows else None,
            "masked_share": self.masked / self.entries if self.entries else None,
            "logit_gain": self.gain_sum / self.gain_calls if self.gain_calls else None,
            "qk_rms": self.operand_sum / self.gain_calls if self.gain_calls else None,
            "inner": self.inner,
            "padding_mass": self.pad_mass / self.pad_rows if self.pad_rows else None,
            "padding_share": self.pad_share / self.pad_rows if self.pad_rows else None,
            "padding_alike": self.pad_alike / self.pad_several if self.pad_several else None,
            "values_constant": (self.values_constant / self.values_calls if self.values_calls
                                else None),
            "softmax_axes": [{"shape": list(shape), "dim": dim,
                              "summed": list(summed) if summed is not None else None}
                             for (shape, dim), summed in zip(self.axes, self.summed,
                                                             strict=True)],
        }


def _heads_view(p: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
    """(..., heads, queries, keys) when the head axis is known."""
    if p.dim() >= 4:
        return p
    heads = getattr(module, "num_heads", None) or getattr(module, "n_heads", None)
    if isinstance(heads, int) and p.dim() == 3 and p.shape[0] % heads == 0:
        return p.reshape(-1, heads, p.shape[1], p.shape[2])  # MultiheadAttention folds heads
    if heads is None and p.dim() == 3:
        return p.unsqueeze(-3)  # (batch, queries, keys): single-head attention
    return None


def leading_sizes(args: Any) -> tuple[int, int] | None:
    """The two leading sizes of the first tensor of ≥ 2 dimensions among a call's positional
    arguments: of the first module called in a forward, the model input's (batch, positions) or
    (positions, batch)."""
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2), None)
    return (int(first.shape[0]), int(first.shape[1])) if first is not None else None


class AttentionProbe:
    """Install with ``start()`` before a measured forward, ``stop()`` after; read ``stats``."""

    def __init__(self, is_attention: Callable[[nn.Module], bool],
                 found: dict[int, nn.Module] | None = None) -> None:
        self.is_attention = is_attention
        self.found: dict[int, nn.Module] = found if found is not None else {}
        """Modules found to compute attention by what they do, not by their name: a softmax
        over the last axis of scores made by a product of two activations (q·kᵀ), or a
        ``scaled_dot_product_attention`` call, in their own forward (PaLM's parallel block, a
        ``Block`` with its attention written inline)."""
        self.stats: dict[int, AttentionStats] = {}
        self.modules: dict[int, nn.Module] = {}
        self._stack: list[nn.Module] = []
        self._running: list[nn.Module] = []
        """Every module whose forward is running, innermost last."""
        self._restore: list[Callable[[], None]] = []
        self._handles: list[Any] = []
        self._operands: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        """Per attention module: the two operands of its latest product (matrix product,
        einsum, or linear layer) and the inner size; the scores are the product that precedes
        the softmax. Their RMS is read only when a softmax follows."""
        self._weights: dict[int, tuple[torch.Tensor, AttentionStats, int]] = {}
        """Softmax outputs over an axis other than the last, by id: (the tensor, its module's
        stats, its entry in ``axes``), until a product applies them (which axes it sums over)."""
        self._weighted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """Elementwise products of tracked weights (or a view of them) by id: (the product, the
        weights operand), until a sum over some of its axes applies them."""
        self._probs: dict[int, torch.Tensor] = {}
        """Attention weights (a softmax over the last axis) by id, kept for the window: a
        product that takes one as its first operand applies it to the values."""
        self._inputs: list[torch.Tensor] = []
        """Where padding may be: the first tensor of ≥ 2 dimensions a module was called with in
        the window (the model's input), then the integer inputs of its embedding calls (a
        translation model's source and target ids)."""
        self._pads: list[torch.Tensor] = []
        self._looked = 0
        """Padding found in ``_inputs[:_looked]``, (batch, positions) each."""
        self.input_axes: tuple[int, int] | None = None
        """The two leading sizes of the first tensor of ≥ 2 dimensions a module was called with
        in the window: the model's input, (batch, positions) or (positions, batch). When the
        loss input is flattened (samples × positions), they still tell the batch axis apart."""

    # ------------------------------------------------------------------ window
    def start(self) -> None:
        if self._restore:
            return
        self.stats, self.modules, self._stack, self._running = {}, {}, [], []
        self.input_axes, self._inputs, self._pads, self._looked = None, [], [], 0
        self._handles = module_hooks(self._push, self._pop, always_call=True)
        self._patch(F, "softmax", self._wrap_softmax)
        self._patch(torch, "softmax", self._wrap_softmax)
        self._patch(torch.Tensor, "softmax", self._wrap_softmax)
        self._patch(F, "scaled_dot_product_attention", self._wrap_sdpa)
        self._operands, self._probs = {}, {}
        self._patch(torch, "matmul", lambda o: self._wrap_product(o, 0))
        self._patch(torch.Tensor, "__matmul__", lambda o: self._wrap_product(o, 0))
        self._patch(torch, "bmm", lambda o: self._wrap_product(o, 0))
        self._patch(torch, "baddbmm", lambda o: self._wrap_product(o, 1))
        self._patch(F, "linear", self._wrap_linear)
        self._patch(torch, "einsum", self._wrap_einsum)
        self._patch(F, "embedding", self._wrap_embedding)
        for owner, name in ((torch, "mul"), (torch.Tensor, "mul"), (torch.Tensor, "__mul__"),
                            (torch.Tensor, "__rmul__")):
            self._patch(owner, name, self._wrap_mul)
        self._patch(torch, "sum", self._wrap_sum)
        self._patch(torch.Tensor, "sum", self._wrap_sum)

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        for restore in reversed(self._restore):
            restore()
        self._handles, self._restore, self._stack, self._running = [], [], [], []
        self._weights, self._probs, self._weighted = {}, {}, {}
        self._inputs, self._pads, self._looked = [], [], 0

    def _patch(self, owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Any]) -> None:
        self._restore.append(patch(owner, name, wrap))

    # ------------------------------------------------------------------ module stack
    def _push(self, module: nn.Module, args: Any) -> None:
        if self.input_axes is None:
            self.input_axes = leading_sizes(args)
            if self.input_axes is not None:
                self._inputs.append(next(a for a in args if isinstance(a, torch.Tensor)
                                         and a.dim() >= 2))
        self._running.append(module)
        if self.is_attention(module) or id(module) in self.found:
            self._stack.append(module)
            self._operands.pop(id(module), None)  # a product of an earlier call is not this one's

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()
        if self._running and self._running[-1] is module:
            self._running.pop()

    def _discover(self) -> bool:
        """Attention computed while no module named as attention runs: the innermost running
        module computed it, and is attention from now on (the components are built from
        ``found`` too)."""
        if self._stack:
            return True
        if not self._running:
            return False
        module = self._running[-1]
        self.found[id(module)] = module
        self._stack.append(module)
        return True

    # ------------------------------------------------------------------ wrappers
    def _wrap_softmax(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        @delegate
        def softmax(logits: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(logits, *args, **kwargs)
            if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor)):
                return out
            dim = kwargs.get("dim", args[0] if args else None)
            if dim is None:  # F.softmax's implicit dim (deprecated, still used)
                dim = 0 if out.dim() in (0, 1, 3) else 1
            if not isinstance(dim, int) or out.dim() == 0:
                return out
            last = dim % out.dim() == out.dim() - 1
            if not probe._stack and not (
                    last and out.dim() >= 2 and out.shape[-1] > 1
                    and isinstance(logits, torch.Tensor)
                    and scores_of_two_activations(logits, batched=out.dim() == 2)
                    and probe._discover()):
                return out
            if last and out.shape[-1] > 1:
                probe._record(logits, out)
                probe._probs[id(out)] = out
                return out
            axis = dim % out.dim()
            probe._record_axis(out, axis)
            if (isinstance(logits, torch.Tensor) and logits.shape == out.shape
                    and deliberate_axis(tuple(out.shape), axis)):
                # weights over another axis by design (Slot Attention's slots competing for
                # each input, (batch, positions, 1) pooling scores): measured over that axis
                probe._record(logits.movedim(axis, -1), out.movedim(axis, -1))
            return out

        return softmax

    def _wrap_product(self, original: Callable[..., Any], first: int) -> Callable[..., Any]:
        probe = self

        @delegate
        def product(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if probe._stack and torch.is_grad_enabled() and len(args) >= first + 2:
                a, b = args[first], args[first + 1]
                if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() >= 2:
                    probe._operands[id(probe._stack[-1])] = (a, b, int(a.shape[-1]))
                    if id(a) in probe._probs and b.dim() >= 2:  # weights @ values
                        probe._record_values(b, b.dim() - 2)
                if probe._weights and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                    probe._applied(a, (a.dim() - 1,))
                    probe._applied(b, (max(b.dim() - 2, 0),))
            return out

        return product

    def _wrap_mul(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """Weights applied by an elementwise product summed afterwards (vector attention's
        ``(w * values).sum(dim=2)`` over the neighbours, per channel): the product of tracked
        weights is followed to its sum."""
        probe = self

        @delegate
        def mul(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(a, b, *args, **kwargs)
            if probe._weights and isinstance(out, torch.Tensor):
                for w in (a, b):
                    if isinstance(w, torch.Tensor) and w.dim() == out.dim() and any(
                            w is t or w._base is t for t, _, _ in probe._weights.values()):
                        probe._weighted[id(out)] = (out, w)
                        break
            return out

        return mul

    def _wrap_sum(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        @delegate
        def total(x: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(x, *args, **kwargs)
            if probe._weighted and isinstance(x, torch.Tensor) and id(x) in probe._weighted:
                dim = kwargs.get("dim", args[0] if args else None)
                dims = (dim,) if isinstance(dim, int) else dim
                if isinstance(dims, (tuple, list)) and dims and all(
                        isinstance(d, int) for d in dims):
                    _, weights = probe._weighted.pop(id(x))
                    probe._applied(weights, tuple(d % x.dim() for d in dims))
            return out

        return total

    def _wrap_linear(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A score made by a linear layer (additive attention ``v·tanh(Wq + Uk)``, a pooling
        head's ``Linear(d, 1)``): its operands are the layer's input and weight."""
        probe = self

        @delegate
        def linear(x: Any, weight: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(x, weight, *args, **kwargs)
            if (probe._stack and torch.is_grad_enabled() and isinstance(x, torch.Tensor)
                    and isinstance(weight, torch.Tensor) and weight.dim() == 2):
                probe._operands[id(probe._stack[-1])] = (x, weight, int(weight.shape[-1]))
            return out

        return linear

    def _wrap_einsum(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """Scores written as ``einsum("bhqd,bhkd->bhqk", q, k)``: the inner size is the
        product of the contracted axes."""
        probe = self

        @delegate
        def einsum(equation: Any, *operands: Any) -> Any:
            out = original(equation, *operands)
            if probe._stack and torch.is_grad_enabled() and isinstance(equation, str):
                tensors = (list(operands[0]) if len(operands) == 1
                           and isinstance(operands[0], (list, tuple)) else list(operands))
                if len(tensors) == 2 and all(isinstance(t, torch.Tensor) for t in tensors):
                    inner = contracted_size(equation, tensors[0])
                    if inner:
                        probe._operands[id(probe._stack[-1])] = (tensors[0], tensors[1], inner)
                if probe._weights:
                    for t, axes in zip(tensors, einsum_summed(equation, len(tensors)),
                                       strict=False):
                        if isinstance(t, torch.Tensor) and axes is not None:
                            probe._applied(t, axes)
            return out

        return einsum

    def _wrap_sdpa(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        @delegate
        def sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(query, key, value, *args, **kwargs)
            if torch.is_grad_enabled() and probe._discover():
                with torch.no_grad():
                    logits = _sdpa_logits(query, key, *args, **kwargs)
                    probe._operands[id(probe._stack[-1])] = (query, key, int(query.shape[-1]))
                    probe._record(logits, logits.softmax(-1))
                    if isinstance(value, torch.Tensor):
                        probe._record_values(value, value.dim() - 2)
            return out

        return sdpa

    def _record_values(self, value: torch.Tensor, keys_axis: int) -> None:
        """Whether every key's value vector is the same (within float noise) in this call."""
        if not self._stack:
            return
        stats = self.stats.get(id(self._stack[-1]))
        if stats is None:
            return
        stats.values_calls += 1
        stats.values_constant += int(constant_over(value, keys_axis))

    def _record_axis(self, probs: torch.Tensor, dim: int) -> None:
        module = self._stack[-1]
        stats = self.stats.setdefault(id(module), AttentionStats())
        self.modules[id(module)] = module
        entry = (tuple(probs.shape), dim)
        if entry not in stats.axes:
            if len(stats.axes) >= 4:
                return
            stats.axes.append(entry)
            stats.summed.append(None)
        index = stats.axes.index(entry)
        if stats.summed[index] is None:  # not yet seen applied: follow these weights
            self._weights[id(probs)] = (probs, stats, index)

    def _applied(self, operand: torch.Tensor, summed: tuple[int, ...]) -> None:
        """A product summed ``operand`` over ``summed``: if it is (a view of) softmax weights
        taken over an axis other than the last, record which of their axes that was."""
        for key, (weights, stats, index) in list(self._weights.items()):
            axes = view_axes(operand, weights, summed)
            if axes is not None:
                stats.summed[index] = axes
                del self._weights[key]
                return

    def _record(self, logits: torch.Tensor, probs: torch.Tensor) -> None:
        module = self._stack[-1]
        with torch.no_grad():
            p = probs.detach()
            if p.dtype in (torch.float16, torch.bfloat16):
                p = p.float()
            keys = p.shape[-1]
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (..., queries)
            # Normalized by the keys a row may attend to: a masked key is not a choice (a
            # graph's neighbours, a causal prefix, padding). A row with one key has no choice.
            scores = logits.detach()
            keep = unmasked(scores)
            open_keys = keep.sum(-1)
            if open_keys.shape != entropy.shape:  # scores not shaped like the weights
                open_keys = torch.full_like(entropy, keys, dtype=torch.long)
            chooses = open_keys >= 2
            norm = torch.where(chooses, entropy / open_keys.clamp_min(2).double().log(),
                               torch.zeros_like(entropy, dtype=torch.float64))
            stats = self.stats.setdefault(id(module), AttentionStats())
            self.modules[id(module)] = module
            stats.calls += 1
            stats.rows += entropy.numel()
            stats.norm_rows += int(chooses.sum())
            stats.entropy_sum += float(entropy.double().sum())
            stats.entropy_norm_sum += float(norm.sum())
            stats.keys = max(stats.keys, keys)
            stats.queries = max(stats.queries, p.shape[-2] if p.dim() >= 2 else 1)
            heads = _heads_view(torch.stack([norm, chooses.double()], -1), module)
            if heads is not None:
                per_head = heads.transpose(0, -3).reshape(heads.shape[-3], -1, 2).sum(1)
                stats.heads = per_head.shape[0]
                counted = per_head[:, 1] > 0
                if bool(counted.any()):
                    means = per_head[counted, 0] / per_head[counted, 1]
                    stats.head_min = min(stats.head_min, float(means.min()))
            if stats.mask_offset is None:
                stats.mask_offset = causal_mask_offset(scores)
            finite = scores[torch.isfinite(scores)]
            if finite.numel():
                stats.max_logit = max(stats.max_logit, float(finite.max()))
            spread, rows, _ = row_spread(scores, below_gap_masked(scores, keep))
            masked = int(scores.numel() - int(keep.sum()))
            stats.std_sum += spread
            stats.std_rows += rows
            operands = self._operands.pop(id(module), None)
            if operands is not None and rows:
                a, b, inner = operands
                ra, rb = _rms(a), _rms(b)
                if ra > 0 and rb > 0:
                    stats.gain_sum += spread / rows / (ra * rb * math.sqrt(inner))
                    stats.operand_sum += math.sqrt(ra * rb)
                    stats.gain_calls += 1
                    stats.inner = inner
            stats.masked += masked
            stats.entries += logits.numel()
            self._record_padding(p, scores, stats)

    def _wrap_embedding(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        @delegate
        def embedding(input: Any, *args: Any, **kwargs: Any) -> Any:
            if (isinstance(input, torch.Tensor) and input.dim() >= 2
                    and not input.is_floating_point() and len(probe._inputs) < MAX_PAD_INPUTS
                    and torch.is_grad_enabled()):
                probe._inputs.append(input)
            return original(input, *args, **kwargs)

        return embedding

    def _record_padding(self, p: torch.Tensor, scores: torch.Tensor,
                        stats: AttentionStats) -> None:
        """How much of the weights of real queries lands on the input's padding, when the keys
        are the positions of a padded input (a padding mask, applied, leaves exactly 0). With
        several padded inputs of that length (a translation's source and target), the one the
        weights avoid most: a module is called unmasked only if it reads padding whichever
        sequence its keys are."""
        try:  # a statistic of ours must never break the script's forward
            for x in self._inputs[self._looked:]:
                for pad in padding_positions(x.detach()):
                    if not any(pad.shape == q.shape and torch.equal(pad, q)
                               for q in self._pads):
                        self._pads.append(pad)
            self._looked = len(self._inputs)
            if p.dim() < 2 or p.numel() == 0:
                return
            best: PaddingWeight | None = None
            for pad in self._pads:
                found = padding_weight(p, pad, scores)
                if found is not None and found.rows and (
                        best is None or found.mass / found.rows < best.mass / best.rows):
                    best = found
        except (RuntimeError, ValueError, IndexError):
            self._looked = len(self._inputs)
            return
        if best is not None:
            stats.pad_mass += best.mass
            stats.pad_share += best.share
            stats.pad_rows += best.rows
            stats.pad_alike += best.alike
            stats.pad_several += best.several


class AttentionWindow(Listener):
    """The attention probe over the measured-step window: on from the window's opening to the
    step's first backward, which records what it saw (per attention module, by name)."""

    priority = WINDOW

    def __init__(self, session: CaptureSession, loss_inputs: LossInputWatch | None = None) -> None:
        self.session = session
        self.loss_inputs = loss_inputs
        """Where the batch size comes from (the leading size of the loss input)."""
        self.probe = AttentionProbe(is_attention_module, session.state.found_attention)
        self.records: dict[int, dict[str, dict[str, Any]]] = {}

    def window_opened(self, step: int) -> None:
        self.probe.start()

    def before_backward(self, event: BackwardEvent) -> None:
        if event.measured:
            self.probe.stop()
            self._record(event.step)

    def close(self) -> None:
        self.probe.stop()

    def contribute(self, draft: ReportDraft) -> None:
        for step, snapshot in draft.snapshots.items():
            snapshot.attention = self.records.get(step)

    def _record(self, step: int) -> None:
        if not self.probe.stats:
            return
        names = self.session.module_names()
        modules = self.probe.modules
        batch = self.loss_inputs.batch if self.loss_inputs is not None else None
        out: dict[str, dict[str, Any]] = {}
        for mid, stats in self.probe.stats.items():
            name = names.get(mid, type(modules[mid]).__name__)
            parent, _, leaf = name.rpartition(".")
            if leaf == "self" and parent:
                name = parent  # BERT/ViT: attention.self belongs to attention
            record = stats.to_dict()
            faults = [axis_fault(a["shape"], a["dim"], batch, a.get("summed"))
                      for a in record["softmax_axes"]]
            record["axis_fault"] = next((f for f in faults if f), None)
            record["batch"] = batch
            record["input_axes"] = list(self.probe.input_axes) if self.probe.input_axes else None
            record["type"] = type(modules[mid]).__name__
            out[name] = record
        self.records[step] = out


_PRODUCTS = ("BmmBackward", "MmBackward", "AddmmBackward", "BaddbmmBackward",
             "MatmulBackward", "DotBackward", "MvBackward")
_BATCHED = ("BmmBackward", "BaddbmmBackward")
_VIEWS = ("ViewBackward", "UnsafeViewBackward", "ReshapeAlias", "PermuteBackward",
          "TransposeBackward", "TBackward", "ExpandBackward", "CloneBackward", "SqueezeBackward",
          "UnsqueezeBackward", "SelectBackward", "SliceBackward", "AliasBackward",
          "ToCopyBackward", "SplitBackward", "SplitWithSizesBackward", "UnbindBackward",
          "AsStridedBackward")


def _is(node: Any, names: tuple[str, ...]) -> bool:
    kind = type(node).__name__
    return any(kind.startswith(n) for n in names)


def _is_weight(node: Any, hops: int = 8) -> bool:
    """Whether an operand is a leaf tensor (a parameter, or a constant) seen through views only:
    a transposed weight, a reshaped buffer. Arithmetic (a rotary embedding, a scale) makes it an
    activation."""
    for _ in range(hops):
        if node is None or type(node).__name__ == "AccumulateGrad":
            return True
        if not _is(node, _VIEWS):
            return False
        nxt = [n for n, _ in node.next_functions if n is not None]
        if len(nxt) != 1:
            return not nxt
        node = nxt[0]
    return False


def scores_of_two_activations(logits: torch.Tensor, depth: int = 8,
                              batched: bool = False) -> bool:
    """Whether ``logits`` come from a product of two activations (q·kᵀ: attention scores) rather
    than of an activation and a weight (a classifier, a router, an additive scorer): the nearest
    matrix product behind them, past scaling, masking and views, has no leaf operand. Read from
    the autograd graph, so it needs grad enabled; a product of two parameters is not one.

    ``batched``: the product must also be a batched one (``bmm``): scores of one query per
    sample over that sample's own keys, ``(batch, keys)`` (a memory network's hop, Luong
    attention in an RNN decoder, ``einsum("bd,bmd->bm")``), not a ``(batch, batch)`` similarity
    of two sets of embeddings (a contrastive loss's ``a @ b.T``, one ``mm``)."""
    frontier, seen = [logits.grad_fn], set()
    for _ in range(depth):
        found: list[Any] = []
        nxt: list[Any] = []
        for node in frontier:
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if _is(node, _PRODUCTS):
                found.append(node)
            else:
                nxt.extend(n for n, _ in node.next_functions if n is not None)
        if found:
            return all(not any(_is_weight(n) for n, _ in node.next_functions)
                       and (not batched or _is(node, _BATCHED)) for node in found)
        frontier = nxt
    return False


MAX_PAD_INPUTS = 6
"""Inputs kept per window to look for padding in (the model's input and its token ids)."""


class PaddingWeight(NamedTuple):
    """Sums over the rows of real queries of padded samples (per head)."""

    mass: float
    """Attention weight on padded keys."""
    share: float
    """Share of the keys that are padded (what uniform attention would put on them)."""
    rows: int
    alike: int = 0
    """Rows whose scores at every open padded key are alike (see ``padding_alike``)."""
    several: int = 0
    """Rows with two or more open padded keys (where alike can be told)."""


PAD_ALIKE = 1e-3
"""Scores at padded keys are alike when their range in a row is at most this share of the range
of the row's open scores: identical key vectors give equal scores up to rounding, distinct ones
(a position embedding added to the pads) differ at the scale of the row."""


def padding_weight(p: torch.Tensor, pad: torch.Tensor, scores: torch.Tensor | None = None
                   ) -> PaddingWeight | None:
    """The weight real queries of padded samples put on padded keys, in attention weights ``p``
    (``(batch[·heads], [queries,] keys)``) whose keys are the positions of ``pad`` (batch,
    positions); None when they cannot be, or when the ``scores`` the weights came from are
    exactly 0 at every padded key: masked by multiplying before the softmax, then (AllenNLP's
    ``masked_softmax``) multiplied by the mask and renormalized after it, so the weights read
    here are not the ones applied. With ``scores``, also how many rows score their padded keys
    alike: the pads' states are one constant vector (zeroed after every block, as SASRec does),
    so the padding acts as a single "null" key whose weight grows with the padding's length,
    not as content the model reads position by position."""
    batch, positions = pad.shape
    if p.shape[-1] != positions or p.shape[0] % batch:
        return None
    if scores is not None and scores.shape == p.shape and bool(pad.any()):
        at_pad = scores.reshape(batch, -1, positions).transpose(1, 2)[pad.to(scores.device)]
        if bool((at_pad == 0).all()):
            return None
    queries = p.shape[-2] if p.dim() >= 3 else 1
    w = p.reshape(batch, -1, queries, positions)
    pad = pad.to(w.device)
    mass = (w * pad[:, None, None, :].to(w.dtype)).sum(-1)  # (batch, heads, queries)
    mixed = pad.any(1) & (~pad).any(1)
    real = ~pad if queries == positions else torch.ones(batch, queries, dtype=torch.bool,
                                                         device=w.device)
    rows = (mixed[:, None] & real).to(w.dtype)  # (batch, queries)
    heads = w.shape[1]
    share = pad.to(w.dtype).mean(1)[:, None] * rows
    alike, several = 0, 0
    if scores is not None and scores.shape == p.shape:
        alike, several = _pads_alike(scores.reshape(w.shape), pad, rows)
    return PaddingWeight(float((mass * rows[:, None, :]).sum()), float(share.sum()) * heads,
                         int(rows.sum()) * heads, alike, several)


def _pads_alike(scores: torch.Tensor, pad: torch.Tensor, rows: torch.Tensor) -> tuple[int, int]:
    """(rows whose open padded keys score alike, rows with two or more open padded keys), over
    ``rows`` (batch, queries) of ``scores`` (batch, heads, queries, keys)."""
    x = scores.double() if scores.dtype == torch.float64 else scores.float()
    keep = unmasked(x)
    at_pad = keep & pad[:, None, None, :]
    inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    span = (torch.where(keep, x, -inf).amax(-1) - torch.where(keep, x, inf).amin(-1))
    pad_span = (torch.where(at_pad, x, -inf).amax(-1) - torch.where(at_pad, x, inf).amin(-1))
    several = (at_pad.sum(-1) >= 2) & rows[:, None, :].bool()
    alike = several & (pad_span <= PAD_ALIKE * span)
    return int(alike.sum()), int(several.sum())


PAD_RUN_ROWS = 0.2
"""Padding is told from data that merely ends alike by its runs: at least this share of the
samples end in a run of two or more pad positions, and the run lengths differ across samples."""


def padding_positions(x: torch.Tensor) -> list[torch.Tensor]:
    """Where a model input may be padded, (batch, positions) each: the trailing (else leading)
    run, per sample, of the pad id (integer ids: the id most samples end, or start, with) or of
    all-zero feature vectors (float input of ≥ 3 dimensions), read batch-first and
    sequence-first (both are kept when both look padded; the attention they are matched with
    settles it). Empty when the input does not look padded: a sample is blank at the other end
    too (the empty rows above and below a digit in an image), too few samples end in a run of two
    or more, every sample has the same run (a fixed suffix, not padding), or the runs cover
    almost everything."""
    if x.dim() < 2 or x.is_complex() or x.dtype == torch.bool:
        return []
    if x.is_floating_point() and x.dim() < 3:
        return []  # a (batch, positions) float input: a zero is a value, not a pad
    found = []
    for seq_first in (False, True):
        data = x.transpose(0, 1) if seq_first else x
        if data.shape[0] < 4 or data.shape[1] < 4:
            continue
        for leading in (False, True):
            flat = data.reshape(data.shape[0], data.shape[1], -1)
            if data.is_floating_point():
                blank = (flat == 0).all(-1)
            else:  # the pad id: the one most samples end (or start) with
                blank = (flat == flat[:, 0 if leading else -1].flatten().mode().values).all(-1)
            if bool(blank[:, -1 if leading else 0].any()):
                continue  # padding is at one end only: blank at both (an image's rows) is not
            b = blank if leading else blank.flip(1)
            run = b.int().cummin(1).values.bool()
            run = run if leading else run.flip(1)
            if _looks_padded(run):
                found.append(run)
                break
    return found


def _looks_padded(run: torch.Tensor) -> bool:
    lengths = run.sum(1)
    share = float(run.float().mean())
    return (float((lengths >= 2).float().mean()) >= PAD_RUN_ROWS
            and int(lengths.unique().numel()) >= 2
            and 0.02 <= share <= 0.9
            and bool((lengths < run.shape[1]).all()))


MASKED_LOGIT = -5e3
"""A score at or below this is masked: -inf, finfo.min (transformers) or an additive -10000 mask
on top of the real score. Real attention logits stay far above it (HF205 calls 50 saturated),
and the masked set must also form an exact triangle in every row and head to count."""


def axis_fault(shape: list[int] | tuple[int, ...], dim: int, batch: int | None,
               summed: list[int] | tuple[int, ...] | None = None) -> str | None:
    """Why a softmax an attention module took over ``dim`` (not the last) of ``shape`` is wrong,
    or None when the layout may be deliberate (``(batch, positions, 1)`` pooling scores normalized
    over positions, seq-first ``(positions, batch)`` scores over dim 0). ``batch`` is the batch
    size the loss saw this step, when known; ``summed``, the axes of the weights that the product
    applying them summed over, when a product consumed them directly: weights are normalized over
    the axis they are summed over, whatever the layout, and that settles it where the shape cannot
    (a batch of 48 sequences of 48 positions)."""
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if not 0 <= dim < nd:
        return None
    where = f"dim {dim} of a {tuple(shape)} tensor"
    if shape[dim] == 1:
        return f"softmax over {where}, an axis of size 1: every weight is exactly 1"
    if dim == nd - 1:
        return None  # the keys
    if summed and dim in summed:
        return None
    fault = _layout_fault(shape, dim, batch, where)
    if fault is None and summed:
        over = ", ".join(str(a) for a in summed)
        batch_note = (f" (dim {dim} has the batch's size, {batch}: each sample's weights depend "
                      "on the other samples)" if batch is not None and dim == 0
                      and shape[0] == batch else "")
        return (f"softmax over {where}, but the product that applies the weights sums over dim "
                f"{over}: each weighted sum's weights do not add up to 1{batch_note}")
    return fault


def deliberate_axis(shape: tuple[int, ...], dim: int) -> bool:
    """Whether a softmax over ``dim`` (not the last) of ``shape`` may be a layout chosen on
    purpose, so its weights are attention weights over that axis: a 3-D softmax over a
    non-square layout's middle or first axis (Slot Attention's (batch, slots, inputs) scores
    over the slots, (batch, positions, 1) pooling scores over the positions). 2-D softmaxes
    over dim 0 are left out: the batch is not known yet when the weights are taken."""
    return (len(shape) == 3 and dim < 2 and shape[dim] > 1
            and _layout_fault(shape, dim, None, "") is None)


def _layout_fault(shape: tuple[int, ...], dim: int, batch: int | None, where: str) -> str | None:
    """The faults a softmax's shape alone shows (``dim`` is neither the last nor of size 1)."""
    nd = len(shape)
    if nd >= 4 or (nd == 3 and shape[-1] == shape[-2] and shape[-1] > 1):
        if dim == nd - 2:
            return (f"softmax over {where}, the queries: each key's weights sum to 1 across the "
                    "queries, instead of each query's weights across the keys")
        return (f"softmax over {where}, not the key axis (the last): the weights mix "
                "heads or samples")
    if nd == 2 and dim == 0 and batch is not None and shape[0] == batch and shape[1] != batch:
        return (f"softmax over {where}, the batch (the loss sees {batch} samples): each sample's "
                "weights depend on the other samples of the batch")
    return None


def einsum_parts(equation: str) -> tuple[list[str], str] | None:
    """An einsum equation's operand subscripts and its output (the implicit output of an
    equation without ``->``: the letters that appear once, sorted); None with an ellipsis."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        return None
    inputs, arrow, output = eq.partition("->")
    parts = inputs.split(",")
    if not arrow:
        letters = "".join(parts)
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return parts, output


def einsum_summed(equation: str, operands: int) -> list[tuple[int, ...] | None]:
    """Per operand of an einsum (``"bt,btd->bd"``), the axes it sums over: those whose letter is
    not in the output. None for every operand when it cannot tell (an ellipsis)."""
    read = einsum_parts(equation)
    if read is None or len(read[0]) != operands:
        return [None] * operands
    parts, output = read
    return [tuple(i for i, c in enumerate(part) if c not in output) for part in parts]


def view_axes(operand: torch.Tensor, weights: torch.Tensor, summed: tuple[int, ...]
              ) -> tuple[int, ...] | None:
    """``summed`` (axes of ``operand``) as axes of ``weights``, when ``operand`` is ``weights`` or
    a view of it that keeps its axes of size > 1 in order (``unsqueeze``, ``view`` adding unit
    axes): each such axis is matched by size and stride, so the mapping is exact. None otherwise
    (a copy, a transpose, an unrelated tensor)."""
    if operand is weights:
        return summed
    if operand._base is not weights or operand.data_ptr() != weights.data_ptr():
        return None
    mine = [i for i in range(operand.dim()) if operand.shape[i] > 1]
    theirs = [i for i in range(weights.dim()) if weights.shape[i] > 1]
    if len(mine) != len(theirs) or any(
            operand.shape[i] != weights.shape[j] or operand.stride(i) != weights.stride(j)
            for i, j in zip(mine, theirs, strict=True)):
        return None
    to_weights = dict(zip(mine, theirs, strict=True))
    out = tuple(to_weights[a] for a in summed if a in to_weights)
    return out or None


def contracted_size(equation: str, first: torch.Tensor) -> int | None:
    """The product of the sizes of the axes an einsum contracts (in the first operand and
    summed away), or None when the equation cannot be read (ellipses, one operand)."""
    read = einsum_parts(equation)
    if read is None or len(read[0]) != 2 or len(read[0][0]) != first.dim():
        return None
    parts, output = read
    contracted = [i for i, c in enumerate(parts[0]) if c in parts[1] and c not in output]
    if not contracted:
        return None
    return math.prod(int(first.shape[i]) for i in contracted)


def constant_over(value: torch.Tensor, axis: int) -> bool:
    """Whether ``value`` is the same at every index of ``axis`` (two or more), within 1e-6 of its
    largest entry: an attention over such values outputs them whatever its weights."""
    if value.dim() < 2 or value.shape[axis] < 2 or not value.is_floating_point():
        return False
    with torch.no_grad():
        v = value.detach().float()
        scale = float(v.abs().amax())
        if not math.isfinite(scale):
            return False
        spread = float((v - v.narrow(axis, 0, 1)).abs().amax())
    return spread <= 1e-6 * scale


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().square().mean().sqrt())


def unmasked(logits: torch.Tensor) -> torch.Tensor:
    """Which scores a query may attend to: finite and above ``MASKED_LOGIT`` (a mask written
    as -inf or as a large negative fill)."""
    return torch.isfinite(logits) & (logits > MASKED_LOGIT)


MASK_GAP = 30.0
"""An empty gap this wide in a row's sorted scores separates a mask added as a moderate constant
(Swin's shifted windows add -100) from the scores: e^-30 ≈ 1e-13, so the keys below it get no
weight a float32 softmax can hold. A distribution of real scores, however sharp, has no such
hole between consecutive values."""


def below_gap_masked(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` without the keys below the first gap in each row's sorted open scores (from the
    top) that is at least ``MASK_GAP`` wide, wider than the range of the two or more keys above
    it: what an additive finite mask hides (it shifts a block of keys by more than the scores
    vary)."""
    x = logits.double() if logits.dtype == torch.float64 else logits.float()
    if x.dim() == 0 or x.shape[-1] < 2:
        return keep
    ranked = torch.where(keep, x, torch.full_like(x, -math.inf)).sort(-1, descending=True).values
    drop = ranked[..., :-1] - ranked[..., 1:]
    above = ranked[..., :1] - ranked[..., :-1]  # the range of the keys above each hole
    hole = torch.isfinite(drop) & (drop >= MASK_GAP) & (drop > above)
    hole[..., 0] = False  # one key far above the rest is a sharp row, not a mask
    if not bool(hole.any()):
        return keep
    floor = ranked.gather(-1, hole.int().argmax(-1, keepdim=True))  # the last key above the hole
    floor = torch.where(hole.any(-1, keepdim=True), floor, torch.full_like(floor, -math.inf))
    return keep & (x >= floor)


def row_spread(logits: torch.Tensor, keep: torch.Tensor | None = None
               ) -> tuple[float, int, int]:
    """(sum over rows of the standard deviation of a row's unmasked logits, rows with at least
    two unmasked entries, masked entries). The softmax ignores a row's mean, so its spread is
    what sets how sharp the weights are: 1/√d scaling keeps it near 1 at initialization.
    ``keep``: ``unmasked(logits)`` when the caller has it."""
    x = logits.double() if logits.dtype == torch.float64 else logits.float()
    keep = unmasked(x) if keep is None else keep
    n = keep.sum(-1)
    safe = torch.where(keep, x, torch.zeros_like(x))
    mean = safe.sum(-1) / n.clamp_min(1)
    var = (torch.where(keep, x - mean.unsqueeze(-1), torch.zeros_like(x)) ** 2).sum(-1)
    var = var / (n - 1).clamp_min(1)
    ok = n >= 2
    masked = int(logits.numel() - int(keep.sum()))
    return float(var.sqrt()[ok].sum()), int(ok.sum()), masked


def causal_mask_offset(logits: torch.Tensor) -> int | None:
    """The k of a causal-shaped mask in square ``(batch, [heads,] T, T)`` scores: key j is
    masked from query i exactly when j − i > k, the same k in every batch row and head. k = 0 is
    a causal mask; k ≥ 1 lets each position see k positions ahead (``torch.tril(...,
    diagonal=1)``: a decoder reads its own target). Padding is set aside first: a key hidden
    from itself and every later query (a padded position of that sample) and a query that sees
    no key (a padded query some implementations mask whole), so a causal mask combined with a
    padding mask (a transformers causal LM given an ``attention_mask``) is read too. A causal
    sliding window (keys more than w > k positions back hidden too: Mistral's, a local band) is
    read by its upper edge. More keys than queries (a segment attending to its own keys after a
    memory of earlier ones: Transformer-XL, a cached prefix) align the queries with the last keys,
    so key j stands m = keys − queries positions after query i's own (j − m − i > k); torch's
    ``is_causal`` on such scores aligns them with the first keys instead, which reads as no
    pattern. None when there is no such pattern: no mask, a padding mask alone, bidirectional
    attention (windowed or not), fewer keys than queries, or k that differs across the batch."""
    if logits.dim() < 3:
        return None  # 2-D softmax inputs are (batch, positions) pooling scores, not query × key
    queries, t = logits.shape[-2], logits.shape[-1]
    if queries > t or queries < 3:
        return None
    masked = (logits <= MASKED_LOGIT).reshape(-1, queries, t)
    keys = torch.arange(t, device=logits.device)
    own = torch.arange(queries, device=logits.device) + (t - queries)  # query i's own key
    ahead = (keys[None, :] - own[:, None]).expand_as(masked)  # j − m − i
    # A padded key is hidden from itself and every later query, which no causal mask with
    # k ≥ 0 does (an earlier query may see it through a leaking mask: that is what is read).
    pad_keys = (masked | (ahead > 0)).all(dim=-2, keepdim=True)
    valid = ~(pad_keys | masked.all(dim=-1, keepdim=True))
    hidden = masked & valid
    upper = hidden & (ahead >= 0)
    if not bool(upper.any()):
        return None
    k = int(ahead[upper].min()) - 1
    shape = ahead > k
    lower = hidden & (ahead < 0)
    if bool(lower.any()):  # a sliding window: keys more than w positions back hidden too
        w = -int(ahead[lower].max()) - 1
        if w <= k:  # as far back as ahead: a bidirectional local window, not a causal one
            return None
        shape = shape | (ahead < -w)
    return k if torch.equal(hidden, shape & valid) else None


def _sdpa_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    **_: Any,
) -> torch.Tensor:
    """The pre-softmax scores SDPA computes (mask and causal mask applied as -inf / additive)."""
    q, k = (query, key) if query.dtype == torch.float64 else (query.float(), key.float())
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    logits = q @ k.transpose(-2, -1) * factor
    if is_causal:
        lq, lk = logits.shape[-2], logits.shape[-1]
        causal = torch.ones(lq, lk, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, -math.inf)
        else:
            logits = logits + attn_mask.float()
    return logits
