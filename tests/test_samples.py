"""Every sample program diagnosed end to end by the real CLI, against sample_programs/expected.toml.

Healthy programs must produce no error-severity finding; faulty ones must be flagged with the
faulty component ranked first (scoring: benchmarks/samples.py, shared with benchmarks/accuracy.py).
Each program runs with the ``--max-steps`` and arguments of its ``[programs.NAME.diagnose]`` table
and the economy budget, to keep the suite within minutes on two cores. A program hfault is known
to miss carries ``known_miss = "why"`` there: its test is a strict xfail, so it fails the day hfault
starts to catch it (and the manifest must then be updated).
"""

from __future__ import annotations

import pytest

from benchmarks.samples import load_programs, score
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e  # runs real training scripts

PROGRAMS = load_programs()


def _param(program):
    marks = []
    if program.known_miss:
        marks.append(pytest.mark.xfail(reason=program.known_miss, strict=True))
    return pytest.param(program, id=program.name, marks=marks)


def test_manifest_covers_every_sample_program() -> None:
    names = {p.name for p in PROGRAMS}
    files = {p.stem for p in (ROOT / "sample_programs").glob("*.py")} - {"measure_all"}
    legacy = {"transformer_encoder", "transformer_lr_fault"}  # the README demo and older tests
    assert files - legacy == names
    for family in {p.family for p in PROGRAMS}:
        assert any(p.healthy for p in PROGRAMS if p.family == family), family


@pytest.mark.parametrize("program", [_param(p) for p in PROGRAMS])
def test_sample_program_is_diagnosed_as_expected(cli, program) -> None:
    args = ["diagnose", str(program.path), "-q", "--max-steps", str(program.max_steps),
            "--fail-on", "never", *program.options]
    if program.args:
        args += ["--", *program.args]
    result = cli(*args)
    assert result.report is not None, result.stderr[-2000:]
    s = score(program, result.report)
    top = [(f["rule"], f["severity"], f["component"]) for f in result.findings()[:5]]
    if program.healthy:
        assert not s.false_alarm, f"error finding on a healthy program: {top}"
    else:
        assert s.detected, f"{program.name} not flagged (verdict {s.verdict})"
        if program.localized:
            assert s.top1, (f"{program.name}: expected {program.targets} first, "
                            f"got {s.first} (rank {s.rank}); findings {top}")
    if program.expect_rule:
        hits = result.findings(program.expect_rule)
        assert hits, f"{program.expect_rule} did not fire; findings {top}"
        if program.step_between:
            low, high = program.step_between
            assert low <= min(f["step"] for f in hits) <= high, [f["step"] for f in hits]


@pytest.mark.parametrize("name", ["encoder_healthy", "han_healthy"])
def test_healthy_twins_show_no_regime_change_over_a_whole_run(cli, name) -> None:
    # The label-noise program's HF210 (CUSUM) must come from memorization, not from the shape of
    # any long training run: the healthy programs, measured the same way, stay quiet.
    result = cli("diagnose", str(ROOT / "sample_programs" / f"{name}.py"), "-q", "--no-curvature",
                 "--at", "every:50", "--fail-on", "never")
    assert result.report["run"]["status"] == "completed"
    assert len(result.report["snapshots"]) >= 10
    assert not result.findings("HF210"), [f["message"] for f in result.findings("HF210")]

