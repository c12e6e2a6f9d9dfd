"""Plan the mechanical fixes of a diagnosis: for each finding whose fix can be applied without
touching the script (a per-component learning rate, gradient clipping), what the rerun must find
again. Parameters are matched by name: the first run records each fixed component's parameter
names from ``named_parameters()`` of its root module; the rerun finds the module of that class
holding the new optimizer's parameters. At most one fix per component, from its highest-ranked
finding, and one clipping fix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hfault.capture.session import CaptureState
from hfault.components import find_roots
from hfault.numbers import as_float
from hfault.verify.compare import ALL_PARAMETERS


@dataclass
class PlannedFix:
    """A fix to apply in the rerun, with what the rerun needs to find its parameters again."""

    rule: str
    component: str
    kind: str
    """``lower_lr`` or ``clip_grad``."""
    finding: dict[str, Any] = field(default_factory=dict)
    factor: float | None = None
    lr: float | None = None
    """What the finding said: the component's learning rate and the suggested one."""
    new_lr: float | None = None
    max_norm: float | None = None
    optimizer: int = 0
    root: str | None = None
    """Class name of the root module whose ``named_parameters()`` give ``names``."""
    root_ordinal: int = 0
    """Which root of that class (ordered by their first parameter in the optimizer)."""
    names: tuple[str, ...] = ()
    fused: tuple[str, ...] = ()
    """Names of fused tensors moved whole although the component is a slice of them."""


# ---------------------------------------------------------------- planning (first run)
def plan_fixes(
    report: Mapping[str, Any], state: CaptureState
) -> tuple[list[PlannedFix], list[dict[str, Any]]]:
    """The mechanical fixes of a report's findings, in rank order, and the ones left out (with
    the reason)."""
    fixes: list[PlannedFix] = []
    skipped: list[dict[str, Any]] = []
    comps = {c.name: c for c in state.components}
    params = [part.param for c in state.components for part in c.parts]
    roots = find_roots(list(state.modules.values()), params)
    owner: dict[int, tuple[nn.Module, str]] = {}
    for root in roots:
        for name, p in root.named_parameters():
            owner.setdefault(id(p), (root, name))
    fixed_params: dict[int, str] = {}
    clip: PlannedFix | None = None

    def skip(f: Mapping[str, Any], component: str | None, kind: str, reason: str) -> None:
        skipped.append({"rule": f["rule"], "component": component or ALL_PARAMETERS,
                        "kind": kind, "reason": reason})

    for f in report.get("findings", []):
        values = (f.get("fix") or {}).get("values") or {}
        brief = {k: f.get(k) for k in ("rule", "component", "severity", "score", "rank")}
        if values.get("kind") == "clip_grad":
            max_norm = values.get("max_norm")
            if not _positive(max_norm):
                continue
            if clip is not None:
                skip(f, f.get("component"), "clip_grad",
                     f"gradient clipping is applied once, for {clip.rule}")
                continue
            clip = PlannedFix(f["rule"], f.get("component") or ALL_PARAMETERS, "clip_grad",
                              brief, max_norm=float(max_norm))
            fixes.append(clip)
            continue
        name = values.get("component")
        if not (isinstance(name, str) and _positive(values.get("factor"))
                and "new_lr" in values):
            continue
        planned = next((x for x in fixes if x.kind == "lower_lr" and x.component == name), None)
        if planned is not None:
            skip(f, name, "lower_lr", f"{name} already gets the fix of {planned.rule}")
            continue
        comp = comps.get(name)
        if comp is None:
            skip(f, name, "lower_lr", f"{name} is not a component of this run")
            continue
        tensors = list({id(part.param): part.param for part in comp.parts}.values())
        clash = [fixed_params[id(p)] for p in tensors if id(p) in fixed_params]
        if clash:
            skip(f, name, "lower_lr", f"{name} shares a fused tensor with {clash[0]}, which "
                 "already gets a learning-rate fix")
            continue
        owned = [owner.get(id(p)) for p in tensors]
        if any(o is None for o in owned) or len({id(o[0]) for o in owned if o}) != 1:
            skip(f, name, "lower_lr", f"the parameters of {name} are not owned by one module of "
                 "the model: they cannot be found again by name in the rerun")
            continue
        root = owned[0][0]  # type: ignore[index]
        names = tuple(o[1] for o in owned if o)
        by_id = dict(zip((id(p) for p in tensors), names, strict=True))
        fused = tuple(dict.fromkeys(by_id[id(part.param)] for part in comp.parts
                                    if part.start is not None))
        factor = float(values["factor"])
        fixes.append(PlannedFix(
            f["rule"], name, "lower_lr", brief, factor=factor,
            lr=as_float(values.get("lr")), new_lr=as_float(values.get("new_lr")),
            optimizer=comp.optimizer, root=type(root).__name__,
            root_ordinal=_root_ordinal(root, roots, state.optimizers[comp.optimizer]),
            names=names, fused=fused,
        ))
        for p in tensors:
            fixed_params[id(p)] = name
    return fixes, skipped


def _root_ordinal(root: nn.Module, roots: Sequence[nn.Module], opt: torch.optim.Optimizer) -> int:
    pos = {id(p): i for i, p in enumerate(_flat(opt.param_groups))}
    same = _ordered([r for r in roots if type(r).__name__ == type(root).__name__], pos)
    return next((i for i, r in enumerate(same) if r is root), 0)


def _ordered(modules: Sequence[nn.Module], pos: Mapping[int, int]) -> list[nn.Module]:
    """The modules holding a parameter of the optimizer, by their first one in its order."""

    def first(m: nn.Module) -> int | None:
        return min((pos[id(p)] for p in m.parameters() if id(p) in pos), default=None)

    held = [(first(m), i, m) for i, m in enumerate(modules)]
    return [m for f, _, m in sorted((h for h in held if h[0] is not None),
                                    key=lambda h: (h[0], h[1]))]


def _flat(groups: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
    return [_tensor(e) for g in groups for e in g["params"]]


def _tensor(entry: Any) -> Any:
    """A param-group entry: a tensor, or a (name, tensor) pair (named parameters)."""
    return entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry


def _positive(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and x > 0)
