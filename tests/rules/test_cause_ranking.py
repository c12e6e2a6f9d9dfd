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


def test_a_starved_module_read_without_being_called_has_no_place_in_the_forward() -> None:
    """A cut starves every component before it; the last of them in the forward is where the
    gradient stops. A module whose weight is read without calling it (a graph token held in an
    nn.Embedding) has no forward position of its own, and is listed last: it must not rank as
    the last component before the cut."""
    found = [c for r, c in _ranked_in("HF003.toml", "ranking_detach_starves_a_token")
             if r == "HF003"]
    assert found[0] == "layers.0.ffn", found
    assert set(found) == {"atom_emb", "layers.0.ffn", "graph_token"}
