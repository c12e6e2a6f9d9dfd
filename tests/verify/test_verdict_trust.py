"""A ``--verify-fix`` verdict that can be trusted: a learning-rate fix the script overwrote gets
no verdict (the script assigns ``param_group["lr"]`` itself, as nanoGPT does), a fix that slows
training is ``worse`` even when its finding stops firing, and ``--verify-steps`` compares both
sides over the same steps. Real scripts, real reruns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hfault import ExitCode
from hfault.capture.hooks import Hooks
from hfault.capture.schedule import Schedule
from hfault.diagnose import DiagnoseOptions, diagnose
from hfault.verify import FixApplier, PlannedFix, plan_fixes
from hfault.verify.flow import verify
from hfault.verify.lr_hold import first_lr_assignment
from tests.conftest import SCRIPTS

pytestmark = pytest.mark.e2e  # runs real training scripts

ASSIGNED = SCRIPTS / "assigned_lr_train.py"
HEALTHY = SCRIPTS / "healthy_regression_train.py"


def _lower_lr_finding(component: str, factor: float) -> dict[str, Any]:
    return {"rule": "HF201", "component": component, "severity": "error", "score": 2.0,
            "rank": 1, "fix": {"summary": "", "snippet": None, "values": {
                "kind": "lower_lr", "component": component, "lr": 0.1, "new_lr": 0.1 * factor,
                "factor": factor}}}


def test_script_that_assigns_the_lr_gets_no_verdict(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("diagnose", "--curvature", str(ASSIGNED), "--select", "HF201", "--verify-fix",
                 "--quiet", "--", "--steps", "30")
    assert result.report is not None, result.stderr
    vf = result.report["verify_fix"]
    (fix,) = vf["fixes"]
    assert (fix["rule"], fix["component"], fix["kind"]) == ("HF201", "weight", "lower_lr")
    held = fix["in_effect"]
    # The script writes the schedule's LR into every group before the first step.
    assert held["held"] is False
    assert held["first_step_off"] == 1 and held["steps_off"] == held["steps_checked"] == 30
    assert held["reference"] == "param group 0"
    assert held["lr_seen"] == pytest.approx(1.2)
    assert held["lr_expected"] == pytest.approx(1.2 * fix["factor"])
    line = next(i for i, t in enumerate(ASSIGNED.read_text().splitlines(), 1)
                if 'param_group["lr"] = lr' in t)
    assert held["assigned_at"] == {"file": str(ASSIGNED), "line": line}
    assert vf["verdict"] == "not_applicable"
    assert vf["summary"].startswith("the fix was not in effect: from step 1")
    assert f"assigned_lr_train.py:{line}" in vf["summary"]
    assert "lr_scale" in vf["summary"]  # how to apply it by hand
    # Indeed nothing changed: both runs trained the same.
    assert vf["loss"]["before"] == vf["loss"]["after"]


def test_fix_that_holds_is_checked_at_every_step(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same script with the assignment removed: the split's LR holds, and a scheduler that
    scales every group keeps the ratio."""
    script = tmp_path / "scheduled.py"
    script.write_text(ASSIGNED.read_text().replace(
        "        for param_group in opt.param_groups:\n            param_group[\"lr\"] = lr\n",
        "").replace("    losses: list[float] = []\n",
                    "    sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)\n"
                    "    losses: list[float] = []\n").replace(
        "        opt.step()\n", "        opt.step()\n        sched.step()\n"))
    (tmp_path / "common.py").write_text((SCRIPTS / "common.py").read_text())
    result = cli("diagnose", "--curvature", str(script), "--select", "HF201", "--verify-fix",
                 "--quiet", "--", "--steps", "20")
    vf = result.report["verify_fix"]
    (fix,) = vf["fixes"]
    assert fix["in_effect"]["held"] is True, fix["in_effect"]
    assert fix["in_effect"]["steps_checked"] == 20 and fix["in_effect"]["first_step_off"] is None
    assert vf["verdict"] != "not_applicable", vf["summary"]


