"""``lower_lr``: a per-component learning rate, the component's parameters in their own param
group.

- Filled in: ``factor`` (the rule's expression, in (0, 1), to 3 significant digits) times the
  component's last measured learning rate gives ``new_lr``; the snippet splits the component out
  of the param groups of the optimizer the script built, keeping each group's settings, with
  ``lr × factor`` (:mod:`hfault.fixes.lr_snippet`).
- Planned: one fix per component, from its highest-ranked finding. Parameters are matched by
  name: the first run records the component's parameter names from ``named_parameters()`` of
  its root module; the rerun finds the module of that class holding the new optimizer's
  parameters.
- Applied: at the optimizer's construction the component's parameters leave their param group
  for a new group that copies every hyperparameter of the old one with ``lr × factor`` (and
  ``initial_lr × factor`` where the script set one); where the component is its group's only
  content, that group's ``lr`` is scaled instead (no empty group). Multiplying the construction
  ``lr`` by the factor, rather than writing ``new_lr``, keeps an LR scheduler's shape. A slice of
  a fused tensor (``c_attn.query``) cannot be split off: the whole tensor moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from hfault.fixes.kind import (
    FixKind,
    FixTarget,
    PlanContext,
    PlannedFix,
    Skip,
    finding_brief,
    number_text,
    positive,
)
from hfault.fixes.lr_snippet import (
    HAND_WRITTEN,
    hand_written_snippet,
    param_group_snippet,
    read_site,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


class LowerLr(FixKind):
    name = "lower_lr"
    doc = ("a per-component learning rate: the component's parameters get their own param group "
           "with lr × factor")
    fields: ClassVar[Mapping[str, str]] = {
        "factor": "a 'factor' expression (the multiplier of the component's learning rate, in "
                  "(0, 1))"}
    produces = ("component", "lr", "new_lr", "factor")
    mechanical = True
    at_optimizer = True
    catalog_note = " a per-component learning-rate split"

    def fill(self, fields: Mapping[str, Any], target: FixTarget
             ) -> tuple[dict[str, Any], str | None] | None:
        comp, factor, lr = target.component, fields.get("factor"), target.lr
        if comp is None or not isinstance(factor, (int, float)) or not 0 < factor < 1:
            return None
        if not isinstance(lr, (int, float)) or lr <= 0:
            return None  # no learning rate known
        factor = float(f"{factor:.3g}")
        new_lr = lr * factor
        values = {"kind": self.name, "component": comp["name"], "lr": lr, "new_lr": new_lr,
                  "factor": factor}
        if target.optimizer.get("class") == HAND_WRITTEN:
            return values, hand_written_snippet(comp, factor)
        return values, param_group_snippet(comp, factor,
                                           read_site(target.optimizer, target.script))

    def plan(self, finding: Mapping[str, Any], values: Mapping[str, Any], context: PlanContext
             ) -> PlannedFix | Skip | None:
        name = values.get("component")
        if not (isinstance(name, str) and positive(values.get("factor"))
                and "new_lr" in values):
            return None
        mine = [x for x in context.planned if x.kind == self.name]
        planned = next((x for x in mine if x.component == name), None)
        if planned is not None:
            return Skip(name, f"{name} already gets the fix of {planned.rule}")
        comp = context.components.get(name)
        if comp is None:
            return Skip(name, f"{name} is not a component of this run")
        tensors = list({id(part.param): part.param for part in comp.parts}.values())
        claimed = {id(part.param): x.component for x in mine
                   for part in context.components[x.component].parts}
        clash = [claimed[id(p)] for p in tensors if id(p) in claimed]
        if clash:
            return Skip(name, f"{name} shares a fused tensor with {clash[0]}, which already gets "
                        "a learning-rate fix")
        owned = [context.owner.get(id(p)) for p in tensors]
        if any(o is None for o in owned) or len({id(o[0]) for o in owned if o}) != 1:
            return Skip(name, f"the parameters of {name} are not owned by one module of the "
                        "model: they cannot be found again by name in the rerun")
        root = owned[0][0]  # type: ignore[index]
        names = tuple(o[1] for o in owned if o)
        by_id = dict(zip((id(p) for p in tensors), names, strict=True))
        fused = tuple(dict.fromkeys(by_id[id(part.param)] for part in comp.parts
                                    if part.start is not None))
        return PlannedFix(
            finding["rule"], name, self.name, finding_brief(finding),
            factor=float(values["factor"]), lr=as_float(values.get("lr")),
            new_lr=as_float(values.get("new_lr")), optimizer=comp.optimizer,
            root=type(root).__name__,
            root_ordinal=root_ordinal(root, context.roots,
                                      context.state.optimizers[comp.optimizer]),
            names=names, fused=fused,
        )

    def plan_text(self, fix: PlannedFix) -> str:
        return f"{fix.component} lr ×{fix.factor:.3g} ({fix.rule})"

    def applied_text(self, record: Mapping[str, Any]) -> str:
        return (f"{record['component']}: lr {number_text(record['lr_before'])} → "
                f"{number_text(record['lr_after'])} (×{record['factor']:.3g}, {record['rule']})")

    def describe(self, record: Mapping[str, Any]) -> str:
        return (f"lr of {record['component']} {number_text(record.get('lr_before'))} → "
                f"{number_text(record.get('lr_after'))}")


LOWER_LR = LowerLr()


# ---------------------------------------------------------------- the split (rerun)
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
        sources = [(gi, [e for e in g["params"] if id(param_tensor(e)) in ids])
                   for gi, g in enumerate(groups)]
        sources = [(gi, entries) for gi, entries in sources if entries]
        if not sources:
            results.append("none of its parameters is in this optimizer")
            continue
        bad = next((gi for gi, _ in sources
                    if not is_lr(groups[gi].get("lr", defaults.get("lr")))), None)
        if bad is not None:
            results.append(f"param group {bad} has no numeric learning rate")
            continue
        changes = []
        lr_before = lr_after = None
        for gi, entries in sources:
            group = groups[gi]
            lr: Any = group.get("lr", defaults.get("lr"))  # a number or a 1-element tensor
            if lr_before is None:
                lr_before, lr_after = as_float(lr), as_float(lr * factor)
            if len(entries) == len(group["params"]):
                target, new_index = group, None
            else:
                group["params"] = [e for e in group["params"] if id(param_tensor(e)) not in ids]
                target = {k: v for k, v in group.items() if k != "params"}
                target["params"] = entries
                groups.append(target)
                new_index = len(groups) - 1
            target["lr"] = lr * factor
            if "initial_lr" in target and is_lr(target["initial_lr"]):
                target["initial_lr"] = target["initial_lr"] * factor
            changes.append({"group": gi, "new_group": new_index, "whole_group": new_index is None})
        taken |= ids
        results.append({"lr_before": lr_before, "lr_after": lr_after, "groups": changes})
    return results


def as_groups(params: Sequence[Any]) -> list[dict[str, Any]] | None:
    """An optimizer's ``params`` argument (as a list) as a list of group dicts with list
    ``params`` (what ``Optimizer.__init__`` itself does), or None where torch will reject it."""
    import torch

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


def applied_record(fix: PlannedFix, opt_class: str, result: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The ``verify_fix.fixes`` entry of a split (``result``: its :func:`split_param_groups`
    entry) in an optimizer of class ``opt_class``."""
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
                 f"with {lr_before:.3g} (a scheduler or the script changes it later): "
                 f"×{fix.factor:.3g} scales the value it was built with (whether the factor "
                 "held at every step is in in_effect)")
    return {
        "rule": fix.rule,
        "component": fix.component,
        "kind": LOWER_LR.name,
        "lr_before": lr_before,
        "lr_after": lr_after,
        "max_norm": None,
        "factor": fix.factor,
        "optimizer": fix.optimizer,
        "parameters": list(fix.names),
        "groups": groups,
        "note": note,
    }


