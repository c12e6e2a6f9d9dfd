"""The domain model every stage shares: a finding (one diagnosed problem, ranked) and its fix.
Rules produce them, the report carries them, renderers and CI read them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hfault.numbers import clean, encode

SEVERITIES = ("error", "warning", "info")
SEVERITY_ORDER = {s: i for i, s in enumerate(SEVERITIES)}


def any_at_or_above(findings: Iterable[Mapping[str, Any]], severity: str) -> bool:
    """Whether a report finding is at least as severe as ``severity`` (``--fail-on``)."""
    limit = SEVERITY_ORDER[severity]
    return any(SEVERITY_ORDER[f["severity"]] <= limit for f in findings)


@dataclass
class Fix:
    """A concrete remedy: a sentence, numbers a person can apply, and a ready code snippet."""

    summary: str
    values: dict[str, Any] = field(default_factory=dict)
    snippet: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "values": self.values, "snippet": self.snippet}


@dataclass
class Finding:
    """One diagnosed problem, ranked among the others."""

    rule: str
    name: str
    severity: str
    message: str
    component: str | None = None
    step: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: Fix | None = None
    score: float = 0.0
    """How far past its threshold (:func:`ranking_score`); NaN when the rule could not say."""
    rank: int = 0
    location: dict[str, Any] | None = None
    """File and line to jump to: the component's module class, or the optimizer for LR fixes."""
    fingerprint: str = ""
    """Hash of rule, component and script: the same fault keeps it across runs (SARIF dedup)."""
    related: list[str] = field(default_factory=list)
    """Other components the finding involves (the far end of a coupling, a propagation path)."""
    consequence_of: int | None = None
    """Rank of the higher-ranked finding the report shows this one to be a consequence of (its
    fix is that finding's; :mod:`hfault.fixes.dedupe`)."""
    fix_of: int | None = None
    """Rank of the higher-ranked finding whose identical fix this one shares (shown there)."""
    relation: str | None = None
    """Why: the relation recorded in the report (a coupling, a propagation path, the same fix)."""

    def sort_key(self) -> tuple[int, bool, float, str, str]:
        """Severity, then score (highest first; an unknown, NaN score after every known one of
        its severity), then component and rule: deterministic, NaN never compared."""
        unknown = math.isnan(self.score)
        return (SEVERITY_ORDER[self.severity], unknown, 0.0 if unknown else -self.score,
                self.component or "", self.rule)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "name": self.name,
            "severity": self.severity,
            "rank": self.rank,
            "score": encode(round(self.score, 6)),
            "component": self.component,
            "step": self.step,
            "message": self.message,
            "evidence": clean(self.evidence),
            "fix": self.fix.to_dict() if self.fix else None,
            "location": self.location,
            "fingerprint": self.fingerprint,
            "related": self.related,
            "consequence_of": self.consequence_of,
            "fix_of": self.fix_of,
            "relation": self.relation,
        }


def ranking_score(score: float | None, confidence: float | None = 1.0) -> float:
    """A finding's score: the rule's score (how far past its threshold, at least 0) × its
    confidence (clamped to [0, 1]); +inf ranks first. Missing or NaN in either is an unknown
    score, NaN: the rule fired but could not say how far past its threshold, so it ranks after
    every known score of its severity and the report says "nan", rather than a silent 0 that
    would tie it with findings measured to be barely past their threshold."""
    if score is None or confidence is None or math.isnan(score) or math.isnan(confidence):
        return math.nan
    weight = min(1.0, confidence)
    return max(0.0, score) * weight if weight > 0 else 0.0


def rank(findings: list[Finding]) -> list[Finding]:
    """Severity first, then how far past its threshold (:meth:`Finding.sort_key`), then
    component name: deterministic."""
    ordered = sorted(findings, key=Finding.sort_key)
    for i, finding in enumerate(ordered, start=1):
        finding.rank = i
    return ordered


