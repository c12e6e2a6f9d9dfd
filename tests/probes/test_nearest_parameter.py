"""The output layer a flagged loss input came from: the trainable leaf nearest it in the
autograd graph, a learnable temperature passed over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hfault
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


class _Similarity(nn.Module):
    """Cosines times a learnable temperature: the module that returns the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * a @ b.T


class _DualEncoder(nn.Module):
    def __init__(self, own_module: bool) -> None:
        super().__init__()
        self.query_tower, self.doc_tower = nn.Linear(8, 4), nn.Linear(6, 4)
        self.own_module = own_module
        if own_module:
            self.similarity = _Similarity()
        else:  # CLIP's layout: the temperature is a parameter of the whole model
            self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        q, d = self.query_tower(q), self.doc_tower(d)
        if self.own_module:
            return self.similarity(q, d)
        return self.logit_scale.exp() * q @ d.T


@pytest.mark.parametrize(("own_module", "named"), [(True, {"similarity"}),
                                                   (False, {"query_tower", "doc_tower"})])
def test_probabilities_into_the_loss_name_the_module_that_returned_the_logits(
        tmp_path: Path, own_module: bool, named: set[str]) -> None:
    """A temperature held by the module that returns the logits names that module (HF013 on a
    dual encoder named one of its towers); one held by the whole model is passed over."""
    torch.manual_seed(0)
    model = _DualEncoder(own_module)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = tmp_path / "r.json"
    with hfault.watch(json=report, max_steps=3, optimizers=[opt], curvature=False):
        for _ in range(3):
            logits = model(torch.randn(5, 8), torch.randn(5, 6))
            loss = F.cross_entropy(logits.softmax(-1), torch.arange(5))  # the bug
            opt.zero_grad()
            loss.backward()
            opt.step()
    (entry,) = json.loads(report.read_text())["loss_inputs"]
    assert entry["kind"] == "probabilities"
    assert entry["output_component"] in named
