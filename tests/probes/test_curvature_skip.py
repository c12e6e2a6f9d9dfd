"""Curvature is not measured once a weight is non-finite: a note, not an HF020 warning."""

from __future__ import annotations

from tests.conftest import SCRIPTS


def test_curvature_is_skipped_with_a_note_after_the_weights_turn_nan(cli) -> None:
    # Module temp divides by 0 at step 3: the weights are NaN from step 4 on.
    result = cli("diagnose", str(SCRIPTS / "nan_train.py"), "--quiet", "--curvature", "--",
                 "--steps", "10", "--bad-step", "3")
    report = result.report
    assert report is not None
    assert [f["rule"] for f in result.findings() if f["rule"] in ("HF001", "HF020")] == ["HF001"]
    measured = {s["step"]: s.get("curvature") for s in report["snapshots"]}
    assert measured[1] is not None and measured[1]["error"] is None
    assert measured[4] is None and measured[8] is None
    (note,) = [n for n in report["notes"] if n.startswith("curvature not measured")]
    assert "step(s) 4, 8: the weights of fc1 are nan from step 4" in note
