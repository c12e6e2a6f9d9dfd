"""What the listeners of a run add to its report, before it becomes a :class:`Report`.

The report is built by one path whatever probes ran: ``diagnose`` prepares a draft from the
session's own state, every listener fills its fields in (``Listener.contribute``, in listener
order), and the draft maps onto the report model. A probe's report fields live with the probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SnapshotDraft:
    """One reported step: per-component metrics and what was measured at that step."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    curvature: dict[str, Any] | None = None
    attention: dict[str, dict[str, Any]] | None = None
    graph: Any = None
    """The coupling graph (networkx) when curvature was measured at this step."""


@dataclass
class ReportDraft:
    """The listener-owned parts of a report."""

    components: list[dict[str, Any]]
    """The components as reported (read-only context for contributors)."""
    optimizers: list[dict[str, Any]]
    """Per optimizer, in creation order: fields added to its entry in ``run.optimizers``."""
    snapshots: dict[int, SnapshotDraft] = field(default_factory=dict)
    """The reported steps. The per-step statistics decide which steps there are; other
    listeners add to those."""
    run: dict[str, Any] = field(default_factory=dict)
    """Fields of ``run`` (``hvps``)."""
    sections: dict[str, Any] = field(default_factory=dict)
    """Top-level report lists by key (``numerics``, ``loss_inputs``, ``frozen``)."""
