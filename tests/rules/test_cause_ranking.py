"""A finding that names a program bug ranks above the symptom it produces."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hfault.report.model import rank
from hfault.rules import evaluate, load_rules
from tests.rules.fixture_report import build, resolve

FIXTURES = Path(__file__).parent / "fixtures"


def _ranked(which: str) -> list[str]:
    spec = resolve(tomllib.loads((FIXTURES / "HF001.toml").read_text()), which)
    return [f.rule for f in rank(evaluate(build(spec), load_rules()).findings)]


def test_nan_after_gradients_never_reset_ranks_below_the_missing_zero_grad() -> None:
    rules = _ranked("fires_after_stale_gradients")
    assert rules.index("HF016") < rules.index("HF001")


def test_nan_alone_ranks_first() -> None:
    assert _ranked("fires")[0] == "HF001"


def _ranked_in(rule_file: str, which: str) -> list[tuple[str, str | None]]:
    spec = resolve(tomllib.loads((FIXTURES / rule_file).read_text()), which)
    return [(f.rule, f.component) for f in rank(evaluate(build(spec), load_rules()).findings)]


def test_padding_read_by_every_attention_ranks_below_a_specific_fault() -> None:
    """No module masks the padding: a model-wide design (score 2), listed after the one layer
    whose causal mask leaks; a mask lost by one module while others apply it ranks high."""
    found = _ranked_in("HF216.toml", "ranking_model_wide")
    assert found[0] == ("HF207", "blocks.1.attn"), found
    assert [r for r, _ in found].count("HF216") == 2
    lost = _ranked_in("HF216.toml", "fires")
    assert lost[0] == ("HF216", "pool.mab"), lost
