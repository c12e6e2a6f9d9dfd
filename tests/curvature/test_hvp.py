"""HessianOperator: products against the dense Hessian, graph and side-effect guarantees."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hfault.curvature import (
    CurvatureSettings,
    HessianOperator,
    measure,
    rademacher,
    whole,
)
from tests.curvature.curv_models import (
    make_distilbert,
    make_mha,
    make_mlp,
    make_scalar_param,
    reference,
)


def _dense_column(d, blocks, b, v):  # H[:, b] v restricted to every block, from the dense rows
    return [d.sub(a, blocks[b]) @ v for a in blocks]


@pytest.mark.parametrize(
    "make", [make_mlp, make_mha, make_scalar_param, lambda: make_scalar_param(mixed=True)]
)
def test_column_and_bb_match_dense(make) -> None:
    case = make()
    d = reference(case)
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    gen = torch.Generator().manual_seed(0)
    for b in range(len(case.blocks)):
        v = torch.randn(op.numel(b), generator=gen, dtype=torch.float64)
        col = op.column(b, v)
        want = _dense_column(d, case.blocks, b, v)
        for got, ref in zip(col.blocks, want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
        full = d.matrix[:, d.flat_indices(case.blocks[b])] @ v
        torch.testing.assert_close(col.norm_sq, full @ full, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(op.hvp_bb(b, v), want[b], rtol=1e-10, atol=1e-12)
    vs = [torch.randn(op.numel(b), generator=gen, dtype=torch.float64)
          for b in range(len(case.blocks))]
    out = op.hvp_blocks(vs)
    for a, got in enumerate(out):
        ref = sum(d.sub(case.blocks[a], case.blocks[b]) @ vs[b] for b in range(len(vs)))
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert op.hvp_count == 2 * len(case.blocks) + 1


def test_zero_dim_parameter_batched_columns() -> None:
    """A 0-dim parameter (a learnable temperature) alone in a block, batched: the video crash."""
    case = make_scalar_param()
    d = reference(case)
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    b = op.index("logit_scale")
    vs = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    for v, cb in zip(vs, op.columns(b, vs), strict=True):
        for got, ref in zip(cb.blocks, _dense_column(d, case.blocks, b, v), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_batched_columns_equal_loop() -> None:
    case = make_distilbert(layers=1)
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    b = op.index("L0.attention.q_lin")
    gen = torch.Generator().manual_seed(0)
    vs = torch.stack([rademacher(op.numel(b), generator=gen, dtype=torch.float64, device="cpu")
                      for _ in range(3)])
    batched = op.columns(b, vs)
    for v, cb in zip(vs, batched, strict=True):
        c = op.column(b, v)
        for x, y in zip(c.blocks, cb.blocks, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-14)
    assert op.hvp_count == 6


def test_loss_scale_divides_everything() -> None:
    case = make_mlp()
    v = torch.ones(case.params[0].numel() + case.params[1].numel(), dtype=torch.float64)
    plain = HessianOperator(case.loss_fn(), case.params, case.blocks)
    scaled = HessianOperator(1024.0 * case.loss_fn(), case.params, case.blocks, loss_scale=1024.0)
    for x, y in zip(plain.column(0, v).blocks, scaled.column(0, v).blocks, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(plain.gradient(1), scaled.gradient(1), rtol=1e-12, atol=0)


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.spare = nn.Linear(3, 2)  # never called
        self.frozen = nn.Parameter(torch.ones(2))
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.frozen


def test_unused_and_frozen_params_are_zero_rows() -> None:
    torch.manual_seed(0)
    m = _WithUnused().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    params = list(m.parameters())
    idx = {n: names.index(n) for n in names}
    blocks = [whole("fc", idx["fc.weight"], idx["fc.bias"]),
              whole("spare", idx["spare.weight"], idx["spare.bias"]),
              whole("frozen", idx["frozen"])]
    loss = (m(x) ** 2).sum()
    op = HessianOperator(loss, params, blocks)
    assert set(op.unused) == {idx["spare.weight"], idx["spare.bias"], idx["frozen"]}
    assert op.unused_blocks() == ["spare", "frozen"]
    snap = measure(op, CurvatureSettings(probes=4, lanczos_steps=5))
    assert snap.block("spare").trace == 0.0 and snap.block("spare").lambda_max == 0.0
    assert snap.block("fc").trace > 0
    assert "spare" in snap.unused_blocks
    assert snap.edge("fc", "spare").hfro == 0.0


def test_graph_stays_usable_and_grad_untouched() -> None:
    """After measuring, the user's backward gives the same .grad as on an untouched twin."""
    case = make_distilbert(layers=1)
    twin = copy.deepcopy(case.model)
    ids, y = case.inputs, case.targets
    loss = F.cross_entropy(case.model(ids), y)
    assert all(p.grad is None for p in case.params)
    rng = torch.get_rng_state()
    op = HessianOperator(loss, case.params, case.blocks)
    measure(op, CurvatureSettings(budget="economy", coupling_blocks=[b.name for b in
                                                                      case.blocks[:3]]))
    assert torch.equal(torch.get_rng_state(), rng), "global RNG was used"
    assert all(p.grad is None for p in case.params), ".grad was touched"
    op.close()
    loss.backward()
    F.cross_entropy(twin(ids), y).backward()
    for p, q in zip(case.params, twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    with pytest.raises(RuntimeError):
        op.column(0, torch.zeros(op.numel(0), dtype=torch.float64))


def test_linear_param_has_constant_gradient() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    u = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    loss = (w * torch.tensor([5.0, 7.0], dtype=torch.float64)).sum() + (u**2).sum()
    op = HessianOperator(loss, [w, u], [whole("w", 0), whole("u", 1)])
    assert op.linear == (0,)
    assert torch.equal(op.hvp_bb(0, torch.ones(2, dtype=torch.float64)), torch.zeros(2,
                                                                                    dtype=torch.float64))
    torch.testing.assert_close(op.hvp_bb(1, torch.ones(1, dtype=torch.float64)),
                               torch.tensor([2.0], dtype=torch.float64))
