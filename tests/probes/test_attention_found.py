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


def test_one_query_per_sample_is_told_from_a_similarity_of_two_sets() -> None:
    """(batch, slots) scores of a memory hop come from a batched product; a contrastive
    (batch, batch) similarity from one ``mm``: only the first is attention."""
    u, memory = torch.randn(4, 8, requires_grad=True), torch.randn(4, 6, 8, requires_grad=True)
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    assert scores_of_two_activations(torch.einsum("bd,bmd->bm", u * 1, memory * 1), batched=True)
    assert scores_of_two_activations(torch.bmm(memory * 1, (u * 1).unsqueeze(2)).squeeze(2),
                                     batched=True)
    assert scores_of_two_activations((a * 1) @ (b * 1).T)  # two activations, yet ...
    assert not scores_of_two_activations((a * 1) @ (b * 1).T, batched=True)  # ... not batched


def test_a_contrastive_similarity_softmax_is_not_taken_for_attention() -> None:
    from hfault.probes.attention import AttentionProbe

    class TwoTowers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.softmax(self.a(x) @ self.b(y).T, dim=-1)

    probe = AttentionProbe(lambda m: False)
    probe.start()
    try:
        TwoTowers()(torch.randn(4, 8), torch.randn(4, 8))
    finally:
        probe.stop()
    assert probe.found == {} and probe.stats == {}


@pytest.mark.parametrize("bug", [False, True])
def test_memory_hops_are_found_and_judged(cli, bug: bool) -> None:
    done = cli("diagnose", str(SCRIPTS / "memory_hops_train.py"), "--no-curvature",
               "--fail-on", "never", "--", "--steps", "40", *(["--bug"] if bug else []))
    report = done.report
    assert set(report["snapshots"][0]["attention"]) == {"hops.0", "hops.1", "hops.2"}
    found = [(f["rule"], f["severity"], f.get("component")) for f in report["findings"]
             if f["severity"] != "info"]
    if bug:
        assert found[0] == ("HF208", "error", "hops.0"), found
    else:
        assert found == [], found
