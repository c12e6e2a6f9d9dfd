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
