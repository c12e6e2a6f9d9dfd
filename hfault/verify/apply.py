"""Apply planned fixes in the rerun, without touching the script.

- ``lower_lr``: the component's parameters leave their param group at the optimizer's
  construction, for a new group that copies every hyperparameter of the old one with
  ``lr × factor`` (and ``initial_lr × factor`` where the script set one). Where the component is
  its group's only content, that group's ``lr`` is scaled instead (no empty group). Multiplying
  the construction ``lr`` by the factor, rather than writing ``new_lr``, keeps an LR scheduler's
  shape. A slice of a fused tensor (``c_attn.query``) cannot be split off: the whole tensor moves.
- ``clip_grad``: a global optimizer step pre-hook, registered before hfault's own, calls
  ``clip_grad_norm_(params, max_norm)`` on each optimizer's parameters right before ``step()``:
  after whatever the script did to the gradients.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.optim.optimizer as optim_mod
from torch import nn

from hfault.numbers import as_float, encode, fmt
from hfault.verify.plan import PlannedFix, _flat, _ordered, _tensor


# ---------------------------------------------------------------- the param-group split
def split_param_groups(
    groups: list[dict[str, Any]],
    moves: Sequence[tuple[Sequence[torch.Tensor], float]],
    defaults: Mapping[str, Any],
) -> list[dict[str, Any] | str]:
    """Move each ``moves`` entry's tensors out of their param groups, in place.

    ``groups`` is an optimizer's ``params`` argument as a list of group dicts (entries may be
    tensors or ``(name, tensor)`` pairs). For each source group a new group is appended that
    copies its hyperparameters with ``lr × factor`` (``initial_lr × factor`` where present); a
    group whose every parameter moves keeps its place and gets the scaled ``lr``. Returns, per
    move, ``{"lr_before", "lr_after", "groups": [{"group", "new_group", "whole_group"}]}`` or
    a string saying why nothing moved.
    """
    results: list[dict[str, Any] | str] = []
    taken: set[int] = set()
    for tensors, factor in moves:
        ids = {id(t) for t in tensors} - taken
        sources = [(gi, [e for e in g["params"] if id(_tensor(e)) in ids])
                   for gi, g in enumerate(groups)]
        sources = [(gi, entries) for gi, entries in sources if entries]
        if not sources:
            results.append("none of its parameters is in this optimizer")
            continue
        bad = next((gi for gi, _ in sources
                    if not _is_lr(groups[gi].get("lr", defaults.get("lr")))), None)
        if bad is not None:
            results.append(f"param group {bad} has no numeric learning rate")
            continue
        changes = []
        lr_before = lr_after = None
        for gi, entries in sources:
            group = groups[gi]
            lr = group.get("lr", defaults.get("lr"))
            if lr_before is None:
                lr_before, lr_after = as_float(lr), as_float(lr * factor)
            if len(entries) == len(group["params"]):
                target, new_index = group, None
            else:
                group["params"] = [e for e in group["params"] if id(_tensor(e)) not in ids]
                target = {k: v for k, v in group.items() if k != "params"}
                target["params"] = entries
                groups.append(target)
                new_index = len(groups) - 1
            target["lr"] = lr * factor
            if "initial_lr" in target and _is_lr(target["initial_lr"]):
                target["initial_lr"] = target["initial_lr"] * factor
            changes.append({"group": gi, "new_group": new_index, "whole_group": new_index is None})
        taken |= ids
        results.append({"lr_before": lr_before, "lr_after": lr_after, "groups": changes})
    return results


def _is_lr(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.numel() == 1
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _as_groups(params: Sequence[Any]) -> list[dict[str, Any]] | None:
    """An optimizer's ``params`` argument (as a list) as a list of group dicts with list
    ``params`` (what ``Optimizer.__init__`` itself does), or None where torch will reject it."""
    groups = list(params)
    if not groups:
        return None
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    for g in groups:
        if not isinstance(g, dict) or isinstance(g.get("params"), set):
            return None
        entries = g["params"]
        g["params"] = [entries] if isinstance(entries, torch.Tensor) else list(entries)
    return groups


# ---------------------------------------------------------------- applying (rerun)
class FixApplier:
    """Installs the fixes for the rerun: a patched ``Optimizer.__init__`` (param-group split) and
    a global step pre-hook (clipping). Enter it *before* the capture session so that the session
    sees the split groups and the clipped gradients."""

    def __init__(self, fixes: Sequence[PlannedFix]):
        self.lr_fixes = [f for f in fixes if f.kind == "lower_lr"]
        self.clip = next((f for f in fixes if f.kind == "clip_grad"), None)
        self.applied: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.clip_steps = 0
        self.clipped_steps = 0
        self.largest_norm: float | None = None
        self._optimizers: dict[int, int] = {}
        self._restore: list[Callable[[], None]] = []
        self._done: set[int] = set()

    def __enter__(self) -> FixApplier:
        original = torch.optim.Optimizer.__init__
        applier = self

        def init(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            if id(opt) not in applier._optimizers:
                index = applier._optimizers[id(opt)] = len(applier._optimizers)
                args, kwargs = applier._split(opt, index, args, kwargs)
            original(opt, *args, **kwargs)

        torch.optim.Optimizer.__init__ = init  # type: ignore[method-assign]
        self._restore.append(lambda: setattr(torch.optim.Optimizer, "__init__", original))
        if self.clip is not None:
            handle = optim_mod.register_optimizer_step_pre_hook(self._clip_hook)
            self._restore.append(handle.remove)
        return self

    def __exit__(self, *exc: object) -> None:
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()
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

        groups = _as_groups(params)
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
        flat = _flat(groups)
        moves: list[tuple[PlannedFix, list[torch.Tensor]]] = []
        for fix in fixes:
            found = self._resolve(fix, flat)
            if isinstance(found, str):
                self._fail(fix, found)
            else:
                moves.append((fix, found))
        results = split_param_groups(groups, [(t, f.factor or 1.0) for f, t in moves], defaults)
        for (fix, _), result in zip(moves, results, strict=True):
            if isinstance(result, str):
                self._fail(fix, result)
                continue
            self._done.add(id(fix))
            self.applied.append(self._record(fix, type(opt).__name__, result))

    def _resolve(self, fix: PlannedFix, flat: Sequence[torch.Tensor]) -> list[torch.Tensor] | str:
        """The rerun's tensors of ``fix``'s component: by parameter name on the root module of
        the recorded class that holds this optimizer's parameters."""
        pos = {id(t): i for i, t in enumerate(flat)}
        candidates = [o for o in gc.get_objects()
                      if issubclass(type(o), nn.Module) and type(o).__name__ == fix.root]
        inner = {id(sub) for m in candidates for sub in m.modules() if sub is not m}
        roots = _ordered([m for m in candidates if id(m) not in inner], pos)
        if fix.root_ordinal >= len(roots):
            return (f"no {fix.root} module holds the parameters of the rerun's optimizer "
                    f"#{fix.optimizer}")
        named = dict(roots[fix.root_ordinal].named_parameters())
        tensors = []
        for name in fix.names:
            t = named.get(name)
            if t is None or id(t) not in pos:
                return f"{fix.root}.{name} is not a parameter of optimizer #{fix.optimizer}"
            tensors.append(t)
        return tensors

    def _record(self, fix: PlannedFix, opt_class: str, result: Mapping[str, Any]
                ) -> dict[str, Any]:
        groups = result["groups"]
        where = "; ".join(
            f"param group {g['group']} scaled as a whole" if g["whole_group"]
            else f"moved from param group {g['group']} to new group {g['new_group']}"
            for g in groups)
        note = f"{opt_class} #{fix.optimizer}: {where}"
        if fix.fused:
            note += (f"; {fix.component} is a slice of {', '.join(fix.fused)}, which param "
                     "groups cannot split: the whole tensor gets the new learning rate")
        lr_before, lr_after = result["lr_before"], result["lr_after"]
        if fix.lr is not None and lr_before is not None and not math.isclose(
                lr_before, fix.lr, rel_tol=1e-6):
            note += (f"; the finding saw lr {fix.lr:.3g} ({fix.rule}), the optimizer was built "
                     f"with {lr_before:.3g} (a scheduler): ×{fix.factor:.3g} scales the whole "
                     "schedule")
        return {
            "rule": fix.rule,
            "component": fix.component,
            "kind": "lower_lr",
            "lr_before": lr_before,
            "lr_after": lr_after,
            "max_norm": None,
            "factor": fix.factor,
            "optimizer": fix.optimizer,
            "parameters": list(fix.names),
            "groups": groups,
            "note": note,
        }

    def _fail(self, fix: PlannedFix, reason: str) -> None:
        self.failed.append({"rule": fix.rule, "component": fix.component, "kind": fix.kind,
                            "reason": reason, "fix": fix})

    # ------------------------------------------------------------ clipping
    def _clip_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.clip is None or self.clip.max_norm is None:
            return
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        try:
            total = float(torch.nn.utils.clip_grad_norm_(params, self.clip.max_norm))
        except Exception as exc:  # e.g. sparse gradients: stop clipping, say so
            self.notes.append(f"gradient clipping failed and was stopped: {exc}")
            self.clip = None
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
        note = ("clip_grad_norm_ on every optimizer's parameters right before step(), after the "
                "script's own gradient processing")
        if self.clip_steps:
            note += (f"; the total gradient norm exceeded max_norm at {self.clipped_steps} of "
                     f"{self.clip_steps} optimizer step(s) (largest "
                     f"{fmt(self.largest_norm, missing='n/a')})")
        return {
            "rule": fix.rule,
            "component": fix.component,
            "kind": "clip_grad",
            "lr_before": None,
            "lr_after": None,
            "max_norm": fix.max_norm,
            "steps": self.clip_steps,
            "clipped_steps": self.clipped_steps,
            "largest_norm": encode(self.largest_norm),
            "note": note,
        }
