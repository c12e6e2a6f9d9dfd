"""Names for trained tensors no module owns: what the user's code calls them.

Numerical programs train plain tensors (``W1 = torch.randn(4, 8, requires_grad=True)``), and a
model may keep a loose tensor on a plain object (``state.W``). No module path names them; the
script does. Components are built from inside the script's own calls (its ``backward`` or its
optimizer), so its frames are on the stack: their local variables, then the globals of the
script's modules, are searched for each tensor, directly (``W1``) or one level down an object's
attributes, a dict's string keys or a list's items (``state.W``, ``params["W1"]``,
``params[0]``). A variable is preferred to a place inside an object, and an earlier-defined
name to a later one (a loop variable left bound to the last tensor, ``for p in params``, comes
after the tensors' own names).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hfault.capture.frames import is_user

_MAX_ITEMS = 64  # items of one list or dict looked into


def tensor_names(tensors: Sequence[torch.Tensor]) -> dict[int, str]:
    """id(tensor) -> a Python expression that reaches it from the user's code (``W1``,
    ``state.W``, ``params["b1"]``), for each tensor some user frame or module holds; the
    innermost frame wins."""
    wanted = {id(t) for t in tensors}
    found: dict[int, tuple[int, int, str]] = {}  # id -> (depth, order, name)
    order = 0
    for scope in _user_scopes():
        for name, value in list(scope.items()):
            if name.startswith("__"):
                continue
            for depth, expr, tensor in _reachable(name, value):
                if id(tensor) in wanted:
                    best = found.get(id(tensor))
                    if best is None or depth < best[0]:
                        found[id(tensor)] = (depth, order, expr)
                    order += 1
        if len(found) == len(wanted) and all(d == 0 for d, _, _ in found.values()):
            break
    names: dict[int, str] = {}
    taken: set[str] = set()
    for tid, (_, _, expr) in sorted(found.items(), key=lambda item: item[1][:2]):
        if expr not in taken:
            taken.add(expr)
            names[tid] = expr
    return names


def _user_scopes() -> Iterable[Mapping[str, Any]]:
    """Locals of the user's frames, innermost first, then the globals of those frames'
    modules (each once)."""
    frames: list[types.FrameType] = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if is_user(frame.f_code.co_filename):
            frames.append(frame)
        frame = frame.f_back
    for f in frames:
        if f.f_locals is not f.f_globals:
            yield f.f_locals
    seen: set[int] = set()
    for f in frames:
        if id(f.f_globals) not in seen:
            seen.add(id(f.f_globals))
            yield f.f_globals


def _reachable(name: str, value: Any) -> Iterable[tuple[int, str, torch.Tensor]]:
    """(depth, expression, tensor) for ``value`` itself and one level inside it."""
    if isinstance(value, torch.Tensor):
        yield 0, name, value
        return
    if isinstance(value, (types.ModuleType, type, types.FunctionType, nn.Module)):
        return  # a module's tensors are named by its module path
    if isinstance(value, dict):
        for key, item in list(value.items())[:_MAX_ITEMS]:
            if isinstance(key, str) and isinstance(item, torch.Tensor):
                yield 1, f"{name}[{key!r}]", item
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value[:_MAX_ITEMS]):
            if isinstance(item, torch.Tensor):
                yield 1, f"{name}[{i}]", item
    else:
        attrs = getattr(value, "__dict__", None)
        if isinstance(attrs, dict):
            for key, item in list(attrs.items())[:_MAX_ITEMS]:
                if isinstance(item, torch.Tensor) and not key.startswith("_"):
                    yield 1, f"{name}.{key}", item
