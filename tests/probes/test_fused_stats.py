"""The fused per-step statistics equal the per-component computation they replace, on whole
parameters and on slices of fused ones (nn.MultiheadAttention's in_proj split into q/k/v)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hfault.capture.host_reads import HostReads
from hfault.components import Component, build_components
from hfault.probes.fused_stats import FusedStats, StepLayout
from tests.conftest import SCRIPTS, assert_same_training, run_plain


def reference_stats(component: Component, optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The statistics one component at a time, as hfault computed them before fusing."""
    grads, missing, zeros = [], 0, 0
    for part in component.parts:
        g = part.param.grad
        if g is None:
            missing += part.numel
            continue
        view = part.view(g)
        grads.append(view)
        zeros += int((view == 0).sum())
    weights = [part.view(part.param) for part in component.parts]

    def sq(ts: list[torch.Tensor]) -> float:
        return float(torch.stack([t.detach().double().pow(2).sum() for t in ts]).sum()) if ts \
            else 0.0

    def lr(p: torch.Tensor) -> float | None:
        group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
        return None if group is None else float(group["lr"])

    grad_sq, numel = sq(grads), component.numel
    lrs = {x for part in component.parts if (x := lr(part.param)) is not None}
    return {
        "grad_norm": math.sqrt(grad_sq) if math.isfinite(grad_sq) else grad_sq,
        "grad_rms": math.sqrt(grad_sq / numel) if math.isfinite(grad_sq) else grad_sq,
        "weight_norm": math.sqrt(sq(weights)),
        "zero_grad_fraction": (zeros + missing) / numel,
        "grad_missing": missing == numel,
        "lr": max(lrs) if lrs else None,
    }


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.unused = nn.Linear(8, 8)  # in the optimizer, never in the graph: grad None
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].relu().mean(1))


def _step(poison: float | None = None) -> tuple[list[Component], torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net()
    modules = list(model.modules())
    opt = torch.optim.SGD([{"params": [*model.embed.parameters(), *model.attn.parameters(),
                                       *model.unused.parameters()]},
                           {"params": model.head.parameters(), "lr": 0.5}], lr=0.1)
    x = torch.randint(0, 10, (4, 5))
    x[:, 0] = 3  # embedding rows never looked up get exactly-zero gradients
    model(x).square().mean().backward()
    if poison is not None:
        assert model.attn.in_proj_weight.grad is not None
        model.attn.in_proj_weight.grad[20, 0] = poison  # a row of the v slice
    return build_components([opt], modules, ()), opt


@pytest.mark.parametrize("poison", [None, math.nan, math.inf])
def test_fused_statistics_equal_the_per_component_ones(poison: float | None):
    components, opt = _step(poison)
    names = {c.name for c in components}
    assert {"attn.in_proj.query", "attn.in_proj.key", "attn.in_proj.value"} <= names
    reads = HostReads()
    stats = FusedStats.measure(StepLayout.build(opt, components, components), reads)
    fused = stats.metrics()
    assert stats.finite() is (poison is None)
    assert fused["unused"]["grad_missing"] is True
    assert 0 < fused["embed"]["zero_grad_fraction"] < 1
    assert fused["head"]["lr"] == 0.5
    for comp in components:
        expected = reference_stats(comp, opt)
        got = fused[comp.name]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, float) and math.isfinite(value):
                # norms from float32 chunks summed in float64 (hfault.probes.many_norms)
                assert got[key] == pytest.approx(value, rel=5e-6), (comp.name, key)
            else:
                assert str(got[key]) == str(value), (comp.name, key)
    bad = {c.name for c in components if not math.isfinite(float(fused[c.name]["grad_norm"]))}
    assert bad == (set() if poison is None else {"attn.in_proj.value"})


def test_a_huge_finite_gradient_is_not_taken_for_a_nan():
    """Entries of 1e30 overflow a float32 norm: the step is still finite and its norm exact."""
    components, opt = _step()
    assert components[0].parts[0].param.grad is not None
    components[0].parts[0].param.grad.fill_(1e30)
    reads = HostReads()
    stats = FusedStats.measure(StepLayout.build(opt, components, components), reads)
    assert stats.finite() is True
    part = components[0].parts[0]
    expected = float(part.view(part.param.grad).double().norm())
    assert stats.metrics()[components[0].name]["grad_norm"] == pytest.approx(expected, rel=1e-12)


def test_sparse_gradients_are_measured_and_training_is_unchanged(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``nn.Embedding(sparse=True)`` gives a sparse ``.grad``, which norm kernels reject: it used
    to crash hfault at the first step (an internal error, exit 4)."""
    script = SCRIPTS / "sparse_train.py"
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    run_plain(script, ["--steps", "12", "--out", str(plain)])
    result = cli("diagnose", str(script), "--no-curvature", "--fail-on", "never", "--",
                 "--steps", "12", "--out", str(watched))
    assert result.returncode == 0, result.stderr
    last = result.report["snapshots"][-1]["metrics"]["Embedding"]
    # 32 ids of 100 rows: at least 68 rows got no gradient, their entries are exactly zero
    assert last["grad_norm"] > 0 and last["zero_grad_fraction"] >= 0.68
    assert_same_training(plain, watched)
