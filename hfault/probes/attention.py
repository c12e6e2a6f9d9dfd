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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class AttentionStats:
    """Running statistics of one attention module's weights over one forward."""

    calls: int = 0
    rows: int = 0
    entropy_sum: float = 0.0
    entropy_norm_sum: float = 0.0
    head_min: float = math.inf
    max_logit: float = -math.inf
    heads: int | None = None
    keys: int = 0
    mask_offset: int | None = None
    """k when the mask is causal-shaped, 'key j hidden from query i iff j − i > k' (0 = causal)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "entropy_mean": self.entropy_sum / self.rows if self.rows else None,
            "entropy_norm_mean": self.entropy_norm_sum / self.rows if self.rows else None,
            "entropy_norm_head_min": self.head_min if math.isfinite(self.head_min) else None,
            "max_logit": self.max_logit if math.isfinite(self.max_logit) else None,
            "heads": self.heads,
            "keys": self.keys,
            "calls": self.calls,
            "mask_offset": self.mask_offset,
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


class AttentionProbe:
    """Install with ``start()`` before a measured forward, ``stop()`` after; read ``stats``."""

    def __init__(self, is_attention: Callable[[nn.Module], bool]) -> None:
        self.is_attention = is_attention
        self.stats: dict[int, AttentionStats] = {}
        self.modules: dict[int, nn.Module] = {}
        self._stack: list[nn.Module] = []
        self._restore: list[Callable[[], None]] = []
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ window
    def start(self) -> None:
        if self._restore:
            return
        self.stats, self.modules, self._stack = {}, {}, []
        mod = nn.modules.module
        self._handles = [
            mod.register_module_forward_pre_hook(self._push),
            mod.register_module_forward_hook(self._pop, always_call=True),
        ]
        self._patch(F, "softmax", self._wrap_softmax)
        self._patch(torch, "softmax", self._wrap_softmax)
        self._patch(torch.Tensor, "softmax", self._wrap_softmax)
        self._patch(F, "scaled_dot_product_attention", self._wrap_sdpa)

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        for restore in reversed(self._restore):
            restore()
        self._handles, self._restore, self._stack = [], [], []

    def _patch(self, owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Any]) -> None:
        original = getattr(owner, name)
        setattr(owner, name, wrap(original))
        self._restore.append(lambda: setattr(owner, name, original))

    # ------------------------------------------------------------------ module stack
    def _push(self, module: nn.Module, args: Any) -> None:
        if self.is_attention(module):
            self._stack.append(module)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    # ------------------------------------------------------------------ wrappers
    def _wrap_softmax(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        def softmax(logits: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(logits, *args, **kwargs)
            if probe._stack and torch.is_grad_enabled() and isinstance(out, torch.Tensor):
                dim = kwargs.get("dim", args[0] if args else -1)
                if dim in (-1, out.dim() - 1):
                    probe._record(logits, out)
            return out

        return softmax

    def _wrap_sdpa(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        def sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(query, key, value, *args, **kwargs)
            if probe._stack and torch.is_grad_enabled():
                with torch.no_grad():
                    logits = _sdpa_logits(query, key, *args, **kwargs)
                    probe._record(logits, logits.softmax(-1))
            return out

        return sdpa

    def _record(self, logits: torch.Tensor, probs: torch.Tensor) -> None:
        module = self._stack[-1]
        with torch.no_grad():
            p = probs.detach()
            if p.dtype in (torch.float16, torch.bfloat16):
                p = p.float()
            keys = p.shape[-1]
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (..., queries)
            norm = entropy / math.log(keys) if keys > 1 else torch.zeros_like(entropy)
            stats = self.stats.setdefault(id(module), AttentionStats())
            self.modules[id(module)] = module
            stats.calls += 1
            stats.rows += entropy.numel()
            stats.entropy_sum += float(entropy.double().sum())
            stats.entropy_norm_sum += float(norm.double().sum())
            stats.keys = max(stats.keys, keys)
            heads = _heads_view(norm.unsqueeze(-1), module)
            if heads is not None:
                per_head = heads.squeeze(-1).transpose(0, -2).reshape(heads.shape[-3], -1)
                stats.heads = per_head.shape[0]
                stats.head_min = min(stats.head_min, float(per_head.double().mean(1).min()))
            if stats.mask_offset is None:
                stats.mask_offset = causal_mask_offset(logits.detach())
            finite = logits.detach()[torch.isfinite(logits.detach())]
            if finite.numel():
                stats.max_logit = max(stats.max_logit, float(finite.max()))


MASKED_LOGIT = -5e3
"""A score at or below this is masked: -inf, finfo.min (transformers) or an additive -10000 mask
on top of the real score. Real attention logits stay far above it (HF205 calls 50 saturated),
and the masked set must also form an exact triangle in every row and head to count."""


def causal_mask_offset(logits: torch.Tensor) -> int | None:
    """The k of a causal-shaped mask in square ``(batch, [heads,] T, T)`` scores: key j is
    masked from query i exactly when j − i > k, the same in every batch row and head. k = 0 is
    a causal mask; k ≥ 1 lets each position see k positions ahead (``torch.tril(...,
    diagonal=1)``: a decoder reads its own target). None when there is no such pattern: no
    mask, padding masks, bidirectional or sliding-window attention, or masks that differ across
    the batch."""
    t = logits.shape[-1]
    if logits.dim() < 3 or logits.shape[-2] != t or t < 3:
        return None  # 2-D softmax inputs are (batch, positions) pooling scores, not query × key
    masked = (logits <= MASKED_LOGIT).reshape(-1, t, t)
    first = masked[0]
    if not bool(first.any()) or not bool((masked == first).all()):
        return None
    idx = torch.arange(t, device=logits.device)
    ahead = idx[None, :] - idx[:, None]  # j − i
    k = int(ahead[first].min()) - 1
    return k if torch.equal(first, ahead > k) else None


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
