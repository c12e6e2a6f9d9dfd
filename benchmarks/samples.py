"""The sample-program manifest and how a report is scored against it.

Shared by ``benchmarks/accuracy.py`` and ``tests/test_samples.py`` so that the benchmark and the
test suite agree on what "detected" and "localized" mean.

- **detected**: the report's verdict is not ``healthy`` (some warning or error finding).
- **localized at k**: one of the first ``k`` distinct components named by the ranked findings is
  the faulty component: the same module, a part of it (a slice of a fused tensor, a child
  module), or the module directly enclosing it (the attention module of a faulty projection).
- **false alarm**: an error-severity finding on a healthy program.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_programs"
MANIFEST = SAMPLES / "expected.toml"


@dataclass(frozen=True)
class Program:
    """One ``[programs.NAME]`` entry with the settings it is diagnosed with."""

    name: str
    family: str
    healthy: bool
    expected_verdict: str
    fault_component: str | None
    fault_components: tuple[str, ...]
    localized: bool
    bug: str
    symptom: str
    max_steps: int
    args: tuple[str, ...] = field(default=())
    options: tuple[str, ...] = field(default=())
    """Extra ``hfault diagnose`` options (``--at``, ``--budget``...)."""
    known_miss: str = ""
    """Why hfault does not (yet) catch this fault; empty when it should."""
    expect_rule: str = ""
    """A rule that must fire (with ``step_between``: its earliest step in that range)."""
    step_between: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return SAMPLES / f"{self.name}.py"

    @property
    def targets(self) -> tuple[str, ...]:
        names = set(self.fault_components)
        if self.fault_component and self.fault_component != "data":
            names.add(self.fault_component)
        return tuple(sorted(names))


def load_programs(manifest: Path = MANIFEST) -> list[Program]:
    """Every program of the manifest, in file order."""
    data = tomllib.loads(manifest.read_text())
    out = []
    for name, entry in data["programs"].items():
        diag = entry.get("diagnose", {})
        out.append(Program(
            name=name,
            family=entry["family"],
            healthy=bool(entry.get("healthy", False)),
            expected_verdict=entry["expected_verdict"],
            fault_component=entry.get("fault_component"),
            fault_components=tuple(entry.get("fault_components", ())),
            localized=bool(entry.get("localized", not entry.get("healthy", False))),
            bug=entry.get("bug", ""),
            symptom=entry.get("symptom", ""),
            max_steps=int(diag.get("max_steps", 100)),
            args=tuple(diag.get("args", ())),
            options=tuple(diag.get("options", ())),
            known_miss=diag.get("known_miss", ""),
            expect_rule=diag.get("expect_rule", ""),
            step_between=tuple(diag["step_between"]) if "step_between" in diag else None,
        ))
    return out


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer + ".") or inner.startswith(outer + "[")


def matches(component: str | None, targets: tuple[str, ...]) -> bool:
    """Whether a finding's component names the fault: the target, a part of it, or its parent."""
    if not component:
        return False
    for target in targets:
        if _within(component, target):
            return True
        parent = target.rpartition(".")[0]
        if parent and component == parent:
            return True
    return False


def ranked_components(report: dict[str, Any]) -> list[str]:
    """Distinct components in the order the ranked findings name them (run-level findings,
    which name none, are skipped)."""
    seen: list[str] = []
    for finding in report.get("findings", []):
        name = finding.get("component")
        if name and name not in seen:
            seen.append(name)
    return seen


@dataclass
class Score:
    """How one report fares against its program's expectation."""

    program: str
    verdict: str
    detected: bool
    top1: bool | None
    top3: bool | None
    false_alarm: bool | None
    first: str | None
    rank: int | None

    @property
    def passed(self) -> bool:
        """The test-suite criterion: healthy → no error finding; faulty → detected and, when the
        fault is in a component, that component ranked first."""
        if self.false_alarm is not None:
            return not self.false_alarm
        return self.detected and self.top1 is not False


def score(program: Program, report: dict[str, Any]) -> Score:
    verdict = report["summary"]["verdict"]
    comps = ranked_components(report)
    first = comps[0] if comps else None
    if program.healthy:
        errors = [f for f in report.get("findings", []) if f["severity"] == "error"]
        return Score(program.name, verdict, verdict != "healthy", None, None, bool(errors),
                     first, None)
    rank = next((i + 1 for i, c in enumerate(comps) if matches(c, program.targets)), None)
    top1 = top3 = None
    if program.localized:
        top1 = rank == 1
        top3 = rank is not None and rank <= 3
    return Score(program.name, verdict, verdict in ("suspicious", "faulty", "crashed"), top1,
                 top3, None, first, rank)
