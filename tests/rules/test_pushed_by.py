"""``pushed_by_component``: a component downstream in the forward whose weights grew ≥ 10× (and
≥ 10× this one's) scales this one's gradients and curvature (chain rule); HF201 records it, so
the finding is shown as that component's consequence, without a fix of its own."""

from __future__ import annotations

from hfault.rules import load_rules
from hfault.rules.engine import evaluate
from hfault.rules.features import Features
from tests.rules.fixture_report import build


def _report(growth: dict[str, float]) -> dict:
    names = ["embeddings", "word_rnn", "sent_rnn", "classifier"]
    return build({"steps": [1, 25, 50, 75], "components": [
        {"name": n, "metrics": {"weight_norm": [1.0, 2.0, 4.0, growth.get(n, 1.5)]}}
        for n in names]})


def test_the_component_downstream_that_grew_pushes_those_before_it() -> None:
    features = Features(_report({"word_rnn": 148.0}))
    pushed = {n: features.component_features(n)["pushed_by_component"] for n in features.by_name}
    assert pushed == {"embeddings": "word_rnn", "word_rnn": None, "sent_rnn": None,
                      "classifier": None}


def test_growth_below_ten_or_close_to_its_own_pushes_nothing() -> None:
    assert Features(_report({"word_rnn": 8.0})).component_features(
        "embeddings")["pushed_by_component"] is None
    assert Features(_report({"word_rnn": 148.0, "embeddings": 20.0})).component_features(
        "embeddings")["pushed_by_component"] is None


def test_hf201_carries_it_as_evidence() -> None:
    report = _report({"word_rnn": 148.0})
    for snap in report["snapshots"]:  # sustained far beyond the limit, as in the curvature demo
        snap["metrics"]["embeddings"].update(stability_ratio=464.0, lr=1.0, lambda_tilde=1760.0,
                                             suggested_lr=0.00173)
    hf201 = [r for r in load_rules() if r.id == "HF201"]
    found = [f for f in evaluate(report, hf201).findings if f.component == "embeddings"]
    assert found and found[0].evidence["pushed_by"] == "word_rnn"
