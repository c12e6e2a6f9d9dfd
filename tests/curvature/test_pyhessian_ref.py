"""PyHessian 0.1 as a second reference on the same frozen block, and its side effects undone."""

from __future__ import annotations

import pytest
import torch

from hfault.curvature import CurvatureSettings, HessianOperator, measure
from tests.curvature.curv_models import make_attention, make_mlp, reference

pytest.importorskip("pyhessian")
from hfault.curvature.pyhessian_ref import pyhessian_block


@pytest.mark.parametrize(("make", "block_name"), [(make_attention, "q"), (make_mlp, "fc1")])
def test_pyhessian_agrees_on_a_frozen_block(make, block_name: str) -> None:
    case = make()
    block = next(b for b in case.blocks if b.name == block_name)
    block_params = [case.params[p.index] for p in block.parts]
    d = reference(case, [block])
    exact_tr = d.trace(block)
    ev = d.eigvalsh(block)
    exact_top = float(ev[0]) if abs(float(ev[0])) > abs(float(ev[-1])) else float(ev[-1])

    ref = pyhessian_block(case.model, case.criterion, case.inputs, case.targets, block_params,
                          trace_probes=48, eig_iters=300, eig_tol=1e-8, seed=0)
    op = HessianOperator(case.loss_fn(), case.params, [block])
    ours = measure(op, CurvatureSettings(probes=48, lanczos_steps=30, tol=1e-8, deflate=False),
                   generator=torch.Generator().manual_seed(0)).block(block_name)
    # both stochastic traces: each within 4 SE of exact, and of each other
    assert abs(ref.trace - exact_tr) <= 4 * ref.trace_se
    assert abs(ours.trace - exact_tr) <= 4 * ours.trace_se
    assert abs(ref.trace - ours.trace) <= 4 * (ref.trace_se**2 + ours.trace_se**2) ** 0.5
    # PyHessian's eigenvalue is the largest |λ| (signed), = ours max(|λmin|, |λmax|)
    our_top = ours.lambda_min if abs(ours.lambda_min) > abs(ours.lambda_max) else ours.lambda_max
    assert ref.top_abs_eigenvalue == pytest.approx(exact_top, rel=1e-3)
    assert our_top == pytest.approx(exact_top, rel=1e-9)
    assert abs(ref.top_abs_eigenvalue) == pytest.approx(
        max(abs(ours.lambda_min), abs(ours.lambda_max)), rel=1e-3)


def test_pyhessian_wrapper_restores_model_state() -> None:
    case = make_mlp()
    model = case.model
    model.train()
    model.fc2.eval()  # a mixed state must come back as it was
    model.fc2.bias.requires_grad_(False)
    sentinel = [torch.full_like(p, 7.0) for p in case.params]
    for p, s in zip(case.params, sentinel, strict=True):
        p.grad = s
    rng = torch.get_rng_state()
    pyhessian_block(model, case.criterion, case.inputs, case.targets, [model.fc1.weight],
                    trace_probes=4, eig_iters=5)
    assert model.training and model.fc1.training and not model.fc2.training
    assert [p.requires_grad for p in case.params] == [True, True, True, False]
    for p, s in zip(case.params, sentinel, strict=True):
        assert p.grad is s and not p.grad.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)
