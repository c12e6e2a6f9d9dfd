"""``optimizer.step(closure)`` (LBFGS, SAM, Lightning): the statistics of a step are those of the
gradients its closure computed, components are named as usual, Ctrl-C under Lightning is 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hfault import ExitCode
from hfault.capture.hooks import BackwardEvent, Listener
from hfault.capture.schedule import parse_schedule
from hfault.capture.session import CaptureSession
from tests.conftest import ROOT, SCRIPTS, assert_same_training, run_plain, validate

CLOSURE = SCRIPTS / "closure_train.py"
LIGHTNING = SCRIPTS / "lightning_train.py"


class EventLog(Listener):
    def __init__(self) -> None:
        self.events: list[str] = []

    def before_backward(self, event: BackwardEvent) -> None:
        self.events.append("backward")

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        self.events.append("before_step")

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        self.events.append("after_step")


def test_before_step_comes_when_the_closure_first_returns():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    session = CaptureSession(parse_schedule("every", None))
    log = session.add(EventLog())
    with session:
        opt = torch.optim.LBFGS(model.parameters(), max_iter=3)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        opt.step(closure)
    first = log.events[:log.events.index("after_step") + 1]
    assert first[:2] == ["backward", "before_step"]
    assert first.count("before_step") == 1 and first.count("backward") > 1
    assert session.state.step == 2 and len(session.state.losses) == 2
    assert [c.name for c in session.state.components] == ["weight", "bias"]


def report_stats(report: dict) -> dict[int, dict[str, tuple[float, float]]]:
    return {s["step"]: {n: (m["grad_norm"], m["weight_norm"]) for n, m in s["metrics"].items()}
            for s in report["snapshots"]}


def test_sgd_closure_step_reports_the_gradients_it_computed(cli, tmp_path: Path):
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    args = ["--steps", "5", "--optimizer", "sgd"]
    run_plain(CLOSURE, [*args, "--out", str(plain)])
    result = cli("diagnose", str(CLOSURE), "--at", "every", "--", *args, "--out", str(watched))
    assert result.returncode == 0, result.stderr
    saved = assert_same_training(plain, watched)
    assert result.names() == ["fc1", "fc2"]
    # the same SGD as an ordinary loop: the same statistics at every step, none a step late
    loop = cli("diagnose", str(CLOSURE), "--at", "every", "--", *args, "--no-closure")
    assert report_stats(result.report) == report_stats(loop.report)
    assert all(m["grad_norm"] > 0 for m in result.report["snapshots"][0]["metrics"].values())
    recorded = [row["loss"] for row in result.report["timeline"]["loss"]]
    assert recorded == pytest.approx(saved["losses"], rel=1e-6)


def test_lbfgs_run_is_named_and_counts_its_line_search_in_the_step(cli, tmp_path: Path):
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    args = ["--steps", "4", "--optimizer", "lbfgs"]
    run_plain(CLOSURE, [*args, "--out", str(plain)])
    result = cli("diagnose", str(CLOSURE), "--at", "every", "--", *args, "--out", str(watched))
    assert result.returncode == 0, result.stderr
    saved = assert_same_training(plain, watched)
    report = result.report
    assert result.names() == ["fc1", "fc2"] and "<unowned>" not in json.dumps(report)
    assert report["run"]["steps"] == 4 and report["run"]["backward_calls"] > 4
    # a step's loss is its first evaluation (what LBFGS returns), not the line search's sum
    recorded = [row["loss"] for row in report["timeline"]["loss"]]
    assert recorded == pytest.approx(saved["losses"], rel=1e-6)
    assert all(m["grad_norm"] > 0 for m in report["snapshots"][0]["metrics"].values())
    assert report["run"]["optimizers"][0]["gradient_reset"] == {"checked": 3, "stale": 0}


def test_lightning_fit_is_named_and_its_statistics_are_not_late(cli, tmp_path: Path):
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    run_plain(LIGHTNING, ["--steps", "8", "--out", str(plain)])
    result = cli("diagnose", str(LIGHTNING), "--at", "every", "--", "--steps", "8",
                 "--out", str(watched))
    assert result.returncode == ExitCode.OK, result.stderr
    saved = assert_same_training(plain, watched)
    report = result.report
    assert report["run"]["status"] == "completed" and report["run"]["steps"] == 8
    assert result.names() == ["encoder", "head"]
    applied = {(s["step"], n): m["grad_norm"]
               for s in report["snapshots"] for n, m in s["metrics"].items()}
    expected = {(i + 1, n): norm
                for i, norms in enumerate(saved["grad_norms"]) for n, norm in norms.items()}
    assert applied == pytest.approx(expected, rel=1e-5)
    recorded = [row["loss"] for row in report["timeline"]["loss"]]
    assert recorded == pytest.approx(saved["losses"], rel=1e-6)


def test_ctrl_c_under_lightning_exits_130_with_the_partial_report(tmp_path: Path):
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hfault", "diagnose", str(LIGHTNING), "--json", str(report),
         "--quiet", "--", "--forever"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # a pytest-xdist worker ignores SIGINT (inherited across exec): restore the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step 5"):
            break
    proc.send_signal(signal.SIGINT)  # Lightning turns the KeyboardInterrupt into sys.exit(1)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    data = json.loads(report.read_text())
    validate(data)
    assert data["run"]["status"] == "stopped" and data["run"]["steps"] >= 5
    assert any("Ctrl-C" in note for note in data["notes"])
