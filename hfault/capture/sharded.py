"""Sharded parameters (FSDP, DTensor) are refused with one line, before anything is measured.

hfault measures each component's whole parameters and gradients. FSDP (``FullyShardedDataParallel``
and ``fully_shard``) and tensor parallelism give each rank a shard (a ``FlatParameter`` of several
modules, or a ``DTensor``), so norms, update ratios and curvature would be a shard's, and names
would be FSDP's (``_fsdp_wrapped_module._flat_param``). Rather than report wrong numbers, the run
stops at the first optimizer or backward that shows them (a usage error, exit 2). DDP keeps whole
parameters on every rank and is supported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfault.capture.hooks import EARLY, Listener

if TYPE_CHECKING:
    from hfault.capture.session import CaptureState
    from hfault.components import Component

_SHARDED_MODULES = ("FullyShardedDataParallel", "FSDPModule")
_SHARDED_TENSORS = ("FlatParameter", "DTensor")


class ShardedTraining(BaseException):
    """Raised into the script when its parameters are sharded (a BaseException, so the script's
    ``except Exception`` does not catch it)."""


def _classes(obj: object) -> set[str]:
    return {cls.__name__ for cls in type(obj).__mro__}


def sharding_of(params: Iterable[torch.Tensor], modules: Iterable[nn.Module] = ()) -> str | None:
    """What shards these parameters or modules, named for the user; None when nothing does.
    Classes are recognised by name, so nothing of torch.distributed is imported."""
    for p in params:
        if _classes(p) & set(_SHARDED_TENSORS) or getattr(p, "_is_flat_param", False):
            return "FSDP / DTensor (sharded parameters)"
    for m in modules:
        if _classes(m) & set(_SHARDED_MODULES):
            return f"FSDP ({type(m).__name__})"
    return None


def refusal(what: str) -> str:
    return (f"{what} is not supported: hfault measures whole parameters and each rank holds a "
            "shard; diagnose the model under DDP or in one process")


class ShardGuard(Listener):
    """Stops the run at the first optimizer over sharded parameters, or the first backward of a
    model wrapped by FSDP (``use_orig_params`` keeps plain parameters)."""

    priority = EARLY

    def __init__(self, state: CaptureState) -> None:
        self.state = state

    def optimizer_created(
        self, opt: torch.optim.Optimizer, index: int, source: dict[str, Any] | None
    ) -> None:
        what = sharding_of(p for g in opt.param_groups for p in g["params"])
        if what is not None:
            raise ShardedTraining(refusal(what))

    def components_built(self, components: Sequence[Component]) -> None:
        what = sharding_of((), self.state.modules.values())
        if what is not None:
            raise ShardedTraining(refusal(what))
