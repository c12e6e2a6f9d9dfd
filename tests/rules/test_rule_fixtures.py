"""Every rule has a fixture that must fire and one that must not (tests/rules/fixtures/ID.toml),
and its documented example is the message it produces on the firing fixture."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hfault.rules import evaluate, load_rules
from tests.rules.fixture_report import build, resolve

FIXTURES = Path(__file__).parent / "fixtures"
RULES = {r.id: r for r in load_rules()}


def _run(rule_id: str, which: str):  # type: ignore[no-untyped-def]
    fixtures = tomllib.loads((FIXTURES / f"{rule_id}.toml").read_text())
    spec = resolve(fixtures, which)
    result = evaluate(build(spec), [RULES[rule_id]])
    assert not result.errors, result.errors
    return spec, [f for f in result.findings if f.rule == rule_id]


def test_every_rule_has_both_fixtures() -> None:
    for rule_id in RULES:
        path = FIXTURES / f"{rule_id}.toml"
        assert path.is_file(), f"{rule_id} has no fixture file"
        fixtures = tomllib.loads(path.read_text())
        assert {"fires", "quiet"} <= set(fixtures), f"{rule_id}: needs [fires] and [quiet]"


def _cases(prefix: str) -> list[tuple[str, str]]:
    """(rule, fixture) for every fixture table whose name starts with ``prefix``."""
    out = []
    for rule_id in sorted(RULES):
        tables = tomllib.loads((FIXTURES / f"{rule_id}.toml").read_text())
        out += [(rule_id, name) for name in tables if name.startswith(prefix)]
    return out


@pytest.mark.parametrize(("rule_id", "which"), _cases("fires"))
def test_rule_fires_on_its_fixture(rule_id: str, which: str) -> None:
    spec, findings = _run(rule_id, which)
    assert len(findings) == spec.get("expect_count", 1), [f.message for f in findings]
    finding = findings[0]
    assert finding.component == spec.get("expect_component")
    assert finding.severity == spec.get("expect_severity", RULES[rule_id].severity)
    if which == "fires":
        assert finding.message == RULES[rule_id].example, "the rule's documented example is stale"
    assert finding.score > 0
    if "expect_fix_kind" in spec:
        assert finding.fix is not None
        assert finding.fix.values["kind"] == spec["expect_fix_kind"]
    if "expect_fix_says" in spec:
        assert finding.fix is not None
        assert spec["expect_fix_says"] in finding.fix.summary, finding.fix.summary
    if spec.get("expect_also"):  # a shared fix: one finding names every module it fixes
        also = spec["expect_also"]
        assert finding.evidence.get("also") == also
        assert set(also) <= set(finding.related)
        assert f"the same in {', '.join(also)}" in finding.message
        assert finding.fix is not None and f"one change fixes all {len(also) + 1}" in \
            finding.fix.summary
    if "expect_new_lr" in spec and spec.get("expect_fix_kind", "lower_lr") == "lower_lr":
        assert finding.fix is not None
        assert finding.fix.values["new_lr"] == pytest.approx(spec["expect_new_lr"], rel=1e-3)
        assert ".add_param_group(split)" in (finding.fix.snippet or "")


@pytest.mark.parametrize(("rule_id", "which"), _cases("quiet"))
def test_rule_stays_quiet_on_its_near_miss(rule_id: str, which: str) -> None:
    _, findings = _run(rule_id, which)
    assert findings == [], [f.message for f in findings]