def test_whole_group_overwrite_is_caught_against_another_group() -> None:
    """A component that is its whole param group has no group it left: another group of the
    optimizer is the reference, by their LR ratio at construction."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    fix = PlannedFix("HF201", "1", "lower_lr", factor=0.1, optimizer=0, root="Sequential",
                     names=("1.weight", "1.bias"))
    applier = FixApplier([fix])
    with Hooks([applier]):
        opt = torch.optim.SGD([{"params": model[0].parameters()},
                               {"params": model[1].parameters(), "lr": 0.2}], lr=0.1)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.02)
        for step in range(4):
            if step == 2:  # the script's own assignment, as from a schedule
                for g in opt.param_groups:
                    g["lr"] = 0.05
            model(torch.ones(2, 4)).sum().backward()
            opt.step()
    applier.hold.results(Path(__file__))
    held = applier.applied[0]["in_effect"]
    assert (held["held"], held["first_step_off"], held["steps_off"]) == (False, 3, 2)
    assert held["lr_expected"] == pytest.approx(0.05 * 2 * 0.1) and held["lr_seen"] == 0.05
    assert held["reference"] == "param group 0"


def test_lr_assignment_search(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("# g['lr'] = 1\nif g['lr'] == 1:\n    pass\ng[\"lr\"] *= 0.5\n")
    assert first_lr_assignment(script) == {"file": str(script), "line": 4}
    script.write_text("x = 1\n")
    assert first_lr_assignment(script) is None


def test_fix_that_slows_training_is_worse_although_its_finding_is_gone() -> None:
    """A false lower_lr fix on a healthy model: the finding cannot fire in the rerun (it never
    fired), so a findings-led verdict would say fixed; the loss says the training got worse."""
    options = DiagnoseOptions(HEALTHY, ["--steps", "60"], Schedule(), None, True, None)
    first = diagnose(options)
    report = {"findings": [_lower_lr_finding("weight", 0.01)]}
    plan, skipped = plan_fixes(report, first.state)
    assert [f.component for f in plan] == ["weight"] and not skipped
    data = first.report.to_dict()
    assert not [f for f in data["findings"] if f["severity"] != "info"]  # healthy
    data["findings"] = report["findings"]  # as if the finding had fired
    vf = verify(options, first, data, plan, skipped).data["verify_fix"]
    (fix,) = vf["fixes"]
    assert fix["in_effect"]["held"] is True
    motivating = [d for d in vf["findings"] if d["motivating"]]
    assert [(d["rule"], d["component"], d["status"]) for d in motivating] == [
        ("HF201", "weight", "gone")]
    assert vf["final_loss"]["change"] == "worse"
    assert vf["final_loss"]["after"] > vf["final_loss"]["before"] + vf["final_loss"]["tolerance"]
    assert vf["verdict"] == "worse", vf["summary"]
    assert vf["summary"].startswith("the final loss")
    assert "no longer fires, but the training is worse" in vf["summary"]


def test_a_printed_validation_loss_leads_the_verdict() -> None:
    """The same false fix on a script that prints its validation loss: the report records it at
    the steps it was printed, and the verdict is led by it."""
    options = DiagnoseOptions(HEALTHY, ["--steps", "60", "--print-val", "20"], Schedule(), None,
                              True, None)
    first = diagnose(options)
    data = first.report.to_dict()
    assert [step for step, _ in data["validation"]] == [20, 40, 60]
    data["findings"] = [_lower_lr_finding("weight", 0.01)]
    plan, skipped = plan_fixes(data, first.state)
    vf = verify(options, first, data, plan, skipped).data["verify_fix"]
    val = vf["validation"]
    assert val["step"] == 60 and val["change"] == "worse", val
    assert val["after"] > 1.05 * val["before"]
    assert vf["verdict"] == "worse"
    assert vf["summary"].startswith("the validation loss rose by more than 5%"), vf["summary"]


def test_verify_steps_with_a_baseline_rerun(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "diverge.py"
    script.write_text(ASSIGNED.read_text().replace(
        "        for param_group in opt.param_groups:\n            param_group[\"lr\"] = lr\n",
        ""))
    (tmp_path / "common.py").write_text((SCRIPTS / "common.py").read_text())
    result = cli("diagnose", str(script), "--select", "HF010", "--max-steps", "20",
                 "--verify-fix", "--verify-steps", "30", "--quiet", "--", "--steps", "40")
    report = result.report
    assert report is not None
    assert report["run"]["steps"] == 20  # the diagnosis itself is unchanged
    assert len(report["timeline"]["loss"]) == 20
    vf = report["verify_fix"]
    assert vf["horizon"] == {"verify_steps": 30, "steps": 30, "baseline": "rerun"}
    assert len(vf["loss"]["before"]) == len(vf["loss"]["after"]) == 30
    # Without fixes the baseline replays the first run's batches: its first 20 losses are its.
    assert vf["loss"]["before"][:20] == [[p["step"], p["loss"]] for p in report["timeline"]["loss"]]
    assert vf["after"]["run"]["steps"] == 30
    assert [s["step"] for s in vf["after"]["snapshots"]] == vf["steps"]
    assert any("rerun without fixes over the same steps is the baseline" in n
               for n in vf["notes"])
    assert vf["verdict"] == "fixed", vf["summary"]


def test_verify_steps_needs_verify_fix(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("diagnose", str(HEALTHY), "--verify-steps", "5", json_report=False)
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.strip() == "hfault: error: --verify-steps needs --verify-fix"
    bad = cli("diagnose", str(HEALTHY), "--verify-fix", "--verify-steps", "0",
              json_report=False)
    assert bad.returncode == ExitCode.USAGE
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
