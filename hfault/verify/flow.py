"""The ``--verify-fix`` flow: diagnose, plan the mechanical fixes, rerun the script with them
applied and compare. The rerun matches the first run: same script arguments, ``--max-steps``,
snapshot schedule (so the same steps are measured), curvature settings and rules; the process
state a script can change (RNG states, default dtype, grad mode, the modules it imported from its
folder) is restored first (``capture.rerun``), so an unseeded script replays the same random
stream too. ``--verify-steps N`` sets the horizon of the comparison instead (:class:`Horizon`):
both sides train N steps, the first run where it already did, else a rerun without fixes."""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hfault.capture.manual_steps import is_hand_written
from hfault.capture.process_state import ProcessState
from hfault.capture.rerun import rerun
from hfault.capture.session import CaptureState
from hfault.diagnose import DiagnoseOptions, Diagnosis, build_report, capture_session, diagnose
from hfault.fixes.kind import ALL_PARAMETERS, PlannedFix
from hfault.fixes.registry import KINDS
from hfault.verify.apply import FixApplier
from hfault.verify.compare import compare, not_applicable
from hfault.verify.lr_hold import from_snapshots
from hfault.verify.plan import plan_fixes


# ---------------------------------------------------------------- the whole flow
@dataclass
class Verification:
    first: Diagnosis
    data: dict[str, Any]
    """The first run's report dict, with ``verify_fix``."""
    after: Diagnosis | None = None

    @property
    def interrupted(self) -> bool:
        return self.first.outcome.interrupted or bool(
            self.after is not None and self.after.outcome.interrupted)


def _why_not(first: Diagnosis) -> str | None:
    if first.outcome.interrupted:
        return "interrupted: no rerun"
    if not first.trained:
        return "nothing to diagnose, nothing to verify"
    if is_hand_written(first.state.optimizers):
        return ("the script updates its parameters itself (no torch.optim optimizer): a fix is a "
                "change of its update code, made by hand")
    return None


def diagnose_and_verify(
    options: DiagnoseOptions,
    progress: Callable[[str], None] | None = None,
    steps: int | None = None,
) -> Verification:
    """Diagnose, then rerun with the mechanical fixes and compare (``verify_fix``) over
    ``steps`` optimizer steps (``--verify-steps``; None: the first run's own steps)."""
    process = ProcessState()
    first = diagnose(options)
    data = first.report.to_dict()
    reason = _why_not(first)
    plan, skipped = ([], []) if reason else plan_fixes(data, first.state)
    if reason or not plan:
        data["verify_fix"] = not_applicable(
            data, reason or "no finding has a fix that can be applied mechanically (a "
            "per-component learning rate or gradient clipping)", skipped)
        return Verification(first, data)
    return verify(options, first, data, plan, skipped, progress, steps, process)


