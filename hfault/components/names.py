"""The naming conventions hfault reads roles from: a module path's last segment says what a
projection is (``q_proj`` is a query, ``c_attn`` a fused q/k/v), its digits which layer it is in."""

from __future__ import annotations

import re

QUERY = frozenset(
    {"q_proj", "q_lin", "query", "q", "wq", "w_q", "to_q", "q_attn", "query_proj", "q_linear"}
)
KEY = frozenset({"k_proj", "k_lin", "key", "k", "wk", "w_k", "to_k", "key_proj", "k_linear"})
VALUE = frozenset(
    {"v_proj", "v_lin", "value", "v", "wv", "w_v", "to_v", "value_proj", "v_linear"}
)
OUTPUT = frozenset({"o_proj", "out_proj", "out_lin", "wo", "w_o", "to_out", "output_proj", "o"})
FUSED_QKV = frozenset({"qkv", "to_qkv", "qkv_proj", "wqkv", "c_attn", "in_proj"})
CONTEXT = frozenset({"context", "u", "u_w", "u_s", "uw", "us", "context_vector", "query_vector"})
CROSS_HINTS = ("cross", "encdec", "enc_dec", "encoder_attn")
ATTN_HINTS = ("attention", "attn")
WRAPPER_SEGMENT = "_orig_mod"
"""The attribute (and module path segment) under which ``torch.compile``'s ``OptimizedModule``
holds the original module."""


def plain_path(path: str) -> str:
    """A module path without compiled wrappers' segments (``block._orig_mod.fc`` ->
    ``block.fc``): how the script's code names the module."""
    if WRAPPER_SEGMENT not in path:
        return path
    return ".".join(s for s in path.split(".") if s != WRAPPER_SEGMENT)


def leaf(path: str) -> str:
    """Last meaningful path segment, lower-cased (``to_out.0`` -> ``to_out``)."""
    segs = [s for s in path.split(".") if s]
    while segs and segs[-1].isdigit():
        segs.pop()
    return segs[-1].lower() if segs else ""


def projection_role(path: str) -> str | None:
    """``query``/``key``/``value``/``output`` when the path's leaf names that projection."""
    name = leaf(path)
    for role, names in (("query", QUERY), ("key", KEY), ("value", VALUE), ("output", OUTPUT)):
        if name in names:
            return role
    return None


def layer_index(path: str) -> int | None:
    """The first all-digit segment (``encoder.layer.3.attention`` -> 3)."""
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", path)
    return int(match.group(1)) if match else None
