"""docs/rules.md is generated from the rule files; it must match them."""

from pathlib import Path

from hfault.rules import load_rules
from hfault.rules.docs import explain, rules_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def test_rules_reference_is_current() -> None:
    assert DOC.read_text() == rules_markdown(load_rules()), (
        "docs/rules.md is stale: python -m hfault.rules.docs > docs/rules.md"
    )


def test_explain_shows_rationale_parameters_and_example() -> None:
    rule = next(r for r in load_rules() if r.id == "HF202")
    text = explain(rule)
    assert "not concave" in text or "concave only when" in text
    assert "| `t_crit` | `3.0` |" in text
    assert rule.example is not None and rule.example in text
