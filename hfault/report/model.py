"""Typed report objects, shared by every renderer. They know nothing of rich or JSON files."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from hfault.graph import graph_to_json

SCHEMA_VERSION = "1.0"
SEVERITIES = ("error", "warning", "info")
SEVERITY_ORDER = {s: i for i, s in enumerate(SEVERITIES)}


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
    rank: int = 0
    location: dict[str, Any] | None = None
    """File and line to jump to: the component's module class, or the optimizer for LR fixes."""
    fingerprint: str = ""
    """Hash of rule, component and script: the same fault keeps it across runs (SARIF dedup)."""
    related: list[str] = field(default_factory=list)
    """Other components the finding involves (the far end of a coupling, a propagation path)."""

    def sort_key(self) -> tuple[int, float, str, str]:
        return (SEVERITY_ORDER[self.severity], -self.score, self.component or "", self.rule)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "name": self.name,
            "severity": self.severity,
            "rank": self.rank,
            "score": round(self.score, 6),
            "component": self.component,
            "step": self.step,
            "message": self.message,
            "evidence": _clean(self.evidence),
            "fix": self.fix.to_dict() if self.fix else None,
            "location": self.location,
            "fingerprint": self.fingerprint,
            "related": self.related,
        }


def rank(findings: list[Finding]) -> list[Finding]:
    """Severity first, then how far past its threshold, then component name: deterministic."""
    ordered = sorted(findings, key=Finding.sort_key)
    for i, finding in enumerate(ordered, start=1):
        finding.rank = i
    return ordered


@dataclass
class Snapshot:
    step: int
    loss: float | None
    metrics: dict[str, dict[str, Any]]
    curvature: dict[str, Any] | None = None
    """Cost, errors and the coupling graph of this step's second-order measurement."""
    attention: dict[str, dict[str, Any]] | None = None
    """Per attention module: entropy of its weights and largest pre-softmax logit."""
    graph: nx.Graph | None = field(default=None, repr=False)
    """The coupling graph (networkx) when curvature was measured at this step."""

    def to_dict(self) -> dict[str, Any]:
        out = {"step": self.step, "loss": _num(self.loss), "metrics": _clean(self.metrics)}
        if self.curvature is not None:
            out["curvature"] = _clean(self.curvature)
        if self.attention is not None:
            out["attention"] = _clean(self.attention)
        if self.graph is not None:
            out["graph"] = _clean(graph_to_json(self.graph))
        return out


@dataclass
class RunInfo:
    script: str
    argv: list[str]
    status: str
    error: dict[str, Any] | None
    steps: int
    seconds: float
    device: str
    torch: str
    python: str
    backward_calls: int = 0
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    max_steps: int | None = None
    schedule: str = "auto"
    hvps: int = 0
    curvature: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "script": self.script,
            "argv": self.argv,
            "status": self.status,
            "error": self.error,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "torch": self.torch,
            "python": self.python,
            "backward_calls": self.backward_calls,
            "optimizers": self.optimizers,
            "max_steps": self.max_steps,
            "schedule": self.schedule,
            "curvature": self.curvature,
            "hvps": self.hvps,
        }


@dataclass
class Report:
    run: RunInfo
    components: list[dict[str, Any]]
    snapshots: list[Snapshot]
    losses: list[tuple[int, float]]
    findings: list[Finding]
    numerics: list[dict[str, Any]] = field(default_factory=list)
    loss_inputs: list[dict[str, Any]] = field(default_factory=list)
    frozen: list[dict[str, Any]] = field(default_factory=list)
    """Modules whose parameters all have requires_grad off, in models that otherwise train."""
    notes: list[str] = field(default_factory=list)
    tool_version: str = "0.1.0"
    rules: list[dict[str, Any]] = field(default_factory=list)
    """The rules applied, with the thresholds used (so a report says what it was judged by)."""
    propagation: dict[str, Any] | None = None
    """Hubs, strongest paths from the flagged components, communities: the last coupling graph."""

    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def verdict(self) -> str:
        if self.run.status == "crashed":
            head = "crashed"
        elif self.run.steps == 0 and not any(f.severity != "info" for f in self.findings):
            head = "not_diagnosed"  # no optimizer step was seen: never a "healthy" banner
        elif not self.findings or all(f.severity == "info" for f in self.findings):
            head = "healthy"
        elif any(f.severity == "error" for f in self.findings):
            head = "faulty"
        else:
            head = "suspicious"
        return head

    def summary(self) -> dict[str, Any]:
        top = self.findings[0] if self.findings else None
        return {
            "verdict": self.verdict(),
            "counts": self.counts(),
            "top_finding": top.rule if top else None,
            "top_component": top.component if top else None,
            "headline": top.message if top else "no findings",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "hfault", "version": self.tool_version},
            "run": self.run.to_dict(),
            "components": self.components,
            "snapshots": [s.to_dict() for s in self.snapshots],
            "timeline": {"loss": [{"step": s, "loss": _num(v)} for s, v in self.losses]},
            "numerics": self.numerics,
            "loss_inputs": self.loss_inputs,
            "frozen": self.frozen,
            "findings": [f.to_dict() for f in self.findings],
            "propagation": _clean(self.propagation),
            "rules": [
                {k: r[k] for k in ("id", "name", "severity", "category", "summary", "params")}
                for r in self.rules
            ],
            "notes": self.notes,
            "summary": self.summary(),
        }


def _num(x: Any) -> Any:
    """JSON has no NaN/Inf: encode them as the strings "nan", "inf", "-inf"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return x


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _num(obj)
