"""Apply planned fixes in the rerun, without touching the script. :class:`FixApplier` is a
capture listener at :data:`~hfault.capture.hooks.FIX`, the first place: it rewrites an
optimizer's constructor arguments for the param-group split of ``lower_lr`` fixes, and clips the
gradients for ``clip_grad`` right before ``step()`` (after whatever the script did to them) and
before any probe reads them. What each does is its kind's (:mod:`hfault.fixes.lower_lr`,
:mod:`hfault.fixes.clip_grad`).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hfault.capture.hooks import FIX, Listener
from hfault.fixes import clip_grad, lower_lr
from hfault.fixes.clip_grad import CLIP_GRAD, clip_gradients
from hfault.fixes.kind import PlannedFix
from hfault.fixes.lower_lr import (
    LOWER_LR,
    as_float,
    as_groups,
    flat_params,
    held_in_order,
    split_param_groups,
)
from hfault.verify.lr_hold import LrHold


# ---------------------------------------------------------------- applying (rerun)
class FixApplier(Listener):
    """The fixes of one rerun; add it to the rerun's capture session (``session.add``)."""

    priority = FIX

    def __init__(self, fixes: Sequence[PlannedFix]):
        self.lr_fixes = [f for f in fixes if f.kind == LOWER_LR.name]
        self.clip = next((f for f in fixes if f.kind == CLIP_GRAD.name), None)
        self.applied: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.clip_steps = 0
        self.clipped_steps = 0
        self.largest_norm: float | None = None
        self.hold = LrHold()
        """Whether each LR fix stayed in effect (the script may assign the LR itself)."""
        self._optimizers: dict[int, int] = {}
        self._done: set[int] = set()

    # ------------------------------------------------------------ listener events
    def optimizer_args(
        self, opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if id(opt) in self._optimizers:
            return args, kwargs
        index = self._optimizers[id(opt)] = len(self._optimizers)
        return self._split(opt, index, args, kwargs)

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        self._clip(opt)

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        self.hold.check(opt)

    def close(self) -> None:
        for fix in self.lr_fixes:
            if id(fix) not in self._done and not any(x["fix"] is fix for x in self.failed):
                self._fail(fix, f"the rerun created no optimizer #{fix.optimizer}")
        self.failed = [{k: v for k, v in x.items() if k != "fix"} for x in self.failed]

    # ------------------------------------------------------------ param groups
    def _split(self, opt: torch.optim.Optimizer, index: int, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        fixes = [f for f in self.lr_fixes if f.optimizer == index]
        if not fixes:
            return args, kwargs
        in_kwargs = not args
        params = kwargs.get("params") if in_kwargs else args[0]
        defaults = (args[1] if len(args) > 1 else kwargs.get("defaults")) or {}
        if type(opt).__name__ == "LBFGS":
            for fix in fixes:
                self._fail(fix, "LBFGS supports a single param group only")
            return args, kwargs
        if params is None or isinstance(params, torch.Tensor):  # torch rejects these
            return args, kwargs
        params = list(params)  # a one-shot iterable is consumed here: pass the list on

        def passing(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if in_kwargs:
                return args, {**kwargs, "params": value}
            return (value, *args[1:]), kwargs

        groups = as_groups(params)
        if groups is None:  # torch rejects it: leave that to torch
            return passing(params)
        args, kwargs = passing(groups)
        try:
            self._move(opt, groups, defaults, fixes)
        except Exception as exc:  # a bug here must not look like the script's crash
            for fix in fixes:
                if id(fix) not in self._done:
                    self._fail(fix, f"internal error: {type(exc).__name__}: {exc}")
        return args, kwargs

    def _move(self, opt: torch.optim.Optimizer, groups: list[dict[str, Any]],
              defaults: Mapping[str, Any], fixes: Sequence[PlannedFix]) -> None:
        flat = flat_params(groups)
        moves: list[tuple[PlannedFix, list[torch.Tensor]]] = []
        for fix in fixes:
            found = self._resolve(fix, flat)
            if isinstance(found, str):
                self._fail(fix, found)
            else:
                moves.append((fix, found))
        results = split_param_groups(groups, [(t, f.factor or 1.0) for f, t in moves], defaults)
        records = []
        for (fix, _), result in zip(moves, results, strict=True):
            if isinstance(result, str):
                self._fail(fix, result)
                continue
            self._done.add(id(fix))
            records.append(self._record(fix, type(opt).__name__, result))
        self.applied += records
        lrs = [as_float(g.get("lr", defaults.get("lr"))) for g in groups]
        touched = {c["new_group"] if c["new_group"] is not None else c["group"]
                   for r in records for c in r["groups"]}
        for record in records:
            self.hold.watch(opt, record, lrs, touched)

    def _resolve(self, fix: PlannedFix, flat: Sequence[torch.Tensor]) -> list[torch.Tensor] | str:
        """The rerun's tensors of ``fix``'s component: by parameter name on the root module of
        the recorded class that holds this optimizer's parameters."""
        pos = {id(t): i for i, t in enumerate(flat)}
        candidates = [o for o in gc.get_objects()
                      if issubclass(type(o), nn.Module) and type(o).__name__ == fix.root]
        inner = {id(sub) for m in candidates for sub in m.modules() if sub is not m}
        roots = held_in_order([m for m in candidates if id(m) not in inner], pos)
        if fix.root_ordinal >= len(roots):
            return (f"no {fix.root} module holds the parameters of the rerun's optimizer "
                    f"#{fix.optimizer}")
        named = dict(roots[fix.root_ordinal].named_parameters())
        tensors: list[torch.Tensor] = []
        for name in fix.names:
            t = named.get(name)
            if t is None or id(t) not in pos:
                return f"{fix.root}.{name} is not a parameter of optimizer #{fix.optimizer}"
            tensors.append(t)
        return tensors

    def _record(self, fix: PlannedFix, opt_class: str, result: Mapping[str, Any]
                ) -> dict[str, Any]:
        return lower_lr.applied_record(fix, opt_class, result)

    def _fail(self, fix: PlannedFix, reason: str) -> None:
        self.failed.append({"rule": fix.rule, "component": fix.component, "kind": fix.kind,
                            "reason": reason, "fix": fix})

    # ------------------------------------------------------------ clipping
    def _clip(self, opt: torch.optim.Optimizer) -> None:
        if self.clip is None or self.clip.max_norm is None:
            return
        try:
            total = clip_gradients(opt, self.clip.max_norm)
        except Exception as exc:  # e.g. sparse gradients: stop clipping, say so
            self.notes.append(f"gradient clipping failed and was stopped: {exc}")
            self.clip = None
            return
        if total is None or self.clip.max_norm is None:  # no parameter has a gradient
            return
        self.clip_steps += 1
        if not math.isfinite(total) or total > self.clip.max_norm:
            self.clipped_steps += 1
        if self.largest_norm is None or not total <= self.largest_norm:
            self.largest_norm = total

    def clip_record(self) -> dict[str, Any] | None:
        fix = self.clip
        if fix is None:
            return None
        return clip_grad.applied_record(fix, self.clip_steps, self.clipped_steps,
                                        self.largest_norm)
