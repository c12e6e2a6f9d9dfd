"""measure(): settings, scopes, shared probes, HVP accounting; block validation."""

from __future__ import annotations

import pytest
import torch

from hfault.curvature import (
    BUDGETS,
    Block,
    BlockPart,
    CurvatureSettings,
    HessianOperator,
    measure,
    shared_traces,
    validate_blocks,
    whole,
)
from tests.curvature.curv_models import make_han, make_mlp, reference


def test_budget_presets() -> None:
    eco = CurvatureSettings()
    assert (eco.k, eco.m, eco.lanczos_tol) == BUDGETS["economy"] == (4, 10, 1e-2)
    std = CurvatureSettings(budget="standard")
    assert (std.k, std.m, std.lanczos_tol) == (16, 20, 1e-3)
    assert CurvatureSettings(budget="thorough", probes=5, tol=0.5).k == 5
    assert CurvatureSettings(budget="thorough", tol=0.5).lanczos_tol == 0.5
    assert CurvatureSettings(budget="thorough").m == 30


def test_coupling_subset_and_hvp_accounting() -> None:
    case = make_han()
    d = reference(case, case.blocks)
    names = ["word_attention", "word_context", "sent_attention"]
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    s = CurvatureSettings(probes=16, lanczos_steps=8, tol=0.0, coupling_blocks=names,
                          eig_blocks=["fc", *names])
    snap = measure(op, s, generator=torch.Generator().manual_seed(0))
    assert {(e.source, e.target) for e in snap.edges} == {
        ("word_attention", "word_context"), ("word_attention", "sent_attention"),
        ("word_context", "sent_attention")}
    # every block has a trace; only eig blocks have eigenvalues; only coupled blocks row norms
    for b in case.blocks:
        est = snap.block(b.name)
        assert abs(est.trace - d.trace(b)) <= 4 * est.trace_se + 1e-12
        assert (est.lambda_max is None) == (b.name not in s.eig_blocks)
        assert (est.row_fro is None) == (b.name not in names)
    # K per block + Lanczos steps + one rho column per coupled block
    lanczos_steps = sum(b.lanczos_steps for b in snap.blocks)
    assert snap.hvp_count == 16 * len(case.blocks) + lanczos_steps + len(names)
    assert sum(b.hvps for b in snap.blocks) == snap.hvp_count


def test_shared_probes_unbiased_but_noisier() -> None:
    case = make_han()
    d = reference(case, case.blocks)
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    gen = torch.Generator().manual_seed(0)
    shared = shared_traces(op, 64, gen)
    assert op.hvp_count == 64
    block = measure(op, CurvatureSettings(probes=64, deflate=False, coupling_blocks=(),
                                          eig_blocks=()), generator=gen)
    ratios = []
    for b, est in zip(case.blocks, shared, strict=True):
        assert abs(est.value - d.trace(b)) <= 4 * est.se
        ratios.append(est.se / max(block.block(b.name).trace_se, 1e-300))
    assert sorted(ratios)[len(ratios) // 2] > 2.0  # median block: shared SE at least 2x larger


def test_shared_trace_method_in_measure() -> None:
    case = make_mlp()
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    snap = measure(op, CurvatureSettings(probes=8, trace_method="shared", coupling_blocks=(),
                                         eig_blocks=()))
    assert snap.hvp_count == 8
    assert all(b.trace_se > 0 for b in snap.blocks)
    assert snap.notes and "shared" in snap.notes[0]


def test_custom_directions_and_sign_flip() -> None:
    case = make_mlp()
    op = HessianOperator(case.loss_fn(), case.params, case.blocks)
    s = CurvatureSettings(probes=2, eig_blocks=())
    g0 = op.gradient(0)
    a = measure(op, s, directions={"fc1": g0}).edge("fc1", "fc2").rho
    b = measure(op, s, directions={"fc1": -3.0 * g0}).edge("fc1", "fc2").rho
    c = measure(op, s).edge("fc1", "fc2").rho
    assert a is not None and b is not None
    assert a == pytest.approx(-b, rel=1e-12) and a == pytest.approx(c, rel=1e-12)


def test_validate_blocks() -> None:
    params = [torch.zeros(6, 4), torch.zeros(6)]
    validate_blocks([Block("q", (BlockPart(0, 0, 0, 2),)), Block("k", (BlockPart(0, 0, 2, 4),))],
                    params)
    with pytest.raises(ValueError, match="overlap"):
        validate_blocks([Block("q", (BlockPart(0, 0, 0, 3),)),
                         Block("k", (BlockPart(0, 0, 2, 4),))], params)
    with pytest.raises(ValueError, match="overlap"):
        validate_blocks([whole("a", 0), Block("k", (BlockPart(0, 0, 2, 4),))], params)
    with pytest.raises(ValueError, match="duplicate"):
        validate_blocks([whole("a", 0), whole("a", 1)], params)
    with pytest.raises(ValueError, match="out of range"):
        validate_blocks([whole("a", 2)], params)
    with pytest.raises(ValueError, match="invalid"):
        validate_blocks([Block("q", (BlockPart(1, 0, 4, 9),))], params)
    with pytest.raises(ValueError, match="different dims"):
        validate_blocks([Block("q", (BlockPart(0, 0, 0, 2),)),
                         Block("c", (BlockPart(0, 1, 0, 2),))], params)
    assert BlockPart(0, 1, 1, 3).numel((6, 4)) == 12


def test_batched_probes_give_the_same_snapshot() -> None:
    case = make_mlp()
    s1, s4 = (CurvatureSettings(probes=6, lanczos_steps=6, probe_batch=pb) for pb in (1, 4))
    snaps = []
    for s in (s1, s4):
        op = HessianOperator(case.loss_fn(), case.params, case.blocks)
        snaps.append(measure(op, s, generator=torch.Generator().manual_seed(5)))
    for a, b in zip(snaps[0].blocks, snaps[1].blocks, strict=True):
        assert a.trace == pytest.approx(b.trace, rel=1e-10, abs=1e-14)
    assert snaps[0].edges[0].kappa == pytest.approx(snaps[1].edges[0].kappa, rel=1e-10)
    assert snaps[0].hvp_count == snaps[1].hvp_count


def test_block_without_curvature_is_uncoupled_not_nan() -> None:
    # A parameter in the graph whose Hessian rows are exactly zero (multiplied by 0, the shape of
    # a .detach()ed attention path): 0/0 would make kappa NaN and break the report's schema.
    torch.manual_seed(0)
    fc = torch.nn.Linear(4, 3).double()
    gate = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    params = [fc.weight, fc.bias, gate]
    blocks = [whole("fc", 0, 1), whole("gate", 2)]
    loss = torch.nn.functional.cross_entropy(fc(x) + 0.0 * gate.sum(), y)
    op = HessianOperator(loss, params, blocks)
    s = CurvatureSettings(probes=4, lanczos_steps=4, tol=0.0, coupling_blocks=["fc", "gate"])
    snap = measure(op, s, generator=torch.Generator().manual_seed(0))
    (edge,) = snap.edges
    assert edge.kappa == 0.0 and edge.kappa_se == 0.0
    assert snap.block("gate").trace == 0.0