def verify(
    options: DiagnoseOptions,
    first: Diagnosis,
    data: dict[str, Any],
    plan: list[PlannedFix],
    skipped: list[dict[str, Any]],
    progress: Callable[[str], None] | None = None,
    steps: int | None = None,
    process: ProcessState | None = None,
) -> Verification:
    """Rerun ``first``'s script with ``plan`` applied and compare with ``data`` (``first``'s
    report dict, which gets ``verify_fix``); ``process``: the process state saved before the
    first run (None: now, for a caller that has not changed it since)."""
    process = process or ProcessState()
    _release(first.state)
    horizon = Horizon.of(options, first, steps)
    before = data
    if horizon.baseline_rerun:
        if progress is not None:
            progress(f"rerunning {options.script} without fixes for the --verify-steps "
                     f"{steps} horizon (the baseline)")
        session = capture_session(horizon.options)
        outcome = rerun(options.script, options.argv, session, process)
        base = build_report(horizon.options, session, outcome)
        _release(session.state)
        if outcome.interrupted:
            data["verify_fix"] = not_applicable(
                data, f"the baseline rerun was interrupted (Ctrl-C) after {session.state.step} "
                "step(s): no verdict", skipped)
            return Verification(first, data, Diagnosis(base, outcome, session.state))
        before = base.to_dict()
    if progress is not None:
        progress(f"verifying {len(plan)} fix(es) by rerunning {options.script}: "
                 + "; ".join(_plan_text(f) for f in plan))
    applier = FixApplier(plan)
    session = capture_session(horizon.options)
    session.add(applier)
    outcome = rerun(options.script, options.argv, session, process)
    clip = applier.clip_record()
    applier.hold.results(options.script)
    applied = [*applier.applied, *([clip] if clip else [])]
    report = build_report(horizon.options, session, outcome)
    report.notes[:0] = [f"--verify-fix rerun: {_applied_text(f)}" for f in applied] + [
        f"--verify-fix rerun: {n}" for n in applier.notes] or [
        "--verify-fix rerun: no fix could be applied"]
    after = Diagnosis(report, outcome, session.state)
    after_data = report.to_dict()
    for fix in applier.applied:
        from_snapshots(fix, before, after_data, options.script)
    motivating = {(f["rule"], None if f["component"] == ALL_PARAMETERS else f["component"])
                  for f in applied}
    data["verify_fix"] = compare(before, after_data, applied, motivating,
                                 skipped=[*applier.failed, *skipped],
                                 notes=[*horizon.notes, *applier.notes])
    data["verify_fix"]["horizon"] = horizon.to_dict(before)
    error = outcome.error or {}
    split = any(g["new_group"] is not None for f in applier.applied for g in f["groups"])
    if (outcome.status == "crashed" and first.outcome.status != "crashed" and split
            and "lr_scheduler" in str(error.get("traceback", ""))):
        # Not the fix's fault: a scheduler given one value per original param group (a list of
        # lr_lambdas, OneCycleLR's max_lr list) cannot take the extra group.
        data["verify_fix"].update(
            verdict="not_applicable",
            summary="the param-group split cannot be applied to this script: its LR scheduler "
            f"raised {error.get('type')}: {error.get('message')} (per-group settings for the "
            "original groups only); apply the fix by hand")
    if outcome.interrupted:
        data["verify_fix"].update(
            verdict="not_applicable",
            summary=f"the rerun was interrupted (Ctrl-C) after {session.state.step} step(s): "
            "no verdict")
    return Verification(first, data, after)


@dataclass
class Horizon:
    """The optimizer steps both sides of the comparison train for. Without ``--verify-steps``,
    or when it changes nothing (the first run stopped at that very ``--max-steps``, or ended by
    itself within it), the first run is the baseline and the rerun repeats its settings. Else the
    first run covered other steps than the rerun will, so a rerun without fixes over the same
    ``--verify-steps`` (same snapshot schedule, same batches) is the baseline: the two sides of
    the comparison always trained for the same steps."""

    options: DiagnoseOptions
    """The settings of the rerun (and of the baseline rerun)."""
    steps: int | None
    baseline_rerun: bool
    notes: list[str]

    @classmethod
    def of(cls, options: DiagnoseOptions, first: Diagnosis, steps: int | None) -> Horizon:
        if steps is None or options.max_steps == steps:
            return cls(options, steps, False, [])
        if first.outcome.status == "completed" and first.state.step <= steps:
            return cls(options, steps, False, [
                f"the script ended by itself after {first.state.step} step(s), within "
                f"--verify-steps {steps}: the first run is the baseline"])
        rerun_options = replace(options, max_steps=steps,
                                schedule=replace(options.schedule, max_steps=steps))
        return cls(rerun_options, steps, True, [
            f"--verify-steps {steps}: the first run trained {first.state.step} step(s), so a "
            "rerun without fixes over the same steps is the baseline (verify_fix.loss.before, "
            "the findings' change)"])

    def to_dict(self, before: Mapping[str, Any]) -> dict[str, Any]:
        run = before.get("run", {})
        return {"verify_steps": self.steps, "steps": run.get("steps"),
                "baseline": "rerun" if self.baseline_rerun else "first_run"}


def _release(state: CaptureState) -> None:
    """Drop hfault's references to the first run's model and optimizer state before the rerun
    builds its own, so that the rerun does not need twice the (GPU) memory. The report is
    already built; the script's objects are dead, only hfault still held them."""
    for opt in state.optimizers:
        opt.state.clear()
        opt.param_groups.clear()
    state.modules.clear()
    state.cross_modules.clear()
    state.components.clear()
    gc.collect()


def _applied_text(fix: Mapping[str, Any]) -> str:
    return f"{KINDS[fix['kind']].applied_text(fix)}; {fix['note']}"


def _plan_text(fix: PlannedFix) -> str:
    return KINDS[fix.kind].plan_text(fix)
