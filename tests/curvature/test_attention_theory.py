"""Structure the theory predicts for one attention layer (Ormaniec et al. 2025)."""

from __future__ import annotations

import torch

from hfault.curvature import CurvatureSettings, HessianOperator, measure
from tests.curvature.curv_models import make_attention


def test_value_block_psd_query_key_indefinite() -> None:
    """Output linear in W_V ⇒ H_VV = GGN ⪰ 0 (MSE); Q/K see the softmax ⇒ indefinite."""
    for seed in range(3):
        case = make_attention(seed=seed)
        op = HessianOperator(case.loss_fn(), case.params, case.blocks)
        snap = measure(op, CurvatureSettings(probes=4, lanczos_steps=20, tol=1e-8, rho=False),
                       generator=torch.Generator().manual_seed(seed))
        v = snap.block("v")
        assert v.lambda_min is not None and v.eig_residual_min is not None
        assert v.lambda_min >= -(v.eig_residual_min + 1e-10 * v.lambda_max)
        for name in ("q", "k"):
            b = snap.block(name)
            assert b.lambda_min is not None and b.lambda_max is not None
            spread = b.lambda_max - b.lambda_min
            assert b.lambda_min < -0.05 * spread < 0 < 0.05 * spread < b.lambda_max, (seed, name)
