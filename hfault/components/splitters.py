"""The splitter registry: which modules' parameters become several components, and how.

A module whose own parameters fuse several projections (``nn.MultiheadAttention``'s
``in_proj_weight``, GPT-2's ``c_attn``) must be split for a fault to be localized to the query
rather than to "the attention". A :class:`Splitter` matches a module (by type, by class name so
the class need not be importable, or by a rule on its path) and turns its own parameters into
:class:`Piece`s. Splitters are tried in order: those registered with :func:`register_splitter`
(latest first), then the built-ins; the first to return pieces wins. A module no splitter takes
keeps its parameters together and gets its role from its name (:mod:`.build`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hfault.components.model import ROLES, ParamPart
from hfault.components.names import FUSED_QKV, leaf

QKV = ("query", "key", "value")

Params = Sequence[tuple[str, nn.Parameter]]
"""A module's own trained parameters, ``(name, parameter)`` in the optimizers' order."""
Match = type[nn.Module] | str | Callable[[nn.Module, str], bool]
"""A module type (``isinstance``), a class name (the module's own class, exactly), or a rule
``(module, path) -> bool`` (``path`` is empty where it is not known)."""


@dataclass(frozen=True)
class Piece:
    """One component carved out of a module's own parameters."""

    suffix: str
    """Appended to the module's path (``in_proj.query``); empty for the module's own name."""
    role: str
    parts: tuple[ParamPart, ...]


SplitFn = Callable[[nn.Module, str, Params], Sequence[Piece] | None]
"""``(module, path, params) -> pieces``; ``None`` or no pieces declines (the next splitter is
tried), so a splitter may check shapes before committing."""


@dataclass(frozen=True, eq=False)
class Splitter:
    """How the modules that ``match`` selects become components."""

    match: Match
    split: SplitFn
    attention: bool = False
    """The modules it matches are attention modules: components inside them are tagged with it,
    and the attention probe watches them."""
    name: str = ""

    def matches(self, module: nn.Module, path: str = "") -> bool:
        if isinstance(self.match, type):
            return isinstance(module, self.match)
        if isinstance(self.match, str):
            return type(module).__name__ == self.match
        return bool(self.match(module, path))


def register_splitter(
    match: Match, split: SplitFn, *, attention: bool = False, name: str = ""
) -> Splitter:
    """Add a splitter, tried before every splitter already registered and the built-ins."""
    if not (isinstance(match, type | str) or callable(match)):
        raise TypeError(f"match must be a module type, a class name or a callable, not {match!r}")
    if not callable(split):
        raise TypeError(f"split must be callable, not {split!r}")
    splitter = Splitter(match, split, attention, name or _describe(match))
    _registered.append(splitter)
    _refresh()
    return splitter


def unregister_splitter(splitter: Splitter) -> None:
    """Remove a splitter :func:`register_splitter` returned (built-ins cannot be removed)."""
    _registered.remove(splitter)
    _refresh()


def splitters() -> tuple[Splitter, ...]:
    """Every splitter, in the order they are tried."""
    return _order


def split_module(module: nn.Module, path: str, params: Params) -> list[Piece] | None:
    """The pieces of the first splitter that matches ``module`` and takes it, else None."""
    for splitter in _order:
        if not splitter.matches(module, path):
            continue
        pieces = splitter.split(module, path, params)
        if pieces:
            _check_covers(splitter, path, params, pieces)
            return list(pieces)
    return None


def is_split_attention(module: nn.Module, path: str = "") -> bool:
    """True when a splitter declared with ``attention=True`` matches ``module``."""
    return any(s.matches(module, path) for s in _attention)


def fused(
    *names: str,
    roles: Sequence[str] = QKV,
    dim: int = 0,
    group: str = "",
    whole: Mapping[str, str] | None = None,
) -> SplitFn:
    """A split that cuts the parameters ``names`` (every own parameter when none are named) into
    ``len(roles)`` equal slices along ``dim`` (dim 0 for a parameter with fewer dimensions).

    Pieces are named ``<module>.<group>.<role>`` (``<module>.<role>`` without a group);
    ``whole`` gives whole parameters to a role (``{"bias_k": "key"}``); the remaining parameters
    stay together as the module's own component, role ``other``. A size not divisible by the
    number of roles declines the module.
    """
    unknown = [r for r in [*roles, *(whole or {}).values()] if r not in ROLES]
    if unknown or not roles or len(set(roles)) != len(roles):
        raise ValueError(f"roles must be some of {ROLES}, got {unknown or 'none'}")
    whole = dict(whole or {})

    def split(module: nn.Module, path: str, params: Params) -> list[Piece] | None:
        by_role: dict[str, list[ParamPart]] = {r: [] for r in roles}
        rest: list[ParamPart] = []
        for pname, p in params:
            if not names or pname in names:
                d = dim if p.dim() > dim else 0
                if p.dim() == 0 or p.shape[d] % len(roles):
                    return None
                for role, part in zip(roles, _slices(pname, p, d, len(roles)), strict=True):
                    by_role[role].append(part)
            elif pname in whole:
                by_role.setdefault(whole[pname], []).append(ParamPart(p, pname))
            else:
                rest.append(ParamPart(p, pname))
        pieces = [
            Piece(f"{group}.{role}" if group else role, role, tuple(parts))
            for role, parts in by_role.items()
            if parts
        ]
        if rest:
            pieces.append(Piece("", "other", tuple(rest)))
        return pieces

    return split


def _slices(pname: str, p: nn.Parameter, dim: int, n: int) -> list[ParamPart]:
    size = p.shape[dim] // n
    return [ParamPart(p, pname, dim, i * size, (i + 1) * size) for i in range(n)]


def _fused_by_shape(dim: int) -> SplitFn:
    """Split a projection whose name says it is fused (``qkv``, ``c_attn``) along ``dim`` of its
    2-D parameters, into q/k/v when the output is 3x the input (or a multiple of 3, except
    ``c_attn``), into k/v when it is 2x; decline otherwise."""

    def split(module: nn.Module, path: str, params: Params) -> list[Piece] | None:
        roles = _fused_roles(module, path, dim)
        if roles is None:
            return None
        per_role: list[list[ParamPart]] = [[] for _ in roles]
        for pname, p in params:
            d = dim if p.dim() == 2 else 0
            for parts, part in zip(per_role, _slices(pname, p, d, len(roles)), strict=True):
                parts.append(part)
        pairs = zip(roles, per_role, strict=True)
        return [Piece(role, role, tuple(parts)) for role, parts in pairs]

    return split


def _fused_roles(module: nn.Module, path: str, dim: int) -> tuple[str, ...] | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    out, inp = weight.shape[dim], weight.shape[1 - dim]
    if out == 3 * inp or (out % 3 == 0 and leaf(path) != "c_attn"):
        return QKV
    if out == 2 * inp:
        return ("key", "value")
    return None


def _named_fused(module: nn.Module, path: str) -> bool:
    return leaf(path) in FUSED_QKV and type(module).__name__ != "Conv1D"


def _hf_conv1d_fused(module: nn.Module, path: str) -> bool:
    # transformers' Conv1D (GPT-2) stores weight as (in, out): the fused outputs are columns.
    return type(module).__name__ == "Conv1D" and leaf(path) in FUSED_QKV


BUILTIN: tuple[Splitter, ...] = (
    Splitter(
        nn.MultiheadAttention,
        fused(
            "in_proj_weight",
            "in_proj_bias",
            group="in_proj",
            whole={
                "q_proj_weight": "query",
                "k_proj_weight": "key",
                "v_proj_weight": "value",
                "bias_k": "key",
                "bias_v": "value",
            },
        ),
        attention=True,
        name="nn.MultiheadAttention in_proj",
    ),
    Splitter(_hf_conv1d_fused, _fused_by_shape(1), name="transformers Conv1D fused q/k/v"),
    Splitter(_named_fused, _fused_by_shape(0), name="fused q/k/v by name"),
)

_registered: list[Splitter] = []
_order: tuple[Splitter, ...] = BUILTIN
_attention: tuple[Splitter, ...] = tuple(s for s in BUILTIN if s.attention)


def _refresh() -> None:
    global _order, _attention
    _order = (*reversed(_registered), *BUILTIN)
    _attention = tuple(s for s in _order if s.attention)


def _describe(match: Match) -> str:
    if isinstance(match, type):
        return match.__qualname__
    if isinstance(match, str):
        return match
    return getattr(match, "__qualname__", repr(match))


def _check_covers(splitter: Splitter, path: str, params: Params, pieces: Sequence[Piece]) -> None:
    """A parameter a splitter leaves out would silently drop out of every diagnosis."""
    covered = {id(part.param) for piece in pieces for part in piece.parts}
    missing = [pname for pname, p in params if id(p) not in covered]
    if missing:
        raise ValueError(
            f"splitter {splitter.name!r} left {', '.join(missing)} of module {path!r} "
            "in no component"
        )
    bad = sorted({piece.role for piece in pieces} - set(ROLES))
    if bad:
        raise ValueError(f"splitter {splitter.name!r} gave unknown role(s) {bad}; use {ROLES}")
