"""Stability thresholds and the preconditioned λ on quadratics with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hfault.curvature import (
    Block,
    BlockPart,
    CurvatureSettings,
    HessianOperator,
    adam_preconditioner,
    block_stability_setup,
    measure,
    stability,
    stability_rule,
    whole,
)

EIGS = torch.tensor([4.0, 2.5, 1.0, 0.5, 0.1], dtype=torch.float64)


def _matrix(eigs: torch.Tensor = EIGS) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(eigs) @ q.T


def _quad_loss(theta: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 0.5 * theta @ a @ theta


def _theta() -> nn.Parameter:
    return nn.Parameter(torch.linspace(-1.0, 1.0, len(EIGS), dtype=torch.float64))


def _measure(theta, a, opt) -> tuple:
    block = whole("theta", 0)
    op = HessianOperator(_quad_loss(theta, a), [theta], [block])
    setup = block_stability_setup(opt, block, [theta])
    snap = measure(op, CurvatureSettings(probes=4, lanczos_steps=5, tol=1e-12,
                                             precond_tol=1e-12),
                   stability_setups={"theta": setup})
    # the setup the measurement used: Adam's P with this step's gradient (coupled L2 included)
    grad = (a @ theta + setup.rule.l2 * theta).detach()
    return snap.block("theta"), setup.for_gradient(grad)


def test_sgd_ratio_and_suggestion() -> None:
    theta, a = _theta(), _matrix()
    opt = torch.optim.SGD([theta], lr=0.7)
    b, _ = _measure(theta, a, opt)
    assert b.stability is not None
    assert b.stability.tau == 2.0 and not b.stability.preconditioned
    assert b.stability.lambda_tilde == pytest.approx(4.0, rel=1e-10)
    assert b.stability.ratio == pytest.approx(0.7 * 4.0 / 2.0, rel=1e-10)
    assert b.stability.suggested_lr == pytest.approx(0.8 * 2.0 / 4.0, rel=1e-10)


def test_sgd_l2_weight_decay_shifts_curvature() -> None:
    theta, a = _theta(), _matrix()
    opt = torch.optim.SGD([theta], lr=0.1, weight_decay=0.3)
    b, _ = _measure(theta, a, opt)
    assert b.stability is not None
    assert b.stability.lambda_tilde == pytest.approx(4.3, rel=1e-10)


def _diverges(opt_factory, lam: float, lr: float, steps: int = 3000) -> bool:
    p = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = opt_factory([p], lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * lam * p**2).sum().backward()
        opt.step()
        x = float(p.detach())
        if not math.isfinite(x) or abs(x) > 1e6:
            return True
    return abs(float(p.detach())) > 1.0


@pytest.mark.parametrize(
    ("kwargs", "tau"),
    [
        ({}, 2.0),
        ({"momentum": 0.9}, 3.8),
        ({"momentum": 0.5, "dampening": 0.5}, 6.0),
        ({"momentum": 0.9, "nesterov": True}, 3.8 / 2.8),
    ],
)
def test_sgd_tau_matches_torch_optimizer_on_a_quadratic(kwargs: dict, tau: float) -> None:
    """τ is the edge of stability of torch.optim.SGD itself: 3% below converges, 3% above not."""
    rule = stability_rule(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0, **kwargs),
                          {"lr": 1.0, "weight_decay": 0.0, "dampening": 0.0, **kwargs})
    assert rule.tau == pytest.approx(tau, rel=1e-12)
    lam = 3.0

    def make(params, lr):
        return torch.optim.SGD(params, lr=lr, **kwargs)

    assert not _diverges(make, lam, 0.97 * tau / lam)
    assert _diverges(make, lam, 1.03 * tau / lam)


def _adam_after_steps(opt_cls, theta, a, steps=3, **kw):
    opt = opt_cls([theta], lr=0.01, **kw)
    for _ in range(steps):
        opt.zero_grad()
        _quad_loss(theta, a).backward()
        opt.step()
    theta.grad = None
    return opt


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioned_lambda(amsgrad: bool) -> None:
    theta, a = _theta(), _matrix()
    opt = _adam_after_steps(torch.optim.Adam, theta, a, amsgrad=amsgrad)
    b, setup = _measure(theta, a, opt)
    st = opt.state[theta]
    if amsgrad:  # the running maximum as read before the step
        v = st["max_exp_avg_sq"] / (1 - 0.999 ** float(st["step"]))
    else:  # this step's gradient g = Aθ folded into v, as Adam's own update does
        g = (a @ theta).detach()
        v = (0.999 * st["exp_avg_sq"] + 0.001 * g * g) / (1 - 0.999 ** (float(st["step"]) + 1))
    d = (v.sqrt() + 1e-8).rsqrt()
    torch.testing.assert_close(setup.inv_sqrt_p, d, rtol=1e-12, atol=0)
    want = float(torch.linalg.eigvalsh(d[:, None] * a * d[None, :])[-1])
    assert b.lambda_precond == pytest.approx(want, rel=1e-9)
    assert b.stability is not None and b.stability.preconditioned
    assert b.stability.tau == pytest.approx(38.0)
    assert b.stability.ratio == pytest.approx(0.01 * want / 38.0, rel=1e-9)
    assert b.stability.suggested_lr == pytest.approx(min(0.01, 0.8 * 38.0 / want), rel=1e-9)


def test_adam_coupled_l2_and_adamw_decoupled() -> None:
    theta, a = _theta(), _matrix()
    opt = _adam_after_steps(torch.optim.Adam, theta, a, weight_decay=0.2)
    b, setup = _measure(theta, a, opt)
    d = setup.inv_sqrt_p
    assert d is not None and setup.rule.l2 == 0.2
    shifted = a + 0.2 * torch.eye(len(EIGS), dtype=torch.float64)
    want = float(torch.linalg.eigvalsh(d[:, None] * shifted * d[None, :])[-1])
    assert b.lambda_precond == pytest.approx(want, rel=1e-9)
    theta2 = _theta()
    optw = _adam_after_steps(torch.optim.AdamW, theta2, a, weight_decay=0.2)
    rule = block_stability_setup(optw, whole("theta", 0), [theta2]).rule
    assert rule.optimizer == "adamw" and rule.l2 == 0.0 and rule.tau == pytest.approx(38.0)


def test_adam_without_state_falls_back() -> None:
    theta, a = _theta(), _matrix()
    opt = torch.optim.Adam([theta], lr=0.01, betas=(0.8, 0.99))
    b, setup = _measure(theta, a, opt)
    assert setup.inv_sqrt_p is None and "no Adam state" in setup.rule.note
    assert b.stability is not None and not b.stability.preconditioned
    assert b.stability.tau == pytest.approx(3.6 / 0.2)
    assert b.stability.lambda_tilde == pytest.approx(4.0, rel=1e-10)


def test_unknown_optimizer_and_negative_curvature() -> None:
    theta = _theta()
    a = -_matrix()
    opt = torch.optim.RMSprop([theta], lr=0.1)
    b, setup = _measure(theta, a, opt)
    assert setup.rule.optimizer == "unknown" and "RMSprop" in setup.rule.note
    assert b.stability is not None
    assert b.stability.lambda_tilde == pytest.approx(-0.1, rel=1e-9)
    assert b.stability.suggested_lr is None
    res = stability(stability_rule(None, {"lr": 0.5}), 0.0)
    assert res.suggested_lr is None and res.ratio == 0.0


def test_sliced_preconditioner() -> None:
    w = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    state = {0: {"step": torch.tensor(2.0), "exp_avg_sq": w}}
    block = Block("rows", (BlockPart(0, 0, 1, 3),))
    d = adam_preconditioner(block, state, {"betas": (0.9, 0.5), "eps": 0.0})
    assert d is not None
    want = (w[1:3].reshape(-1) / (1 - 0.25)).sqrt().rsqrt()
    torch.testing.assert_close(d, want)


def test_adam_preconditioner_of_the_step_taken_matches_torch_adam() -> None:
    """P folded with the step's gradient is exactly the denominator torch's Adam divides by, and
    a row no gradient has reached yet (v = 0, an unused embedding row) is not inflated to ε^-1/2."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    opt = torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(3):
        opt.zero_grad()
        loss = (w[1:] ** 2).sum()  # row 0 never gets a gradient: its v stays 0
        loss.backward()
        opt.step()
    g = torch.zeros_like(w)
    g[0] = torch.tensor([0.5, -1.0, 2.0])  # row 0's first gradient
    g[1:] = 2 * w.detach()[1:]
    block = Block("w", (BlockPart(0),))
    group = opt.param_groups[0]
    setup = block_stability_setup(opt, block, [w]).for_gradient(g.reshape(-1))
    stale = adam_preconditioner(block, {0: opt.state[w]}, group)
    assert setup.inv_sqrt_p is not None and stale is not None
    assert float(stale[:3].max()) == pytest.approx(1e4)  # eps^-1/2: the old inflation
    w.grad = g.clone()
    opt.step()
    st = opt.state[w]
    denom = (st["exp_avg_sq"] / (1 - 0.99 ** float(st["step"]))).sqrt() + 1e-8
    torch.testing.assert_close(setup.inv_sqrt_p, denom.reshape(-1).rsqrt(), rtol=1e-12, atol=0)
    assert float(setup.inv_sqrt_p[:3].max()) < 10
