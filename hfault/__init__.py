"""hfault: localize training faults to model components with second-order information."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfault.exitcodes import ExitCode

if TYPE_CHECKING:
    from hfault.api import Watch, watch

__version__ = "0.1.0"
__all__ = ["ExitCode", "Watch", "__version__", "watch"]


def __getattr__(name: str) -> Any:
    """``hfault.watch`` and ``hfault.Watch`` import torch: loaded on first use, so that the CLI's
    start-up (``hfault --version``, ``hfault rules``) does not pay for it."""
    if name in ("watch", "Watch"):
        from hfault import api

        return getattr(api, name)
    raise AttributeError(f"module 'hfault' has no attribute {name!r}")
