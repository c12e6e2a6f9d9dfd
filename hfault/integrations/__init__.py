"""Callbacks that watch a framework's training loop: thin wrappers around :func:`hfault.watch`.

``HfaultTrainerCallback`` (a ``transformers.TrainerCallback``) and ``HfaultLightningCallback`` (a
``lightning.pytorch.Callback``) open a watch when training begins, handing it the trainer's
optimizers, and close it when training ends; the report is then the callback's ``report``.
Each is imported on first use, so neither framework is needed until its callback is asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HfaultLightningCallback", "HfaultTrainerCallback"]

_HOMES = {
    "HfaultTrainerCallback": "hfault.integrations.transformers_callback",
    "HfaultLightningCallback": "hfault.integrations.lightning_callback",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
