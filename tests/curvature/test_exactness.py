"""Estimators against the dense double-backward Hessian on real tiny float64 models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from hfault.curvature import CurvatureSettings, CurvatureSnapshot, HessianOperator, measure
from hfault.curvature.dense import DenseHessian
from tests.curvature.curv_models import (
    Case,
    flat_grad,
    make_attention,
    make_distilbert,
    make_han,
    make_mha,
    make_mlp,
    reference,
)


@dataclass
class Measured:
    case: Case
    blocks: list
    dense: DenseHessian
    snap: CurvatureSnapshot
    plain: CurvatureSnapshot


def _distilbert() -> Case:
    c = make_distilbert()
    c.blocks = [b for b in c.blocks if b.name.startswith("L1.attention")] + [
        b for b in c.blocks if b.name == "L0.ffn.lin1"
    ]
    return c


MODELS = {
    "mlp": make_mlp,
    "attention": make_attention,
    "han": make_han,
    "mha_sliced": make_mha,
    "distilbert": _distilbert,
}


@pytest.fixture(scope="module", params=list(MODELS))
def measured(request: pytest.FixtureRequest) -> Measured:
    case = MODELS[request.param]()
    dense = reference(case, case.blocks)
    out = []
    for deflate in (True, False):
        op = HessianOperator(case.loss_fn(), case.params, case.blocks)
        gen = torch.Generator().manual_seed(1)
        settings = CurvatureSettings(probes=24, lanczos_steps=30, tol=1e-6, deflate=deflate)
        out.append(measure(op, settings, generator=gen))
        op.close()
    return Measured(case, case.blocks, dense, out[0], out[1])


def _scale(m: Measured) -> float:
    return max(float(m.dense.eigvalsh(b).abs().max()) for b in m.blocks)


@pytest.mark.parametrize("which", ["snap", "plain"])
def test_block_traces_within_4se(measured: Measured, which: str) -> None:
    snap = getattr(measured, which)
    floor = 1e-10 * _scale(measured)
    for b in measured.blocks:
        est = snap.block(b.name)
        exact = measured.dense.trace(b)
        assert abs(est.trace - exact) <= 4 * est.trace_se + floor, (b.name, est.trace, exact)
        h = measured.dense.sub(b, b)
        offdiag = float((h - torch.diag(torch.diagonal(h))).abs().max())
        if which == "plain" and offdiag > 1e-9 * _scale(measured):
            assert est.trace_se > 0, b.name


def test_extreme_eigenvalues_within_ritz_residual(measured: Measured) -> None:
    floor = 1e-9 * _scale(measured)
    for b in measured.blocks:
        est = measured.snap.block(b.name)
        ev = measured.dense.eigvalsh(b)
        assert est.lambda_max is not None and est.lambda_min is not None
        assert est.eig_residual_max is not None and est.eig_residual_min is not None
        assert abs(est.lambda_max - float(ev[-1])) <= est.eig_residual_max + floor, b.name
        assert abs(est.lambda_min - float(ev[0])) <= est.eig_residual_min + floor, b.name
        assert est.lambda_min <= est.lambda_max


def _quad_var(a: torch.Tensor) -> float:
    """Exact Var ‖A z‖² for Rademacher z: 2(‖AᵀA‖²_F − Σ_i (AᵀA)_ii²)."""
    b = a.T @ a
    return 2 * (float((b**2).sum()) - float((torch.diagonal(b) ** 2).sum()))


@pytest.mark.parametrize("which", ["snap", "plain"])
def test_frobenius_couplings_and_kappa(measured: Measured, which: str) -> None:
    """‖H_ab‖_F within 4 SE; kappa in [0, 1] and close to exact.

    Deflated estimates are checked against their reported (jackknife) SE. Plain ones against the
    *exact* sampling SE from the dense Hessian (the sample SE of a quadratic form of a low-rank
    matrix is itself noisy at K=24: the reported SE is checked to track it).
    """
    snap = getattr(measured, which)
    d = measured.dense
    k = snap.settings.k
    by_name = {b.name: b for b in measured.blocks}
    assert len(snap.edges) == len(by_name) * (len(by_name) - 1) // 2
    kerr, se_ratio = [], []
    for e in snap.edges:
        a, b = by_name[e.source], by_name[e.target]
        exact = d.fro(a, b)
        se = e.hfro_se
        if which == "plain":
            var_f = (_quad_var(d.sub(b, a).T) + _quad_var(d.sub(a, b).T)) / (4 * k)
            se = var_f**0.5 / (2 * exact)
            se_ratio.append(e.hfro_se / se)
        assert abs(e.hfro - exact) <= 4 * se + 1e-10 * exact, (e.source, e.target)
        assert 0.0 <= e.kappa <= 1.0
        exact_k = d.kappa(a, b)
        assert 0.0 <= exact_k <= 1.0
        kerr.append(abs(e.kappa - exact_k))
        assert abs(e.kappa - exact_k) <= max(5 * e.kappa_se, 0.05), (e.source, e.target)
    assert np.median(kerr) < 0.02
    if se_ratio:
        assert 0.5 < np.median(se_ratio) < 2.0


def test_row_norms(measured: Measured) -> None:
    for b in measured.blocks:
        est = measured.snap.block(b.name)
        exact = measured.dense.row_fro(b)
        assert est.row_fro is not None and est.row_fro_se is not None
        assert abs(est.row_fro - exact) <= 4 * est.row_fro_se + 1e-10 * exact, b.name


def test_rho_exact_along_gradients(measured: Measured) -> None:
    d = measured.dense
    blocks = measured.blocks
    u = []
    for b in blocks:
        g = flat_grad(measured.case, b).to(torch.float64)
        u.append(g / torch.linalg.vector_norm(g))
    diag = [float(u[i] @ d.sub(b, b) @ u[i]) for i, b in enumerate(blocks)]
    for i, a in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            b = blocks[j]
            m_ab = float(u[i] @ d.sub(a, b) @ u[j])
            exact = m_ab / (abs(diag[i]) * abs(diag[j])) ** 0.5
            got = measured.snap.edge(a.name, b.name).rho
            assert got is not None
            assert abs(got - exact) <= 1e-8 * max(1.0, abs(exact)), (a.name, b.name, got, exact)
