"""The output layer a flagged loss input came from: the trainable leaf nearest it in the
autograd graph, a learnable temperature passed over."""

from __future__ import annotations

import torch
from torch import nn

from hfault.probes.loss_input import nearest_parameter


def test_the_layer_that_made_the_logits_not_the_temperature_that_scales_them() -> None:
    image, text = nn.Linear(8, 4), nn.Linear(6, 4)
    logit_scale = nn.Parameter(torch.tensor(2.0))  # CLIP's
    logits = logit_scale.exp() * image(torch.randn(5, 8)) @ text(torch.randn(5, 6)).T
    found = nearest_parameter(logits.softmax(-1))
    assert found is not None and any(found is p for p in (image.weight, image.bias,
                                                           text.weight, text.bias))


def test_a_scalar_is_returned_when_nothing_else_made_the_input() -> None:
    bias = nn.Parameter(torch.tensor(0.5))
    assert nearest_parameter(torch.randn(4, 3) + bias) is bias
    head = nn.Linear(3, 2)
    assert nearest_parameter(head(torch.randn(4, 3))) is not None
    assert nearest_parameter(head(torch.randn(4, 3)).detach()) is None  # no graph
