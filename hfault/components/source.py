"""Where to point a person: the source line of the class that defines a component."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import nn


def class_source(cls: type) -> dict[str, object] | None:
    """File and line where a module class is defined, so reports can point editors at it."""
    try:
        _, line = inspect.getsourcelines(cls)
        path = inspect.getsourcefile(cls)
        if path:
            return {"file": path, "line": line}
    except (OSError, TypeError):
        pass
    forward = getattr(cls, "forward", None)
    code = getattr(forward, "__code__", None)
    if code is not None:
        return {"file": code.co_filename, "line": code.co_firstlineno}
    return None


def defining_class(chain: Sequence[tuple[str, nn.Module]]) -> type:
    """The class to point a person at: the module's own class (last in ``chain``), unless it is a
    torch.nn building block (Linear, MultiheadAttention), then the nearest enclosing class that
    holds it."""
    for _, module in reversed(chain):
        if not type(module).__module__.startswith("torch.nn."):
            return type(module)
    return type(chain[-1][1])
