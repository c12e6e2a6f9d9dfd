"""Hand-written update loops (no torch.optim): steps from backward calls, plain-tensor names, and
the op that makes a non-finite loss outside any module, through the real CLI."""

from __future__ import annotations

import sys

from hfault.exitcodes import ExitCode
from tests import forkserver
from tests.conftest import ROOT, SCRIPTS

MANUAL = SCRIPTS / "manual_sgd_train.py"
PLAIN = SCRIPTS / "plain_tensor_train.py"


def _done_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("done"))


def test_word_language_model_style_loop_is_diagnosed_and_trains_unchanged(cli):
    result = cli("diagnose", str(MANUAL), "--quiet")
    assert result.returncode == ExitCode.OK, result.stderr
    report = result.report
    run = report["run"]
    assert run["steps_from"] == "backward"
    assert run["steps"] == 30 and run["backward_calls"] == 30
    assert report["summary"]["verdict"] == "healthy"
    assert result.names() == ["encoder", "rnn", "decoder"]
    assert len(report["timeline"]["loss"]) == 30
    first = report["snapshots"][0]
    assert first["step"] == 1
    ratios = [m["update_ratio"] for m in first["metrics"].values()]
    assert all(0 < r < 0.1 for r in ratios), ratios  # measured from the parameters' change
    assert any("hand-written update" in note for note in report["notes"])
    plain = forkserver.run([sys.executable, str(MANUAL)], text=True, check=True, cwd=ROOT)
    assert _done_line(result.stdout) == _done_line(plain.stdout)  # training untouched


def test_gradient_accumulation_makes_one_step_of_several_backwards(cli):
    result = cli("diagnose", str(MANUAL), "--quiet", "--", "--steps", "12", "--accumulate", "3")
    assert result.returncode == ExitCode.OK, result.stderr
    run = result.report["run"]
    assert run["steps"] == 12 and run["backward_calls"] == 36
    # the loss of a step is the sum of its micro-batch losses (each divided by 3 by the script)
    losses = [p["loss"] for p in result.report["timeline"]["loss"]]
    assert 2.0 < losses[0] < 3.0


def test_max_steps_stops_a_hand_written_loop(cli):
    result = cli("diagnose", str(MANUAL), "--quiet", "--max-steps", "5")
    assert result.returncode == ExitCode.OK, result.stderr
    run = result.report["run"]
    assert run["status"] == "stopped" and run["steps"] == 5


def test_a_layer_with_its_own_huge_learning_rate_is_an_error_at_that_layer(cli):
    result = cli("diagnose", str(MANUAL), "--quiet", "--lr", "0.5", "--", "--hot-lr", "500")
    assert result.returncode == ExitCode.FINDINGS, result.stderr
    errors = [f for f in result.findings() if f["severity"] == "error" and f["component"]]
    assert errors and errors[0]["component"] == "decoder", errors
    fix = errors[0]["fix"]  # no param group to split: the update line takes the factor
    assert fix["values"]["kind"] == "lower_lr" and "p.data.add_(p.grad" in fix["snippet"]


def test_plain_tensor_parameters_are_named_by_the_script_variables(cli):
    result = cli("diagnose", str(PLAIN), "--quiet")
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.names() == ["W1", "b1", "state.W2"]
    assert result.component("state.W2")["access"] == "[state.W2]"
    assert result.report["run"]["steps"] == 20


def _log_line() -> int:
    lines = PLAIN.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "loss = -(y * torch.log(p)" in line)


def test_a_non_finite_loss_outside_any_module_names_the_op_and_line(cli):
    # --skip-bad: the weights stay finite, so the watch started by the first non-finite loss
    # sees the op make it again at the next step
    result = cli("diagnose", str(PLAIN), "--quiet", "--", "--log-loss", "--skip-bad")
    assert result.returncode == ExitCode.FINDINGS, result.stderr
    event = result.report["numerics"][0]
    assert event["kind"] == "loss" and event["step"] == 2
    assert event["op"] == "log" and event["op_step"] == 3
    assert event["file"] == str(PLAIN) and event["line"] == _log_line()
    (hf001,) = result.findings("HF001")
    assert f"made by log at {PLAIN}:{_log_line()}" in hf001["message"]


def test_nan_ops_watches_from_the_first_step(cli):
    # without --skip-bad the weights turn NaN at once: only a watch from the start sees the op
    result = cli("diagnose", str(PLAIN), "--quiet", "--nan-ops", "--", "--log-loss")
    event = result.report["numerics"][0]
    assert event["op"] == "log" and event["op_step"] == event["step"] == 2
    assert event["line"] == _log_line()
