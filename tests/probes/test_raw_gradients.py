"""The gradients as backward left them (``probes.raw_gradients``): taken after every backward in a
loop that changes its gradients before the step, so a NaN that clipping spreads to every
component is still placed where backward put it, however late it appears."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession
from hfault.probes.numerics import NumericsProbe
from hfault.probes.registry import diagnosis_probes


class Gated(nn.Module):
    """``gate`` enters as log(gate).exp(): finite forward at gate = 0, NaN gradient (0 * inf)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.gate = nn.Parameter(torch.ones(8))
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.log(self.gate).exp() + h)


def _events(clip_from: int, bad_step: int = 6) -> list[dict[str, object]]:
    session = CaptureSession(Schedule(auto=False))
    probes = diagnosis_probes(session)
    session.add_all(probes)
    with session:
        torch.manual_seed(0)
        model = Gated()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for step in range(1, bad_step + 2):
            if step == bad_step:
                with torch.no_grad():
                    model.gate.zero_()
            x = torch.randn(8, 4)
            loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            if step >= clip_from:
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    numerics = next(p for p in probes if isinstance(p, NumericsProbe))
    return [e.to_dict() for e in numerics.events]


@pytest.mark.parametrize("clip_from", [1, 3])
def test_a_late_nan_gradient_is_placed_before_the_scripts_clipping(clip_from: int):
    # Clipping with a NaN total norm turns every gradient NaN by the step; the watch, having
    # seen the clipping change gradients at an earlier step, took them after backward.
    first = _events(clip_from)[0]
    assert (first["kind"], first["step"], first["where"]) == ("gradient", 6, "gate"), first
    assert "gradient processing" in str(first["detail"])


def test_without_clipping_the_nan_gradient_is_placed_from_the_step():
    first = _events(clip_from=100)[0]
    assert (first["kind"], first["step"], first["where"]) == ("gradient", 6, "gate"), first
    assert "gradient processing" not in str(first["detail"])
