"""Frozen modules: which parts of a training model never train, and whether their weights
still look freshly initialized (entry kurtosis), against tensors with known kurtosis."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfault.probes.frozen import UNTRAINED_KURTOSIS, frozen_modules, kurtosis


@pytest.mark.parametrize(
    "draw, expected",
    [
        (lambda g: torch.rand(256, 64, generator=g) * 2 - 1, 1.8),  # uniform (default Linear)
        (lambda g: torch.randn(256, 64, generator=g), 3.0),  # normal (embeddings, HF init)
        (lambda g: torch.distributions.Laplace(0.0, 1.0).sample((256, 64)), 6.0),  # heavy
    ],
)
def test_kurtosis_matches_the_distribution(draw, expected):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    assert kurtosis(draw(g)) == pytest.approx(expected, rel=0.1)


def test_every_default_initializer_reads_as_untrained():
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64), nn.Conv2d(16, 32, 3), nn.Embedding(100, 32),
              nn.GRU(32, 32), nn.MultiheadAttention(32, 4)]
    for layer in layers:
        big = max((p for p in layer.parameters() if p.dim() >= 2), key=lambda p: p.numel())
        assert kurtosis(big) <= UNTRAINED_KURTOSIS, type(layer).__name__


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.pos = nn.Embedding(16, 16)
        self.body = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)


def test_frozen_modules_lists_fully_frozen_modules_only():
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():  # a "pretrained" embedding: heavy-tailed entries
        net.emb.weight.copy_(torch.distributions.Laplace(0.0, 1.0).sample((50, 16)))
    net.emb.requires_grad_(False)
    net.pos.requires_grad_(False)
    net.norm.requires_grad_(False)
    net.head.bias.requires_grad_(False)  # partly frozen: not listed
    optimized = {id(p) for p in net.pos.parameters()}
    names = {id(m): path for path, m in net.named_modules()}
    found = {e["module"]: e for e in frozen_modules([net], names, optimized, {})}
    assert set(found) == {"emb", "pos", "norm"}
    assert found["emb"]["untrained"] is False and found["emb"]["kurtosis"] > UNTRAINED_KURTOSIS
    assert found["pos"]["untrained"] is True and found["pos"]["in_optimizer"] is True
    assert found["norm"]["untrained"] is None and found["norm"]["numel"] == 32


def test_a_model_that_does_not_train_is_not_judged():
    teacher = _Net().requires_grad_(False)
    assert frozen_modules([teacher], {}, set(), {}) == []


def test_a_sinusoidal_table_frozen_by_design_is_not_untrained():
    """Whisper freezes its encoder's sinusoidal positions: a sine's values have kurtosis 1.5,
    like a uniform draw, but neighbouring positions are nearly alike; iid draws are not."""
    from hfault.probes.frozen import STRUCTURED, neighbour_correlation

    positions, dim = 48, 32
    freq = torch.exp(-torch.arange(dim // 2) * (4.0 / (dim // 2 - 1)))
    angle = torch.arange(positions)[:, None] * freq[None]
    table = torch.cat([angle.sin(), angle.cos()], 1)
    assert kurtosis(table) < UNTRAINED_KURTOSIS
    assert neighbour_correlation(table) > 0.8
    torch.manual_seed(0)
    for draw in (torch.randn(48, 32), torch.rand(48, 32), torch.randn(64, 64, 3)):
        assert neighbour_correlation(draw) < STRUCTURED / 2

    model = nn.Sequential(nn.Embedding(positions, dim), nn.Linear(dim, 2))
    with torch.no_grad():
        model[0].weight.copy_(table)
    model[0].requires_grad_(False)
    (entry,) = frozen_modules([model], {id(model[0]): "0"}, set(), {})
    assert entry["untrained"] is False
