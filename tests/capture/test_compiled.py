"""``torch.compile``: a compiled model trains under hfault exactly as without it, its components
are named as usual, and curvature runs its measured steps eagerly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SCRIPTS, assert_same_training, run_plain

SCRIPT = SCRIPTS / "compile_train.py"
STEPS = ["--steps", "6"]


def grad_norms(report: dict) -> dict[tuple[int, str], float]:
    return {(s["step"], name): m["grad_norm"]
            for s in report["snapshots"] for name, m in s["metrics"].items()}


@pytest.mark.parametrize("how", ["model", "layer", "method", "function"])
def test_compiled_model_trains_identically_with_the_usual_components(cli, tmp_path: Path, how):
    extra = ["--how", how]
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    run_plain(SCRIPT, [*STEPS, "--out", str(plain), *extra])
    result = cli("diagnose", str(SCRIPT), "--at", "every", "--", *STEPS, "--out", str(watched),
                 *extra)
    assert result.returncode == 0, result.stderr
    saved = assert_same_training(plain, watched)
    report = result.report
    assert report["run"]["status"] == "completed" and report["run"]["steps"] == 6
    assert [row["loss"] for row in report["timeline"]["loss"]] == pytest.approx(saved["losses"])
    assert result.names() == ["fc1", "fc2"]
    assert "_orig_mod" not in json.dumps(report)
    assert all(c["source"]["file"].endswith("compile_train.py") for c in report["components"])
    assert any(note.startswith("torch.compile:") for note in report["notes"])
    assert "global hooks" not in result.stderr  # torch's warning about hfault's own hooks
    if how == "model":  # the statistics are those of the same training without torch.compile
        eager = cli("diagnose", str(SCRIPT), "--at", "every", "--", *STEPS, "--backend", "none")
        assert grad_norms(report) == pytest.approx(grad_norms(eager.report), rel=1e-12)


def test_inductor_compiled_model_trains_identically(cli, tmp_path: Path):
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    args = ["--steps", "3", "--backend", "inductor"]
    run_plain(SCRIPT, [*args, "--out", str(plain)])
    result = cli("diagnose", str(SCRIPT), "--", *args, "--out", str(watched))
    assert result.returncode == 0, result.stderr
    assert_same_training(plain, watched)
    assert result.names() == ["fc1", "fc2"]


def test_curvature_of_a_compiled_model_is_measured_on_eager_steps(cli):
    result = cli("diagnose", str(SCRIPT), "--curvature", "--", *STEPS)
    assert result.returncode == 0, result.stderr
    assert not result.findings("HF020")  # curvature-unavailable: no double backward
    eager = cli("diagnose", str(SCRIPT), "--curvature", "--", *STEPS, "--backend", "none")
    measured = [s for s in result.report["snapshots"] if "curvature" in s]
    assert [s["step"] for s in measured] == [1, 2, 4]
    for ours, theirs in zip(measured, eager.report["snapshots"], strict=False):
        assert ours["curvature"]["error"] is None
        for name in ("fc1", "fc2"):
            assert ours["metrics"][name]["trace"] == pytest.approx(
                theirs["metrics"][name]["trace"], rel=1e-9)
    assert any("measured steps ran eagerly" in note for note in result.report["notes"])
