"""Typed report objects, shared by every renderer. They know nothing of rich or JSON files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from hfault.findings import SEVERITIES, Finding, Fix, rank
from hfault.graph.build import graph_to_json
from hfault.numbers import clean, encode

SCHEMA_VERSION = "1.0"

__all__ = ["SCHEMA_VERSION", "Finding", "Fix", "Report", "RunInfo", "Snapshot", "rank"]


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
        out = {"step": self.step, "loss": encode(self.loss), "metrics": clean(self.metrics)}
        if self.curvature is not None:
            out["curvature"] = clean(self.curvature)
        if self.attention is not None:
            out["attention"] = clean(self.attention)
        if self.graph is not None:
            out["graph"] = clean(graph_to_json(self.graph))
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
    exit_code: int | None = None
    """The code the script passed to ``os._exit`` (status ``exited``)."""
    world_size: int | None = None
    """Under torchrun: the number of processes (None: a single process)."""
    rank: int | None = None
    """Under torchrun: the rank whose report this is (0: the others only hand their facts)."""
    ranks: list[dict[str, Any]] | None = None
    """Under torchrun, on rank 0: how each rank's run ended (``hfault.report.ranks``)."""
    ranks_via: str | None = None
    """How rank 0 got the other ranks' facts: ``process group`` or ``files``."""
    steps_from: str = "optimizer"
    """How steps were counted: ``optimizer`` (``optimizer.step()`` calls) or ``backward`` (a
    hand-written update: the backward calls between two parameter changes)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
            "steps_from": self.steps_from,
        }
        optional = {"exit_code": self.exit_code, "world_size": self.world_size,
                    "rank": self.rank, "ranks": self.ranks, "ranks_via": self.ranks_via}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


@dataclass
class Report:
    run: RunInfo
    components: list[dict[str, Any]]
    snapshots: list[Snapshot]
    losses: list[tuple[int, float]]
    findings: list[Finding]
    phases: list[dict[str, Any]] = field(default_factory=list)
    """Per phase (``hfault.capture.phases``): its optimizers, steps and losses."""
    loss_record: dict[str, int] | None = None
    """How many steps ``losses`` keeps of those seen (``hfault.capture.loss_record``)."""
    numerics: list[dict[str, Any]] = field(default_factory=list)
    loss_inputs: list[dict[str, Any]] = field(default_factory=list)
    frozen: list[dict[str, Any]] = field(default_factory=list)
    """Modules whose parameters all have requires_grad off, in models that otherwise train."""
    label_fit: list[dict[str, Any]] = field(default_factory=list)
    next_token: list[dict[str, Any]] = field(default_factory=list)
    """Per measured step: the share of the loss's targets that are the input one token later."""
    validation: list[list[float]] = field(default_factory=list)
    """[step, loss] of every validation loss the script printed."""
    sample_mixing: dict[str, Any] | None = None
    """Along which leading sizes each tested module mixes, at the first measured step."""
    param_reach: dict[str, Any] | None = None
    """Whether the components without a gradient at the first measured step reach the loss."""
    notes: list[str] = field(default_factory=list)
    tool_version: str = "0.1.0"
    rules: list[dict[str, Any]] = field(default_factory=list)
    """The rules applied, with the thresholds used (so a report says what it was judged by)."""
    propagation: dict[str, Any] | None = None
    """Hubs, strongest paths from the flagged components, communities: the last coupling graph."""

    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def verdict(self) -> str:
        ranks = self.run.ranks or []  # under torchrun: a crash of any rank ends the run
        if self.run.status == "crashed" or any(r.get("status") == "crashed" for r in ranks):
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
            "timeline": {"loss": [{"step": s, "loss": encode(v)} for s, v in self.losses]},
            "numerics": self.numerics,
            "loss_inputs": self.loss_inputs,
            "frozen": self.frozen,
            "label_fit": clean(self.label_fit),
            "next_token": clean(self.next_token),
            "validation": clean(self.validation),
            "sample_mixing": clean(self.sample_mixing),
            "param_reach": clean(self.param_reach),
            "findings": [f.to_dict() for f in self.findings],
            "propagation": clean(self.propagation),
            "rules": [
                {k: r[k] for k in ("id", "name", "severity", "category", "summary", "params")}
                for r in self.rules
            ],
            "notes": self.notes,
            "summary": self.summary(),
            "phases": self.phases,
            "loss_record": self.loss_record,
        }
