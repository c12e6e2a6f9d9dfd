"""End to end: the CLI's step-1 curvature on a float64 script equals the dense Hessian's values
at the script's initial weights and batch. (The estimators' own exactness tests, on more models,
are in tests/curvature/.)"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
from torch import nn

from hfault.curvature import Block, BlockPart
from hfault.curvature.dense import dense_hessian
from tests.conftest import SCRIPTS

NAMES = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]


def _build():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("exact_train", SCRIPTS / "exact_train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.build()
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def exact():
    model, x, y = _build()
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    hess = dense_hessian(loss, params)
    blocks = {}
    for name in NAMES:
        module = model.get_submodule(name)
        idx = [i for i, p in enumerate(params) if any(p is q for q in module.parameters())]
        blocks[name] = Block(name, tuple(BlockPart(i) for i in idx))
    return hess, blocks


def test_cli_curvature_matches_the_dense_hessian(cli, exact):
    hess, blocks = exact
    result = cli("diagnose", str(SCRIPTS / "exact_train.py"), "--at", "1", "--probes", "64",
                 "--lanczos-steps", "30", "--", "--steps", "2")
    assert result.returncode == 0, result.stderr
    snap = result.report["snapshots"][0]
    assert snap["step"] == 1 and snap["curvature"]["error"] is None
    assert result.report["run"]["hvps"] == snap["curvature"]["hvps"] > 0
    for name in NAMES:
        m = snap["metrics"][name]
        eig = hess.eigvalsh(blocks[name])
        assert m["trace_se"] > 0
        assert abs(m["trace"] - hess.trace(blocks[name])) <= 4 * m["trace_se"] + 1e-9, name
        tol = m["eig_residual"] + 1e-7 * float(eig.abs().max())
        assert m["lambda_max"] == pytest.approx(float(eig.max()), abs=tol), name
        assert m["lambda_min"] == pytest.approx(float(eig.min()), abs=tol), name
    # SGD: tau = 2, r = lr * lambda_max / 2
    head = snap["metrics"]["head"]
    assert head["stability_ratio"] == pytest.approx(0.1 * head["lambda_max"] / 2, rel=1e-9)
    edges = {(e["source"], e["target"]): e for e in snap["curvature"]["graph"]["edges"]}
    qk = edges.get(("attn.q_proj", "attn.k_proj")) or edges[("attn.k_proj", "attn.q_proj")]
    exact_kappa = hess.kappa(blocks["attn.q_proj"], blocks["attn.k_proj"])
    assert 0 <= qk["kappa"] <= 1
    assert abs(qk["kappa"] - exact_kappa) <= 4 * qk["kappa_se"] + 0.02
    assert math.isfinite(qk["rho"])


def test_no_curvature_spends_no_hvp(cli):
    result = cli("diagnose", str(SCRIPTS / "exact_train.py"), "--no-curvature")
    assert result.report["run"]["hvps"] == 0 and result.report["run"]["curvature"] is False
    assert all("curvature" not in s for s in result.report["snapshots"])
