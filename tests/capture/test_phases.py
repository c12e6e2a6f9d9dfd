"""Training in phases (a fine-tune with a new optimizer) and alternating optimizers (a GAN): each
phase keeps its own steps and losses, and the loss rules judge each phase's series."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import SCRIPTS

PHASES = str(SCRIPTS / "phases_train.py")
LOSS_RULES = {"HF010", "HF011", "HF012"}


def test_a_fine_tune_continues_the_step_count_and_is_judged_on_its_own(cli) -> None:
    result = cli("diagnose", PHASES)
    report = result.report
    assert report is not None
    assert report["run"]["steps"] == 80
    assert [p["step"] for p in report["timeline"]["loss"]] == list(range(1, 81))
    phases = report["phases"]
    assert [(p["phase"], p["class"], p["optimizers"], p["first_step"], p["last_step"],
             p["steps"]) for p in phases] == [(1, "Adam", [0], 1, 40, 40),
                                              (2, "SGD", [1], 41, 80, 40)]
    # The fine-tune starts at a higher loss than the first phase ended at: judged as one
    # series (or summed into step 40, as before) that read as divergence.
    assert phases[1]["loss"]["first"] > 3 * phases[0]["loss"]["last"]
    assert not result.findings("HF010"), result.findings("HF010")
    assert result.returncode == 0
    assert "phases: 1 Adam steps 1–40 (loss " in result.stdout
    # The fine-tune's optimizer trains the first phase's components: measured in its phase.
    last = report["snapshots"][-1]
    assert last["step"] == 80 and last["metrics"]["fc1"]["lr"] == 1e-3


def test_a_nan_in_the_second_phase_is_placed_at_its_own_step(cli) -> None:
    result = cli("diagnose", PHASES, "--quiet", "--", "--nan-at", "5")
    assert result.report is not None
    (finding,) = result.findings("HF001")
    assert (finding["step"], finding["component"]) == (45, "scale")
    first = result.report["numerics"][0]
    assert (first["kind"], first["step"], first["where"]) == ("activation", 45, "scale")
    assert result.report["phases"][1]["loss"]["nonfinite"] == 36


def test_max_steps_counts_the_steps_of_every_phase(cli) -> None:
    result = cli("diagnose", PHASES, "--quiet", "--max-steps", "50")
    report = result.report
    assert report is not None
    assert (report["run"]["status"], report["run"]["steps"]) == ("stopped", 50)
    assert [(p["first_step"], p["last_step"]) for p in report["phases"]] == [(1, 40), (41, 50)]


def test_alternating_optimizers_keep_their_own_losses(cli, tmp_path: Path) -> None:
    out = tmp_path / "gan.pt"
    result = cli("diagnose", str(SCRIPTS / "gan_train.py"), "--quiet", "--",
                 "--steps", "30", "--out", str(out))
    report = result.report
    assert report is not None
    saved = torch.load(out)
    disc, gen = report["phases"]
    assert (disc["optimizers"], disc["first_step"], disc["last_step"]) == ([0], 1, 30)
    assert (gen["optimizers"], gen["first_step"], gen["last_step"]) == ([1], 1, 30)
    # Each optimizer's series is the loss backpropagated before it stepped, not their sum.
    assert [v for _, v in disc["losses"]] == saved["d_losses"]
    assert [v for _, v in gen["losses"]] == saved["g_losses"]
    assert [p["loss"] for p in report["timeline"]["loss"]] == [
        d + g for d, g in zip(saved["d_losses"], saved["g_losses"], strict=True)]
    for finding in result.findings():
        if finding["rule"] in LOSS_RULES:
            assert finding["evidence"]["phase"] in (1, 2)
            assert "phase" in finding["message"]


def test_a_single_optimizer_run_has_one_phase_without_a_second_series(cli) -> None:
    result = cli("diagnose", str(SCRIPTS / "two_opt_train.py"), "--quiet", "--", "--steps", "6")
    report = result.report
    assert report is not None
    # Two optimizers over different parameters, stepping after one backward: the loss is the
    # first one's, and the timeline is its series.
    phases = report["phases"]
    assert [(p["class"], p["first_step"], p["last_step"]) for p in phases] == [
        ("Adam", 1, 6), ("SGD", 1, 6)]
    assert phases[1]["loss"] is None
    assert all("losses" not in p for p in phases)
