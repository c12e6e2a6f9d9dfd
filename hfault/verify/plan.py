"""Plan the mechanical fixes of a diagnosis: for each finding whose fix kind can be applied
without touching the script (:mod:`hfault.fixes`), what the rerun must find again. Each kind plans
its own fixes (at most one per component, from its highest-ranked finding, and one clipping fix);
this module walks the findings in rank order and collects what they plan and skip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from hfault.capture.session import CaptureState
from hfault.components import find_roots
from hfault.fixes.kind import ALL_PARAMETERS, PlanContext, PlannedFix, Skip
from hfault.fixes.registry import kind_of

__all__ = ["PlannedFix", "plan_fixes"]


def plan_fixes(
    report: Mapping[str, Any], state: CaptureState
) -> tuple[list[PlannedFix], list[dict[str, Any]]]:
    """The mechanical fixes of a report's findings, in rank order, and the ones left out (with
    the reason). ``report`` may be a saved one: :func:`hfault.fixes.registry.kind_of` reads the
    kind of fixes written before every fix named it."""
    context = _context(state)
    skipped: list[dict[str, Any]] = []
    for f in report.get("findings", []):
        values = (f.get("fix") or {}).get("values") or {}
        kind = kind_of(values)
        if kind is None or not kind.mechanical:
            continue
        if f.get("consequence_of") is not None:
            # A symptom of a higher-ranked finding: fixing the cause is the fix; applying both
            # over-fixes (the report shows it without a fix of its own).
            skipped.append({"rule": f["rule"], "component": f.get("component") or ALL_PARAMETERS,
                            "kind": kind.name, "reason": "a consequence of finding "
                            f"#{f['consequence_of']}, whose fix is applied instead"})
            continue
        planned = kind.plan(f, values, context)
        if isinstance(planned, Skip):
            skipped.append({"rule": f["rule"], "component": planned.component or ALL_PARAMETERS,
                            "kind": kind.name, "reason": planned.reason})
        elif planned is not None:
            context.planned.append(planned)
    return context.planned, skipped


def _context(state: CaptureState) -> PlanContext:
    components = {c.name: c for c in state.components}
    params = [part.param for c in state.components for part in c.parts]
    roots = find_roots(list(state.modules.values()), params)
    owner: dict[int, tuple[nn.Module, str]] = {}
    for root in roots:
        for name, p in root.named_parameters():
            owner.setdefault(id(p), (root, name))
    return PlanContext(state, components, roots, owner)
