"""The per-step loss record is bounded: every step up to the cap, then a stride sample."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from hfault.capture.loss_record import CAP, LossRecord
from tests.conftest import SCRIPTS

LONG = str(SCRIPTS / "long_train.py")


def test_under_the_cap_every_step_is_kept_as_added() -> None:
    record = LossRecord()
    for step in range(1, CAP + 1):
        record.add(step, 1.0 / step)
    record.add(CAP, 1.0)  # a second loss of the same step adds up
    assert len(record) == CAP and not record.sampled
    assert record.items() == [(s, 1.0 / s + (1.0 if s == CAP else 0.0))
                              for s in range(1, CAP + 1)]


def test_a_500k_step_record_keeps_a_stride_sample_and_what_it_must() -> None:
    record = LossRecord()
    for step in range(1, 500_001):
        value = math.nan if step in (123_457, 123_458) else float(step)
        record.add(step, value, keep=step in (3, 77_777))
    steps = [s for s, _ in record.items()]
    assert CAP // 2 <= len(steps) <= CAP + 4
    assert record.describe() == {"steps": 500_000, "kept": len(steps), "stride": record.stride,
                                 "cap": CAP}
    assert record.stride & (record.stride - 1) == 0 and record.stride > 1
    assert {1, 3, 77_777, 123_457, 500_000} <= set(steps)  # first, kept, first NaN, last
    assert 123_458 not in steps and record.nonfinite == 2
    regular = [s for s in steps if s not in (3, 77_777, 123_457, 500_000)]
    assert all((s - 1) % record.stride == 0 for s in regular)
    assert all(record.get(s) == float(s) for s in regular)


def test_a_300_step_run_records_every_loss_the_script_saw(cli, tmp_path: Path) -> None:
    out = tmp_path / "losses.pt"
    result = cli("diagnose", LONG, "--quiet", "--", "--steps", "300", "--out", str(out))
    report = result.report
    assert report is not None
    saved = torch.load(out)["losses"]
    assert [(p["step"], p["loss"]) for p in report["timeline"]["loss"]] == list(
        enumerate(saved, start=1))
    assert report["loss_record"] == {"steps": 300, "kept": 300, "stride": 1, "cap": CAP}
    assert not any("loss timeline keeps" in n for n in report["notes"])


def test_a_long_run_writes_a_small_report_that_says_what_it_kept(cli, tmp_path: Path) -> None:
    steps = CAP + CAP // 4  # past the cap: sampled at stride 2 (the unit test above goes on)
    result = cli("diagnose", LONG, "--quiet", "--", "--steps", str(steps))
    report = result.report
    assert report is not None and report["run"]["steps"] == steps
    # Sampled, a report stays under 2,000 timeline points however long the run (every step
    # kept made 37.5 MB at 500k steps).
    size = len(json.dumps(report))
    assert size < 100_000, size
    record = report["loss_record"]
    assert (record["steps"], record["stride"]) == (steps, 2) and record["kept"] <= CAP
    assert len(report["timeline"]["loss"]) == record["kept"]
    assert report["timeline"]["loss"][-1]["step"] == steps
    assert any(f"keeps {record['kept']:,} of {steps:,} steps" in n for n in report["notes"])
