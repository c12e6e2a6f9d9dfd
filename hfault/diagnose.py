"""The ``diagnose`` pipeline: capture -> components -> checks -> report (no presentation here)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hfault import __version__
from hfault.capture.contribution import ReportDraft
from hfault.capture.distributed import World
from hfault.capture.manual_steps import ManualSteps
from hfault.capture.runner import RunOutcome, run_script
from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession, CaptureState
from hfault.fixes.dedupe import relate
from hfault.graph.analysis import output_nodes, propagation_summary, strongest_path
from hfault.numbers import as_float
from hfault.probes.curvature_probe import CurvatureConfig
from hfault.probes.registry import diagnosis_probes
from hfault.report.build import derive_metrics
from hfault.report.model import Report, RunInfo, Snapshot, rank
from hfault.report.ranks import merge_ranks, rank_facts
from hfault.rules import Rule, evaluate, load_rules


@dataclass
class DiagnoseOptions:
    script: Path
    argv: list[str] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    max_steps: int | None = None
    nan_watch: bool = True
    curvature: CurvatureConfig | None = field(default_factory=CurvatureConfig)
    """None: first-order only (``--no-curvature``)."""
    rules: list[Rule] | None = None
    """The rules to apply; None: every built-in rule with its default thresholds."""
    world: World | None = None
    """Under torchrun: this process's rank; the report then merges every rank's facts on rank
    0 (``hfault.capture.distributed``). None: a single process."""
    lr: float | None = None
    """The learning rate of a hand-written update loop (``--lr``): curvature needs it; a script
    with a torch.optim optimizer ignores it (``capture.manual_steps``)."""
    op_watch: bool = False
    """Watch every torch op from the first step for the first one that makes a NaN/Inf from
    finite inputs (``--nan-ops``); otherwise only from the first non-finite value the modules
    do not explain (``probes.op_watch``)."""


@dataclass
class Diagnosis:
    report: Report
    outcome: RunOutcome
    state: CaptureState

    @property
    def trained(self) -> bool:
        """Whether there was anything to diagnose: an optimizer (or a hand-written update that
        changed the parameters after a backward: ``capture.manual_steps``) and a backward."""
        return bool(self.state.optimizers) and self.state.backward_calls > 0


def capture_session(options: DiagnoseOptions) -> CaptureSession:
    """A session with the diagnosis probes, as ``options`` configure them."""
    session = CaptureSession(options.schedule, options.max_steps)
    session.add(ManualSteps(session, options.lr))
    session.add_all(
        diagnosis_probes(session, nan_watch=options.nan_watch, curvature=options.curvature,
                         op_watch=options.op_watch)
    )
    return session


def diagnose(options: DiagnoseOptions) -> Diagnosis:
    session = capture_session(options)
    outcome = run_script(options.script, options.argv, session)
    return Diagnosis(build_report(options, session, outcome), outcome, session.state)


def build_report(options: DiagnoseOptions, session: CaptureSession, outcome: RunOutcome) -> Report:
    """The judged report of a run; under torchrun, with the other ranks' facts on rank 0 (every
    rank takes part: it is where the ranks meet, after the script's training)."""
    report = assemble_report(options, session, outcome)
    world = options.world
    if world is not None:
        ended_badly = outcome.status == "crashed" or outcome.interrupted
        gathered = world.gather(rank_facts(report, world.rank), crashed=ended_badly)
        merge_ranks(report, world, gathered)
    judge(report, options.rules if options.rules is not None else load_rules())
    return report


def assemble_report(
    options: DiagnoseOptions, session: CaptureSession, outcome: RunOutcome
) -> Report:
    """The report of a run's own measurements, before the rules judge it."""
    state = session.state
    draft = session.contribute_all(ReportDraft(
        components=[c.to_dict() for c in state.components],
        optimizers=[{} for _ in state.optimizers],
    ))
    snapshots = [
        Snapshot(step, state.losses.get(step), part.metrics, part.curvature, part.attention,
                 part.graph)
        for step, part in sorted(draft.snapshots.items())
    ]
    losses = state.losses.items()
    if os.environ.get("HFAULT_DEBUG_RAISE") == "report":
        raise RuntimeError("HFAULT_DEBUG_RAISE=report: simulated internal error")
    notes = list(state.notes)
    if outcome.terminated:
        notes.append("stopped by SIGTERM (torchrun stops every rank when one fails): the report "
                     "covers the steps before it")
    elif outcome.interrupted:
        notes.append("interrupted by Ctrl-C: the report covers the steps before it")
    if state.losses.sampled:
        record = state.losses.describe()
        notes.append(f"the loss timeline keeps {record['kept']:,} of {record['steps']:,} steps "
                     f"(every {record['stride']}th, the measured steps and the first non-finite "
                     "loss: loss_record)")
    if not state.optimizers:
        changed = " and changed no parameter after its backward()" if state.backward_calls else ""
        notes.append(f"the script created no torch.optim optimizer{changed}: nothing to diagnose")
    elif state.backward_calls == 0:
        notes.append("the script never called backward(): nothing to diagnose")
    run = RunInfo(
        script=str(options.script),
        argv=list(options.argv),
        status=outcome.status,
        error=outcome.error,
        steps=state.step,
        seconds=session.elapsed(),
        device=state.device or "cpu",
        torch=torch.__version__,
        python=platform.python_version(),
        backward_calls=state.backward_calls,
        optimizers=[
            {
                "index": i,
                "class": type(o).__name__,
                "param_groups": len(o.param_groups),
                "lr": as_float(o.defaults.get("lr")),
                "source": state.optimizer_sources[i] if i < len(state.optimizer_sources) else None,
                **extra,
            }
            for i, (o, extra) in enumerate(zip(state.optimizers, draft.optimizers, strict=True))
        ],
        max_steps=options.max_steps,
        schedule=options.schedule.describe(),
        curvature=options.curvature is not None,
        exit_code=outcome.exit_code,
        **draft.run,
    )
    return Report(
        run=run,
        components=[c.to_dict() for c in state.components],
        snapshots=snapshots,
        losses=losses,
        phases=state.phases.report(run.optimizers),
        loss_record=state.losses.describe(),
        findings=[],
        notes=notes,
        tool_version=__version__,
        **draft.sections,
    )


def judge(report: Report, rules: list[Rule]) -> None:
    """Apply the rules to a report's data: ranked findings, the propagation of the flagged
    components through the last coupling graph, and which findings are consequences of others
    or share their fix."""
    for snapshot in report.snapshots:  # stored once: the rules and the renderers read them
        derive_metrics(snapshot.metrics)
    graph = next((s.graph for s in reversed(report.snapshots) if s.graph is not None), None)
    paths: dict[str, str] = {}
    if graph is not None:
        targets = output_nodes(graph)
        for node in graph.nodes:
            found = strongest_path(graph, node, targets)
            if found is not None:
                paths[node] = " → ".join(found["path"])
    result = evaluate(report.to_dict(), rules, paths)
    report.findings = rank(result.findings)
    report.notes.extend(result.errors)
    report.rules = [r.to_catalog() for r in rules]
    if graph is not None:
        flagged = list(dict.fromkeys(f.component for f in report.findings if f.component))
        step = next(s.step for s in reversed(report.snapshots) if s.graph is graph)
        report.propagation = {"step": step, **propagation_summary(graph, flagged)}
    relate(report.findings, report.to_dict())  # one fix per root cause (presentation only)
