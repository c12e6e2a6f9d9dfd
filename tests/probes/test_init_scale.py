"""Initialization statistics against what the standard initializers produce by construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hfault.components import build_components
from hfault.probes.init_scale import init_statistics


def _components(model: nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return {c.name: c for c in build_components([opt], list(model.modules()), [])}


def test_default_linear_and_conv_inits_sit_at_one_over_root_three() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3), nn.Flatten(), nn.Linear(512, 256), nn.LayerNorm(256))
    comps = _components(model)
    conv, lin = init_statistics(comps["0"]), init_statistics(comps["2"])
    assert conv is not None and lin is not None
    assert conv["fan_in"] == 8 * 9 and lin["fan_in"] == 512
    # kaiming_uniform(a=√5): U(±1/√fan_in), RMS = 1/√(3·fan_in) → scale 1/√3
    assert conv["scale"] == pytest.approx(1 / math.sqrt(3), rel=0.05)
    assert lin["scale"] == pytest.approx(1 / math.sqrt(3), rel=0.02)
    assert lin["mean_ratio"] < 4 / math.sqrt(512 * 256)
    assert init_statistics(comps["3"]) is None  # a norm layer's 1-D gain


def test_mis_scaled_and_shifted_weights_and_what_is_not_judged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[1].weight.mul_(50)
        model[2].weight.add_(5 * model[2].weight.std())
    comps = _components(model)
    assert init_statistics(comps["0"]) is None  # an embedding is a lookup table
    big, shifted = init_statistics(comps["1"]), init_statistics(comps["2"])
    assert big is not None and big["scale"] == pytest.approx(50 / math.sqrt(3), rel=0.05)
    assert shifted is not None and shifted["mean_ratio"] == pytest.approx(5.0, rel=0.01)


def test_fused_slices_and_transposed_conv1d() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4)
    comps = _components(nn.Sequential(mha))
    q = next(c for c in comps.values() if c.role == "query")
    stats = init_statistics(q)
    assert stats is not None and stats["shape"] == [32, 32] and stats["fan_in"] == 32
    conv1d = Conv1D(96, 32)  # GPT-2 stores (in, out) and draws N(0, 0.02)
    stats = init_statistics(_components(nn.Sequential(conv1d))["0"])
    assert stats is not None and stats["fan_in"] == 32
    assert stats["scale"] == pytest.approx(0.02 * math.sqrt(32), rel=0.1)


def test_per_head_scalars_in_a_broadcast_shape_have_no_fan_in() -> None:
    """Swin V2's logit scale: a (heads, 1, 1) parameter set to log 10 on the attention module
    itself, a column of per-head scalars; a Linear of one input is still a map."""

    class CosineAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(4, 1, 1)))
            self.qkv = nn.Linear(16, 48)

    torch.manual_seed(0)
    model = nn.Sequential(CosineAttention(), nn.Linear(1, 16))
    comps = _components(model)
    scale = next(c for name, c in comps.items() if name.endswith("logit_scale"))
    assert init_statistics(scale) is None
    one_input = init_statistics(comps["1"])
    assert one_input is not None and one_input["fan_in"] == 1


def test_a_stack_of_expert_matrices_is_judged_per_matrix() -> None:
    """Mixtral's experts hold one (experts, 2·ffn, hidden) weight drawn N(0, 0.02): each matrix
    maps ``hidden`` inputs, so its scale is 0.02·√hidden, not 0.02·√(2·ffn·hidden)."""
    from transformers import MixtralConfig, MixtralModel

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=50, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=4, num_experts_per_tok=2)
    comps = _components(MixtralModel(config))
    experts = next(c for name, c in comps.items() if name.endswith("experts.gate_up_proj"))
    stats = init_statistics(experts)
    assert stats is not None and len(stats["shape"]) == 3 and stats["fan_in"] == 64
    assert stats["scale"] == pytest.approx(0.02 * math.sqrt(64), rel=0.1)
