"""Product reuse: ``ritz_max`` (seeded Rayleigh–Ritz), the preconditioned λ it feeds in
``measure``, and the fused per-block norms of a column. References are dense matrices."""

from __future__ import annotations

import pytest
import torch

from hfault.curvature import (
    CurvatureSettings,
    HessianOperator,
    block_stability_setup,
    lanczos,
    measure,
    rademacher,
)
from hfault.curvature.hvp import dot64
from hfault.curvature.lanczos import ritz_max
from tests.curvature.curv_models import make_attention, make_mha, make_mlp, reference


def _sym(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return 0.5 * (a + a.T)


def test_seeded_with_one_vector_is_lanczos() -> None:
    """One start vector and its product: the same Krylov space, so the same λmax as Lanczos."""
    a = _sym(40, 0)
    for m in (3, 6, 12):
        lz = lanczos(lambda v: a @ v, 40, steps=m, tol=0.0,
                     generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(1)  # the same start vector as Lanczos draws
        q = rademacher(40, generator=g, dtype=torch.float64, device="cpu") / 40**0.5
        calls: list[int] = []

        def mv(v: torch.Tensor, calls: list[int] = calls) -> torch.Tensor:
            calls.append(1)
            return a @ v

        rr = ritz_max(mv, q[None], (a @ q)[None], steps=m - 1, tol=0.0)
        assert rr.steps == len(calls) == m - 1
        assert rr.lambda_max == pytest.approx(lz.lambda_max, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_seed_subspace_gives_a_sound_lower_bound(seed: int) -> None:
    """Non-orthogonal, dependent and zero seed rows: θ ≤ λmax, |θ − λ| ≤ residual, and with
    enough steps the exact λmax."""
    n = 30
    a = _sym(n, 10 + seed)
    lam = torch.linalg.eigvalsh(a)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, n, generator=g, dtype=torch.float64) * torch.linspace(0.01, 100, n)
    x = torch.cat([x, 2.0 * x[:1], torch.zeros(1, n)])  # a dependent row and a zero row
    ax = x @ a
    for steps in (0, 3, 8):
        r = ritz_max(lambda v: a @ v, x, ax, steps=steps, tol=0.0)
        assert r.steps == steps
        assert r.lambda_max <= float(lam[-1]) + 1e-10
        assert r.lambda_min >= float(lam[0]) - 1e-10
        assert float((lam - r.lambda_max).abs().min()) <= r.residual_max + 1e-10
        assert float((lam - r.lambda_min).abs().min()) <= r.residual_min + 1e-10
    r = ritz_max(lambda v: a @ v, x, ax, steps=n, tol=1e-12)
    assert r.converged
    assert r.lambda_max == pytest.approx(float(lam[-1]), rel=1e-9)


def test_full_span_needs_no_product() -> None:
    a = _sym(6, 3)
    x = torch.eye(6, dtype=torch.float64) + 0.1
    r = ritz_max(lambda v: pytest.fail("no product expected"), x, x @ a, steps=5, tol=1e-12)
    assert r.steps == 0 and r.converged
    assert r.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(a)[-1]), rel=1e-12)


def _adam(case, steps: int = 3) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(case.params, lr=1e-2, weight_decay=0.1)  # coupled L2: l2 = 0.1
    for _ in range(steps):
        opt.zero_grad()
        case.loss_fn().backward()
        opt.step()
    for p in case.params:
        p.grad = None
    return opt


@pytest.mark.parametrize("make", [make_mlp, make_attention])
def test_preconditioned_lambda_against_dense(make) -> None:
    """λ̃ = λmax(D(H_bb + l2·I)D) from reused products + residual-driven products, vs dense."""
    case = make()
    opt = _adam(case)
    d = reference(case)
    setups = {b.name: block_stability_setup(opt, b, case.params) for b in case.blocks}
    for tol, m in ((1e-2, 10), (1e-10, 40)):
        op = HessianOperator(case.loss_fn(), case.params, case.blocks)
        snap = measure(op, CurvatureSettings(probes=3, lanczos_steps=m, precond_tol=tol),
                       stability_setups=setups, generator=torch.Generator().manual_seed(0))
        for i, b in enumerate(case.blocks):
            setup = setups[b.name]
            grad = op.gradient(i) + setup.rule.l2 * op.flatten(i, [p.detach() for p in op.params])
            dd = setup.for_gradient(grad).inv_sqrt_p
            assert dd is not None
            h = d.sub(b, b) + 0.1 * torch.eye(dd.numel(), dtype=torch.float64)
            lam = torch.linalg.eigvalsh(dd[:, None] * h * dd[None, :])
            got = snap.block(b.name)
            assert got.lambda_precond is not None and got.precond_residual is not None
            assert got.lambda_precond <= float(lam[-1]) * (1 + 1e-10) + 1e-12
            near = float((lam - got.lambda_precond).abs().min())
            assert near <= got.precond_residual + 1e-9 * float(lam.abs().max())
            if tol < 1e-6:
                assert got.lambda_precond == pytest.approx(float(lam[-1]), rel=1e-8)
        op.close()


@pytest.mark.parametrize("make", [make_mlp, make_mha])
def test_column_block_norms_are_fused_correctly(make) -> None:
    case = make()
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    gen = torch.Generator().manual_seed(0)
    for b in range(len(case.blocks)):
        v = torch.randn(op.numel(b), generator=gen, dtype=torch.float64)
        col = op.column(b, v)
        want = torch.stack([dot64(c, c) for c in col.blocks])
        torch.testing.assert_close(col.block_sq, want, rtol=1e-13, atol=0)
        (batched,) = op.columns(b, v[None])
        torch.testing.assert_close(batched.block_sq, want, rtol=1e-10, atol=1e-14)
