"""One fix per root cause: after ranking, a finding the report shows to be a consequence of a
higher-ranked one points to it (``consequence_of``) instead of offering its own fix, and a fix
identical to a higher-ranked finding's is shown once (``fix_of``).

A user who applies every fix shown over-fixes: the demo once showed the same learning-rate split
twice (HF201 and HF006 on the word GRU), and the embeddings the GRU pushed beyond their stability
limit with a learning-rate fix of their own. Both relations are presentation only: every finding
keeps its rank, score and fix in the report, so detection and ranking are unchanged.

Conservative by design: being ranked lower is never enough. A consequence needs a relation the
report records between the two components, in the same step window:

- ``evidence.pushed_by`` naming the cause's component (a rule that knows the direction says so);
- the cause's component upstream of it on a propagation path (``propagation.paths``);
- a finding whose component is the cause's and whose ``related`` names it as the downstream end
  of a coupling (``evidence.downstream_component``, HF203);
- a strong coupling between the two in the coupling graph of a snapshot in the window
  (κ at or above HF203's ``kappa_min``, 0.5 by default);
- for two components with no gradient (HF003), the effect running before the cause in the
  forward with every component between them dead too (one cut starves everything upstream).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hfault.findings import Finding, Fix
from hfault.fixes.registry import kind_of

NO_GRADIENT_RULE = "HF003"
"""The rule of a component that never received a gradient (dead-component)."""
KAPPA_MIN = 0.5
"""A coupling this strong relates two components (HF203's default ``kappa_min``)."""


def relate(findings: Sequence[Finding], report: Mapping[str, Any]) -> None:
    """Set ``consequence_of``, ``fix_of`` and ``relation`` on ranked ``findings`` (in place),
    from the report's JSON form (its snapshots, propagation and rules)."""
    window = step_window(report)
    kappa_min = _kappa_min(report)
    for i, finding in enumerate(findings):
        finding.consequence_of = finding.fix_of = finding.relation = None
        for cause in findings[:i]:
            if cause.consequence_of is not None or cause.fix is None:
                continue  # only a root cause with a fix explains another finding
            why = consequence_evidence(cause, finding, findings, report, window, kappa_min)
            if why is not None:
                finding.consequence_of, finding.relation = cause.rank, why
                break
        if finding.consequence_of is not None or finding.fix is None:
            continue
        for earlier in findings[:i]:
            if earlier.fix is not None and earlier.fix_of is None and \
                    earlier.consequence_of is None and same_fix(earlier, finding):
                finding.fix_of = earlier.rank
                finding.relation = f"the same as #{earlier.rank}'s ({earlier.rule})"
                break


def consequence_evidence(cause: Finding, effect: Finding, findings: Iterable[Finding],
                         report: Mapping[str, Any], window: int, kappa_min: float = KAPPA_MIN
                         ) -> str | None:
    """Why ``effect`` is a consequence of ``cause`` (ranked above it), or None when the report
    records no relation between their components in the same step window."""
    a, b = cause.component, effect.component
    if not a or not b or a == b:
        return None
    if cause.rule == effect.rule == NO_GRADIENT_RULE:
        return dead_upstream(a, b, findings, report)
    if effect.evidence.get("pushed_by") == a:
        return f"{b} is pushed by {a} ({effect.rule})"
    if not _same_window(cause.step, effect.step, window):
        return None
    for path in (report.get("propagation") or {}).get("paths") or []:
        names = path.get("path") if isinstance(path, Mapping) else None
        if isinstance(names, list) and names and names[0] == a and b in names[1:]:
            return f"downstream of {a} on the coupling path {' → '.join(names)}"
    for other in findings:
        if other.component == a and b in other.related and \
                other.evidence.get("downstream_component") == b:
            return f"downstream of {a}, coupled to it ({other.rule})"
    kappa, step = strongest_coupling(report, a, b, cause.step, effect.step, window)
    if kappa is not None and kappa >= kappa_min:
        return f"coupled to {a} (κ = {kappa:.2f} at step {step})"
    return None


def dead_upstream(cause: str, effect: str, findings: Iterable[Finding],
                  report: Mapping[str, Any]) -> str | None:
    """Why a component with no gradient is a consequence of ``cause``, the one where the
    gradient stops: it comes before ``cause`` in the forward and every component from it to
    ``cause`` has no gradient either. One ``.detach()`` or unused output starves everything
    upstream of it, and listing each of those components as a fault of its own buries the one
    place to look; a live component in between means a second cut, which keeps its own fix."""
    order = [c.get("name") for c in report.get("components") or [] if isinstance(c, Mapping)]
    if cause not in order or effect not in order:
        return None
    first, last = order.index(effect), order.index(cause)
    dead = {f.component for f in findings if f.rule == NO_GRADIENT_RULE}
    if first >= last or not all(name in dead for name in order[first:last + 1]):
        return None
    return (f"{effect} runs before {cause}, where the gradient stops, and every component "
            f"between them gets none either ({NO_GRADIENT_RULE})")


def same_fix(a: Finding, b: Finding) -> bool:
    """Whether two findings' fixes are one change: the same kind with the same values it writes
    (a per-component split of the same component at the same factor, the same clipping), or, for
    a fix made by hand, the same text on the same component."""
    fa, fb = a.fix, b.fix
    if fa is None or fb is None:
        return False
    kind_a, kind_b = kind_of(fa.values), kind_of(fb.values)
    if kind_a is None or kind_a is not kind_b:
        return False
    if not kind_a.produces:  # made by hand: the fix is its text
        return a.component == b.component and _text(fa) == _text(fb)
    return all(_equal(fa.values.get(k), fb.values.get(k)) for k in kind_a.produces)


def step_window(report: Mapping[str, Any]) -> int:
    """How far apart two findings' steps may be and still be the same window: the largest gap
    between consecutive snapshots (one snapshot interval), 0 without two snapshots."""
    steps = sorted({s["step"] for s in report.get("snapshots") or []
                    if isinstance(s, Mapping) and isinstance(s.get("step"), int)})
    return max((b - a for a, b in itertools.pairwise(steps)), default=0)


def strongest_coupling(report: Mapping[str, Any], a: str, b: str, step_a: int | None,
                       step_b: int | None, window: int) -> tuple[float | None, int | None]:
    """The largest κ between ``a`` and ``b`` in the coupling graphs of the snapshots within the
    window of both findings' steps, and its step."""
    best: tuple[float | None, int | None] = (None, None)
    for snapshot in report.get("snapshots") or []:
        step, graph = snapshot.get("step"), snapshot.get("graph")
        if not isinstance(graph, Mapping) or not all(
                _same_window(s, step, window) for s in (step_a, step_b)):
            continue
        for edge in graph.get("edges") or []:
            if {edge.get("source"), edge.get("target")} != {a, b}:
                continue
            kappa = edge.get("kappa")
            if isinstance(kappa, (int, float)) and math.isfinite(kappa) and (
                    best[0] is None or kappa > best[0]):
                best = (float(kappa), step)
    return best


def _same_window(x: int | None, y: Any, window: int) -> bool:
    return isinstance(x, int) and isinstance(y, int) and abs(x - y) <= window


def _kappa_min(report: Mapping[str, Any]) -> float:
    """HF203's threshold as the report was judged by, else the default."""
    for rule in report.get("rules") or []:
        if isinstance(rule, Mapping) and rule.get("id") == "HF203":
            value = (rule.get("params") or {}).get("kappa_min")
            if isinstance(value, Mapping):
                value = value.get("value", value.get("default"))
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
    return KAPPA_MIN


def _text(fix: Fix) -> tuple[str, str]:
    return fix.summary.strip(), (fix.snippet or "").strip()


def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return math.isclose(x, y, rel_tol=1e-6)
    return bool(x == y)


def relation_text(finding: Mapping[str, Any]) -> str | None:
    """What a renderer shows in place of a finding's own fix (a report finding in JSON form),
    None when the finding has its own fix to show."""
    why = finding.get("relation")
    cause = finding.get("consequence_of")
    if isinstance(cause, int):
        return f"consequence of #{cause}" + (f": {why}" if why else "") + \
            f"; apply #{cause}'s fix, not one of its own"
    same = finding.get("fix_of")
    if isinstance(same, int):
        return "fix: " + (why or f"the same as #{same}'s") + ", shown there"
    return None
