"""Evaluate rules on a report's features and turn the hits into ranked findings.

Measure → decide → present: this module only decides. It reads the report's data (never the
live model), so a saved report can be re-judged, and fixtures are plain report-shaped data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hfault.findings import Finding, Fix, ranking_score
from hfault.fixes.kind import FixTarget
from hfault.fixes.registry import KINDS
from hfault.numbers import as_float
from hfault.rules.expr import ExprError, Series, as_bool
from hfault.rules.features import Features, Subject
from hfault.rules.rule import SEVERITIES, Rule, render


@dataclass
class EngineResult:
    findings: list[Finding]
    errors: list[str] = field(default_factory=list)
    """Rules that could not be evaluated (a user rule's runtime type error): reported as notes."""


def fingerprint(rule_id: str, component: str | None, script: str) -> str:
    """Stable across runs: rule, component and script only (no step, no values)."""
    return hashlib.sha256(f"{rule_id}\0{component or ''}\0{script}".encode()).hexdigest()[:32]


def evaluate(
    report: Mapping[str, Any],
    rules: Sequence[Rule],
    graph_paths: Mapping[str, str] | None = None,
) -> EngineResult:
    features = Features(report, graph_paths)
    result = EngineResult([])
    fired: dict[tuple[str, str | None], set[Any]] = {}  # -> the phases it fired in
    pending: list[tuple[Rule, Finding, Any, bool]] = []
    for rule in rules:
        for subject in features.subjects(rule.scope, rule.reads()):
            try:
                hit = _apply(rule, subject, features)
            except ExprError as exc:
                result.errors.append(f"rule {rule.id} ({rule.path.name}) on {subject.key}: {exc}")
                break
            if hit is not None:
                finding, shared = hit
                phase = subject.features.get("phase")
                pending.append((rule, finding, phase, shared))
                fired.setdefault((rule.id, finding.component), set()).add(phase)
    groups: dict[tuple[str, Any], list[Finding]] = {}
    for rule, finding, phase, shared in pending:
        if any(_suppresses(fired.get((other, finding.component)), phase)
               for other in rule.suppressed_by):
            continue
        if shared:
            group = groups.setdefault((rule.id, phase), [])
            group.append(finding)
            if len(group) > 1:
                continue
        result.findings.append(finding)
    for group in groups.values():
        if len(group) > 1:
            kept = merge_shared(group)
            result.findings[result.findings.index(group[0])] = kept
    return result


def merge_shared(group: Sequence[Finding]) -> Finding:
    """One finding for a rule's findings whose fix is one change for all of them (a ``shared``
    fix: the common input of several attention modules, not each module): the strongest keeps
    its message and fix, and names the others (``related``, ``evidence.also``). Several
    warnings that one edit removes read as several faults, and a user fixes the first only to
    meet the rest."""
    kept, *others = sorted(group, key=Finding.sort_key)
    names = [f.component for f in others if f.component and f.component != kept.component]
    if not names:
        return kept
    related = [*kept.related]
    for f in others:
        related += [n for n in (f.component, *f.related) if n and n != kept.component]
    fix = kept.fix
    if fix is not None:
        fix = Fix(f"{fix.summary} The same holds for {', '.join(names)}: one change fixes all "
                  f"{len(names) + 1}.", fix.values, fix.snippet)
    return replace(kept, message=f"{kept.message}; the same in {', '.join(names)}",
                   evidence={**kept.evidence, "also": names}, fix=fix,
                   related=list(dict.fromkeys(related)))


def _suppresses(phases: set[Any] | None, phase: Any) -> bool:
    """Whether a rule that fired in ``phases`` suppresses a finding of ``phase``: in the same
    phase, or where either is not a phase's (None)."""
    if not phases:
        return False
    return phase is None or None in phases or phase in phases


def _apply(rule: Rule, subject: Subject, features: Features) -> tuple[Finding, bool] | None:
    """The rule's finding on ``subject`` (None when its condition does not hold), and whether
    the fix it took is ``shared``."""
    env: dict[str, Any] = {**subject.features, **rule.param_values()}
    evidence: dict[str, Any] = {}
    for name, expr in rule.evidence.items():  # first: the condition may read evidence
        evidence[name] = env[name] = expr(env)
    if not as_bool(rule.condition(env)):
        return None
    severity = rule.severity
    for level in SEVERITIES:  # the most severe escalation that holds wins
        escalate = rule.escalate.get(level)
        if escalate is not None and as_bool(escalate(env), f"escalate.{level}"):
            severity = level
            break
    component = _scalar(rule.component(env)) if rule.component else subject.component
    step = _scalar(rule.step(env)) if rule.step else _scalar(evidence.get("step"))
    if step is None:
        step = _last_step(env)
    score = as_float(_scalar(rule.score(env))) if rule.score else 1.0
    confidence = as_float(_scalar(rule.confidence(env))) if rule.confidence else 1.0
    related = _names(rule.related(env)) if rule.related else []
    env.update(component=component, step=step)
    fix, at_optimizer, shared = _fix(rule, env, component, features)
    phase = subject.features.get("phase")
    comp = features.by_name.get(component or "")
    if comp is None and component:
        # An attention module named as the component: its projections' source is its class.
        comp = next((c for c in features.components if c.get("attention") == component
                     and c.get("source")), None)
    location = None
    if at_optimizer:
        location = _optimizer_source(features.report, comp)
    if location is None and comp and comp.get("source"):
        location = {"path": _display_path(comp["source"]["file"]), "line": comp["source"]["line"]}
    run = features.report.get("run", {})
    return Finding(
        rule=rule.id,
        name=rule.name,
        severity=severity,
        message=render(rule.message, env) + (f" ({subject.key})" if phase is not None else ""),
        component=component,
        step=int(step) if isinstance(step, (int, float)) and math.isfinite(step) else None,
        evidence={**({"metric": rule.metric} if rule.metric else {}),
                  **{k: _jsonable(v) for k, v in evidence.items()},
                  **({"phase": phase} if phase is not None else {})},
        fix=fix,
        score=ranking_score(score, confidence),
        location=location,
        fingerprint=fingerprint(rule.id, component if phase is None else f"phase {phase}",
                                str(run.get("script", ""))),
        related=[r for r in related if r != component],
    ), shared


def _fix(rule: Rule, env: dict[str, Any], component: str | None,
         features: Features) -> tuple[Fix | None, bool, bool]:
    """The first applicable fix template, filled in by its kind; whether the fix is written
    at the optimizer's construction (the finding's location); and whether it is ``shared``."""
    target: FixTarget | None = None
    for template in rule.fixes:
        if template.when is not None and not as_bool(template.when(env), "fix condition"):
            continue
        values = {k: _jsonable(expr(env)) for k, expr in template.values.items()}
        kind = KINDS[template.kind]
        fields = {k: _scalar(expr(env)) for k, expr in template.fields.items()}
        target = target or _target(features, component)
        filled = kind.fill(fields, target)
        if filled is None:
            continue  # the kind cannot be filled in here: fall through to the next template
        own, snippet = filled
        values = {**own, **values}
        text_env = {**env, **values}
        if snippet is None and template.snippet:
            snippet = render(template.snippet, text_env)
        return (Fix(render(template.summary, text_env), values, snippet), kind.at_optimizer,
                template.shared)
    return None, False, False


def _target(features: Features, component: str | None) -> FixTarget:
    """The report data a fix kind reads: the component, its last learning rate, its optimizer."""
    comp = features.by_name.get(component or "")
    if comp is None:
        return FixTarget()
    lr_series = features.component_features(comp["name"]).get("lr")
    lr = _scalar(lr_series.present()[-1][1] if isinstance(lr_series, Series)
                 and lr_series.present() else None)
    script = features.report.get("run", {}).get("script")
    return FixTarget(comp, lr, _optimizer_of(features.report, comp),
                     script if isinstance(script, str) else None)


def _optimizer_of(report: Mapping[str, Any], comp: Mapping[str, Any] | None) -> dict[str, Any]:
    """The report's record of the optimizer training ``comp`` ({} when unknown)."""
    optimizers = report.get("run", {}).get("optimizers") or []
    index = (comp or {}).get("optimizer", 0) or 0
    return optimizers[index] if index < len(optimizers) else {}


def _optimizer_source(report: Mapping[str, Any], comp: Mapping[str, Any] | None) -> Any:
    src = _optimizer_of(report, comp).get("source")
    if src:
        return {"path": _display_path(src["file"]), "line": src["line"]}
    return None


def _display_path(path: str) -> str:
    """Relative to the working directory when inside it, as editors and code scanning expect."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


def _last_step(env: Mapping[str, Any]) -> Any:
    steps = env.get("step")
    if isinstance(steps, Series) and steps.values:
        return steps.values[-1]
    return None


def _scalar(value: Any) -> Any:
    if isinstance(value, Series):
        raise ExprError("expected a single value, got a series")
    return value


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    raise ExprError("'related' must give a name or a list of names")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Series):
        return [[s, v] for s, v in value.present()]
    return value
