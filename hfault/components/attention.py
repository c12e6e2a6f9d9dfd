"""Which modules are attention, which attention a component belongs to, and whether it is cross
attention or attention pooling (HAN-style scoring without query/key/value projections)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import torch
from torch import nn

from hfault.components.names import (
    ATTN_HINTS,
    CONTEXT,
    CROSS_HINTS,
    FUSED_QKV,
    leaf,
    projection_role,
)
from hfault.components.roots import Owner, module_has_children
from hfault.components.splitters import is_split_attention


def is_attention_module(module: nn.Module, path: str = "") -> bool:
    """A module a splitter declares attention (MultiheadAttention), or a container named or typed
    as attention, or one holding q/k/v (``path``, when known, adds its name as a hint)."""
    if is_split_attention(module, path):
        return True
    if not module_has_children(module):
        return False
    text = type(module).__name__.lower() + " " + leaf(path)
    if any(h in text for h in ATTN_HINTS):
        return True
    child_roles = {projection_role(name) for name, _ in module.named_children()}
    return len(child_roles & {"query", "key", "value"}) >= 2


def attention_context(owner: Owner, cross_ids: set[int], found_ids: AbstractSet[int] = frozenset()
                      ) -> tuple[str | None, str | None]:
    """The nearest enclosing attention module (or the module itself) and whether it is cross;
    ``found_ids``: modules seen computing attention although their name does not say so."""
    chain = owner.chain()
    for i in range(len(chain) - 1, -1, -1):
        path, module = chain[i]
        if is_attention_module(module, path) or id(module) in found_ids:
            # BERT/ViT nest the projections in `attention.self` and the output in
            # `attention.output`: both belong to the enclosing `attention`.
            if leaf(path) == "self" and i > 0:
                outer_path, outer = chain[i - 1]
                if is_attention_module(outer, outer_path):
                    path, module = outer_path, outer
            kind = "cross" if _is_cross(path, module, cross_ids) else "self"
            return path, kind
    return None, None


def _is_cross(path: str, module: nn.Module, cross_ids: set[int]) -> bool:
    if id(module) in cross_ids or getattr(module, "is_cross_attention", False):
        return True
    text = (path + "." + type(module).__name__).lower()
    return any(h in text for h in CROSS_HINTS)


def is_pooling(path: str, attention: str | None, owner: Owner) -> bool:
    """Attention without query/key/value projections (HAN word/sentence attention) is pooling."""
    name = leaf(path)
    if name in CONTEXT or "context" in name:
        return True
    weight = getattr(owner.module, "weight", None)
    is_projection = isinstance(weight, torch.Tensor) and weight.dim() == 2
    if not (is_projection and any(h in name for h in ATTN_HINTS)):
        return False  # e.g. the GRU encoder that HAN keeps inside its WordAttention module
    if attention is None:
        return True
    attn_module = next(m for p, m in owner.chain() if p == attention)
    return not _has_projections(attention, attn_module)


def _has_projections(path: str, module: nn.Module) -> bool:
    if is_split_attention(module, path):
        return True
    for name, _ in module.named_modules():
        sub = leaf(name)
        if sub and (projection_role(name) in ("query", "key", "value") or sub in FUSED_QKV):
            return True
    return False
