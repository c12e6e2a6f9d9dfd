"""Attention found by what a module computes, not by its name: a softmax over scores made by
a product of two activations (q·kᵀ), or an SDPA call, inside a module nothing names attention
(a PaLM-style block, a ``Block`` with its attention inline)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hfault.probes.attention import scores_of_two_activations
from tests.conftest import SCRIPTS


def test_scores_of_queries_and_keys_are_told_from_a_layer_output() -> None:
    x = torch.randn(2, 5, 8)
    proj, router = nn.Linear(8, 16), nn.Linear(8, 4)
    q, k = proj(x).split(8, -1)
    temperature = nn.Parameter(torch.tensor(0.5))
    assert scores_of_two_activations(q @ k.transpose(-2, -1) / 8 ** 0.5)
    assert scores_of_two_activations(torch.einsum("bqd,bkd->bqk", q, k).masked_fill(
        torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf")))
    assert scores_of_two_activations((q * temperature) @ k.transpose(-2, -1))  # scale param
    assert not scores_of_two_activations(router(x))  # a router's or classifier's logits
    assert not scores_of_two_activations(x @ proj.weight.T)  # activation × weight
    assert not scores_of_two_activations(router(x).detach())  # no graph: nothing to read


@pytest.mark.parametrize("options, finding", [
    ([], None),
    (["--bug"], ("HF208", "error", "blocks.1")),
    (["--bug", "--sdpa"], ("HF208", "error", "blocks.1")),
])
def test_inline_attention_is_found_and_judged(cli, options: list[str], finding) -> None:
    done = cli("diagnose", str(SCRIPTS / "inline_attention_train.py"), "--no-curvature",
               "--", "--steps", "40", *options)
    report = done.report
    assert {c["attention"] for c in report["components"] if c["name"].startswith("blocks.")} == {
        "blocks.0", "blocks.1", "blocks.2"}
    assert set(report["snapshots"][0]["attention"]) == {"blocks.0", "blocks.1", "blocks.2"}
    found = [(f["rule"], f["severity"], f.get("component")) for f in report["findings"]]
    assert found == ([finding] if finding else []), found


def test_a_router_softmax_is_not_taken_for_attention() -> None:
    # moe_tagger-like gate: softmax over experts of a Linear's output (B, T, E), 3-D like
    # attention weights, but activation × weight: no module is found
    from hfault.probes.attention import AttentionProbe

    gate = nn.Linear(8, 4)

    class Router(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate = gate

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.softmax(self.gate(x), dim=-1)

    probe = AttentionProbe(lambda m: False)
    probe.start()
    try:
        Router()(torch.randn(2, 5, 8))
    finally:
        probe.stop()
    assert probe.found == {} and probe.stats == {}
