"""Every exit code of ``hfault diagnose``, one-line errors, numerical-fault localization."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hfault import ExitCode
from tests.conftest import ROOT, SAMPLES, SCRIPTS, assert_same_training, run_plain, validate


def assert_one_line_error(stderr: str, contains: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("hfault: error:")]
    assert len(errors) == 1 and contains in errors[0], stderr
    assert "Traceback" not in stderr


def test_healthy_run_exits_0(cli):
    result = cli("diagnose", str(SCRIPTS / "basic_train.py"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.report["summary"]["verdict"] == "healthy"
    assert not result.findings()
    assert "hfault report" in result.stdout


def test_nan_activation_is_localized_to_the_module_and_step(cli):
    result = cli("diagnose", str(SCRIPTS / "nan_train.py"), "--", "--steps", "8",
                 "--bad-step", "5")
    assert result.returncode == ExitCode.FINDINGS
    top = result.findings()[0]
    assert (top["rule"], top["rank"], top["severity"]) == ("HF001", 1, "error")
    assert top["step"] == 5
    assert top["evidence"]["kind"] == "activation"
    assert top["evidence"]["where"] == "temp"
    assert result.report["numerics"][0]["where"] == "temp"
    assert "detect_anomaly" in top["fix"]["snippet"]
    assert result.report["summary"]["verdict"] == "faulty"


def test_nan_gradient_with_finite_forward_names_the_parameter(cli):
    result = cli("diagnose", str(SCRIPTS / "nan_train.py"), "--", "--steps", "4",
                 "--mode", "grad")
    assert result.returncode == ExitCode.FINDINGS
    top = result.findings()[0]
    assert top["rule"] == "HF001" and top["step"] == 1
    assert top["evidence"]["kind"] == "gradient"
    assert top["component"] == "gate"


def test_nan_gradient_is_localized_before_the_scripts_clipping(cli):
    # clip_grad_norm_ with a NaN total norm makes every gradient NaN by the optimizer step (the
    # han_log_softmax sample); hfault must still name the component backward left non-finite.
    result = cli("diagnose", str(SCRIPTS / "nan_train.py"), "--", "--steps", "4",
                 "--mode", "logexp", "--clip")
    top = result.findings()[0]
    assert top["rule"] == "HF001" and top["step"] == 1
    assert top["component"] == "gate", top
    assert "gradient processing" in result.report["numerics"][0]["detail"]


def test_fail_on_chooses_the_threshold(cli):
    script = str(SCRIPTS / "nan_train.py")
    assert cli("diagnose", script, "--fail-on", "never").returncode == ExitCode.OK
    assert cli("diagnose", script, "--fail-on", "warning").returncode == ExitCode.FINDINGS


def test_warning_fails_only_with_fail_on_warning(cli):
    # First-order only, the learning-rate outlier, the first step that rewrites the component
    # and weight growth ignored: the LR fault shows as attention warnings (collapse without the
    # curvature signature, logit growth).
    sample = str(SAMPLES / "transformer_lr_fault.py")
    args = ("diagnose", sample, "--max-steps", "40", "--no-curvature", "--ignore", "HF023",
            "--ignore", "HF006", "--ignore", "HF002")
    strict = cli(*args, "--fail-on", "warning")
    assert strict.findings()[0]["severity"] == "warning", strict.stdout
    assert strict.returncode == ExitCode.FINDINGS
    assert cli(*args).returncode == ExitCode.OK


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["diagnose", "no/such/train.py"], "no such script"),
        (["diagnose", "SCRIPT", "--bogus"], "No such option"),
        (["diagnose", "SCRIPT", "--at", "x"], "--at"),
        (["diagnose", "SCRIPT", "--at", "0"], "numbered from 1"),
        (["diagnose", "SCRIPT", "--max-steps", "0"], "--max-steps"),
        (["diagnose", "SCRIPT", "--fail-on", "sometimes"], "--fail-on"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli, args, contains):
    args = [str(SCRIPTS / "basic_train.py") if a == "SCRIPT" else a for a in args]
    result = cli(*args, json_report=False)
    assert result.returncode == ExitCode.USAGE
    assert_one_line_error(result.stderr, contains)


@pytest.mark.parametrize("option", ["--json", "--sarif", "--html", "--graph"])
def test_unwritable_output_fails_before_the_script_runs(cli, tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    marker = tmp_path / "ran"
    result = cli("diagnose", str(SCRIPTS / "basic_train.py"), option,
                 str(blocker / "report.out"), "--", "--out", str(marker), json_report=False)
    assert result.returncode == ExitCode.USAGE
    assert_one_line_error(result.stderr, f"{option} {blocker / 'report.out'}: cannot write there")
    assert not marker.exists()  # the script never ran


def test_reports_are_replaced_whole(cli, tmp_path):
    """A stale report under the same name is replaced by the new one, and no temporary file is
    left beside it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.json").write_text("{stale")
    result = cli("diagnose", str(SCRIPTS / "basic_train.py"), "--json", str(out / "r.json"),
                 "--html", str(out / "r.html"), "--quiet", "--", "--steps", "2",
                 json_report=False)
    assert result.returncode == ExitCode.OK, result.stderr
    assert json.loads((out / "r.json").read_text())["run"]["status"] == "completed"
    assert sorted(p.name for p in out.iterdir()) == ["r.html", "r.json"]


@pytest.mark.parametrize(
    ("script", "what"),
    [("no_optimizer.py", "created no torch.optim optimizer"),
     ("no_backward.py", "never called backward()")],
)
def test_nothing_to_diagnose_is_a_clear_usage_error(cli, script, what):
    result = cli("diagnose", str(SCRIPTS / script), "--quiet")
    assert result.returncode == ExitCode.USAGE
    assert_one_line_error(result.stderr, what)
    assert result.report["run"]["status"] == "completed"
    assert any("nothing to diagnose" in note for note in result.report["notes"])
    assert result.report["summary"]["verdict"] == "not_diagnosed"  # never "healthy"


def test_script_crash_exits_3_with_partial_report(cli):
    result = cli("diagnose", str(SCRIPTS / "crash_train.py"))
    assert result.returncode == ExitCode.SCRIPT_CRASHED
    assert_one_line_error(result.stderr, "ValueError: corrupt shard 7")
    run = result.report["run"]
    assert run["status"] == "crashed" and run["steps"] == 2
    error = run["error"]
    assert error["type"] == "ValueError" and error["function"] == "load_batch"
    assert Path(error["file"]).name == "crash_train.py"
    source = (SCRIPTS / "crash_train.py").read_text().splitlines()
    assert "raise ValueError" in source[error["line"] - 1]
    assert [s["step"] for s in result.report["snapshots"]] == [1, 2]
    assert result.report["summary"]["verdict"] == "crashed"


def test_traceback_flag_prints_the_users_traceback(cli):
    result = cli("diagnose", str(SCRIPTS / "crash_train.py"), "--traceback", json_report=False)
    assert result.returncode == ExitCode.SCRIPT_CRASHED
    assert "load_batch" in result.stderr and "hfault/capture" not in result.stderr


def test_error_in_hfaults_own_hook_is_internal_not_the_scripts(cli):
    # An exception raised by hfault inside the script (here in its backward hook) is hfault's
    # bug: exit 4 and say so, but still write the partial report.
    result = cli("diagnose", str(SCRIPTS / "accum_train.py"), env={"HFAULT_DEBUG_RAISE": "hook"})
    assert result.returncode == ExitCode.INTERNAL, result.stderr
    assert_one_line_error(result.stderr, "internal error while observing the script")
    err = result.report["run"]["error"]
    assert result.report["run"]["status"] == "crashed" and err["internal"] is True
    assert "session.py" in err["traceback"]


def test_user_error_inside_a_wrapped_softmax_is_the_scripts(cli):
    # On a measured step the attention probe wraps softmax/matmul; the script's own bad call
    # raises inside the wrapper's call of torch, which makes it the script's error.
    result = cli("diagnose", str(SCRIPTS / "softmax_error_train.py"))
    assert result.returncode == ExitCode.SCRIPT_CRASHED, result.stderr
    assert_one_line_error(result.stderr, "the script raised IndexError")
    assert "internal" not in result.report["run"]["error"]
    assert result.report["run"]["error"]["line"] == 18


@pytest.mark.parametrize("mode", ["twice", "function"])
def test_user_error_passing_through_hfaults_backward_hook_is_the_scripts(cli, mode):
    result = cli("diagnose", str(SCRIPTS / "backward_error_train.py"), "--", "--mode", mode)
    assert result.returncode == ExitCode.SCRIPT_CRASHED, result.stderr
    assert_one_line_error(result.stderr, "the script raised")
    assert "internal" not in result.report["run"]["error"]


def test_internal_error_exits_4_with_one_line(cli):
    result = cli("diagnose", str(SCRIPTS / "accum_train.py"),
                 env={"HFAULT_DEBUG_RAISE": "report"}, json_report=False)
    assert result.returncode == ExitCode.INTERNAL
    assert_one_line_error(result.stderr, "internal error")


def test_ctrl_c_writes_the_partial_report(tmp_path: Path):
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hfault", "diagnose", str(SCRIPTS / "forever_train.py"),
         "--json", str(report), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # a pytest-xdist worker ignores SIGINT, and an ignored signal is inherited across exec:
        # give the child the default disposition so Python installs its KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step 5"):
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED
    data = json.loads(report.read_text())
    validate(data)
    assert data["run"]["status"] == "stopped"
    assert data["run"]["steps"] >= 5
    assert any("Ctrl-C" in note for note in data["notes"])


def test_version(cli):
    result = cli("--version", json_report=False)
    assert result.returncode == 0 and result.stdout.startswith("hfault ")


def test_detached_component_is_reported_dead_with_its_location(cli):
    result = cli("diagnose", str(SCRIPTS / "detach_train.py"))
    assert result.returncode == ExitCode.FINDINGS
    top = result.findings()[0]
    assert (top["rule"], top["component"]) == ("HF003", "gate_proj")
    assert top["evidence"]["grad_none"] is True
    assert "detach_train.py" in top["fix"]["summary"]
    assert [f["component"] for f in result.findings("HF003")] == ["gate_proj"]


def test_loss_fed_probabilities_names_the_head_that_made_them(cli):
    """Two heads, the box head running last: the flagged input's autograd graph names the class
    head, not the last module with parameters."""
    result = cli("diagnose", str(SCRIPTS / "loss_input_train.py"), "--no-curvature", "--",
                 "--steps", "6", "--mode", "two_heads")
    assert [f["component"] for f in result.findings("HF013")] == ["class_head"]


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("logits_ce", None), ("log_softmax_nll", None), ("softmax_ce", "probabilities"),
     ("softmax_nll", "not_log_probabilities"), ("module_ce", "probabilities")],
)
def test_loss_fed_probabilities_is_flagged_at_the_output_layer(cli, tmp_path, mode, kind):
    script = SCRIPTS / "loss_input_train.py"
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    result = cli("diagnose", str(script), "--no-curvature", "--", "--steps", "6", "--mode", mode,
                 "--out", str(watched))
    found = result.findings("HF013")
    if kind is None:
        assert not found and result.report["loss_inputs"] == []
        return
    assert [f["component"] for f in found] == ["2"], found
    assert result.report["loss_inputs"][0]["kind"] == kind
    # the check only reads the loss input: training is bit-identical with and without hfault
    run_plain(script, ["--steps", "6", "--mode", mode, "--out", str(plain)])
    assert_same_training(plain, watched)


def test_report_of_a_file_that_is_not_utf8_is_a_usage_error(cli, tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(b"\xff\xfe{}")
    result = cli("report", str(path), json_report=False)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert_one_line_error(result.stderr, "not a JSON report: not UTF-8 text")


def test_a_syntax_error_is_located_in_the_script(cli, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import torch\nx = (\n")
    result = cli("diagnose", str(script))
    assert result.returncode == ExitCode.SCRIPT_CRASHED, result.stderr
    assert_one_line_error(result.stderr, f"({script}:2)")
    err = result.report["run"]["error"]
    assert (err["type"], err["file"], err["line"]) == ("SyntaxError", str(script), 2)


def test_a_multi_line_exception_message_stays_one_line(cli, tmp_path):
    script = tmp_path / "multi.py"
    script.write_text('raise RuntimeError("first\\nsecond\\nthird")\n')
    result = cli("diagnose", str(script))
    assert result.returncode == ExitCode.SCRIPT_CRASHED, result.stderr
    assert_one_line_error(result.stderr, f"RuntimeError: first [+2 more line(s)] ({script}:1)")
    assert result.report["run"]["error"]["message"] == "first\nsecond\nthird"