# ---------------------------------------------------------------- parameters in param groups
def param_tensor(entry: Any) -> Any:
    """A param-group entry: a tensor, or a (name, tensor) pair (named parameters)."""
    return entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry


def flat_params(groups: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
    """Every tensor of the param groups, in the optimizer's order."""
    return [param_tensor(e) for g in groups for e in g["params"]]


def held_in_order(modules: Sequence[nn.Module], pos: Mapping[int, int]) -> list[nn.Module]:
    """The modules holding a parameter of the optimizer (``pos``: tensor id → its position), by
    their first one in its order."""

    def first(m: nn.Module) -> int | None:
        return min((pos[id(p)] for p in m.parameters() if id(p) in pos), default=None)

    held = [(first(m), i, m) for i, m in enumerate(modules)]
    return [m for f, _, m in sorted((h for h in held if h[0] is not None),
                                    key=lambda h: (h[0], h[1]))]


def root_ordinal(root: nn.Module, roots: Sequence[nn.Module],
                 opt: torch.optim.Optimizer) -> int:
    """Which root of its class ``root`` is, among those holding ``opt``'s parameters."""
    pos = {id(p): i for i, p in enumerate(flat_params(opt.param_groups))}
    same = held_in_order([r for r in roots if type(r).__name__ == type(root).__name__], pos)
    return next((i for i, r in enumerate(same) if r is root), 0)


def is_lr(x: Any) -> bool:
    """A learning rate a param group can be scaled by: a number or a one-element tensor."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.numel() == 1
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def as_float(x: Any) -> float | None:
    """A number or one-element tensor as a float; None otherwise."""
    import torch

    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
