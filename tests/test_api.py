"""The Python API (``hfault.watch``) around real training loops: the same capture, rules and
report as the CLI, the max-steps stop swallowed, the training code's own errors re-raised after
the report is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import hfault
from hfault.report.outputs import OutputError
from tests.conftest import validate


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int,
           fail_at: int | None = None) -> int:
    done = 0
    for step in range(1, steps + 1):
        if step == fail_at:
            raise ValueError("corrupt batch")
        x = torch.randn(16, 8)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        done = step
    return done


def test_a_healthy_loop_is_diagnosed_and_max_steps_ends_the_block(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)  # built before the block: adopted
    report_path = tmp_path / "r.json"
    with hfault.watch(json=report_path, max_steps=20, optimizers=[opt]) as run:
        _train(model, opt, 1000)
        pytest.fail("max_steps did not stop training")
    assert run.outcome is not None and run.outcome.status == "stopped"
    report = json.loads(report_path.read_text())
    validate(report)
    assert report == run.report
    assert report["run"]["steps"] == 20
    assert [c["name"] for c in report["components"]] == ["0", "2"]
    assert not run.failed("warning"), run.findings


def test_an_optimizer_built_before_the_block_and_not_passed_is_found(tmp_path: Path) -> None:
    # A notebook builds its optimizer in one cell and wraps only the loop: without being told,
    # hfault finds it at the first backward instead of taking the loop for a hand-written update
    # (which measured every step twice and reported no optimizer).
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with hfault.watch(max_steps=12) as run:
        _train(model, opt, 12)
    report = run.report
    assert report["run"]["steps_from"] == "optimizer"
    assert report["run"]["steps"] == 12
    assert [o["class"] for o in report["run"]["optimizers"]] == ["AdamW"]
    assert any("built before capture started" in n for n in report["notes"])
    assert {c["optimizer"] for c in report["components"]} == {0}
    assert not run.failed("warning"), run.findings


def test_a_diverging_loop_is_found_with_the_optimizer_built_inside(tmp_path: Path) -> None:
    with hfault.watch(max_steps=30) as run:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=5.0)
        _train(model, opt, 30)
    assert run.failed()
    # the loss rose for steps before it went non-finite: the learning rate first (HF022), then
    # where the first NaN appeared (HF001), its consequence
    diverged, nan = run.findings[:2]
    assert diverged["rule"] == "HF022" and "learning rate 5" in diverged["message"]
    assert (nan["rule"], nan["component"], nan["step"]) == ("HF001", "2", 5)


def test_an_error_in_the_training_code_is_reraised_after_the_report(tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    with pytest.raises(ValueError, match="corrupt batch"), \
            hfault.watch(json=report_path, optimizers=[opt]):
        _train(model, opt, 10, fail_at=4)
    report = json.loads(report_path.read_text())
    validate(report)
    run = report["run"]
    assert run["status"] == "crashed" and run["steps"] == 3
    assert run["error"]["type"] == "ValueError"
    assert run["error"]["file"] == __file__ and run["error"]["function"] == "_train"


def test_an_unwritable_output_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="--json"):
        hfault.watch(json=tmp_path)  # a folder


def test_import_hfault_does_not_import_torch() -> None:
    code = "import sys, hfault; print('torch' in sys.modules); print(hfault.watch.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "Watch"]


def _run_script(path: Path, *args: str) -> None:
    import runpy

    argv = sys.argv
    sys.argv = [str(path), *args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv


def test_nan_ops_and_lr_are_the_clis(tmp_path: Path) -> None:
    """``nan_ops=`` and ``lr=`` do what ``--nan-ops`` and ``--lr`` do: the op that made the
    first NaN from the first step, and a hand-written loop's learning rate for its fixes."""
    from tests.conftest import SCRIPTS

    with hfault.watch(nan_ops=True) as run:
        _run_script(SCRIPTS / "plain_tensor_train.py", "--log-loss")
    event = run.report["numerics"][0]
    assert event["op"] == "log" and event["op_step"] == event["step"] == 2
    # the op watch's TorchFunctionMode ended inside one of its own calls (the loop's update is
    # a torch op); it must not outlive the block
    assert not torch.overrides._get_current_function_mode_stack()

    with hfault.watch(lr=0.5, max_steps=3) as run:
        _run_script(SCRIPTS / "manual_sgd_train.py")
    assert run.report["run"]["optimizers"][0]["lr"] == 0.5
    notes = run.report["notes"]
    assert any("the learning rate given by --lr (or lr=) (0.5)" in note for note in notes)
