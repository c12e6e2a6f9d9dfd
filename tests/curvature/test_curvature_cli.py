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

pytestmark = pytest.mark.e2e  # runs real training scripts

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
    result = cli("diagnose", "--curvature", str(SCRIPTS / "exact_train.py"), "--at", "1",
                 "--probes", "64",
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
    edges = {(e["source"], e["target"]): e for e in snap["graph"]["edges"]}
    qk = edges.get(("attn.q_proj", "attn.k_proj")) or edges[("attn.k_proj", "attn.q_proj")]
    exact_kappa = hess.kappa(blocks["attn.q_proj"], blocks["attn.k_proj"])
    assert 0 <= qk["kappa"] <= 1
    assert abs(qk["kappa"] - exact_kappa) <= 4 * qk["kappa_se"] + 0.02
    assert math.isfinite(qk["rho"])


def test_no_curvature_spends_no_hvp(cli):
    result = cli("diagnose", str(SCRIPTS / "exact_train.py"), "--no-curvature")
    assert result.report["run"]["hvps"] == 0 and result.report["run"]["curvature"] is False
    assert all("curvature" not in s for s in result.report["snapshots"])


def test_op_without_double_backward_is_named_and_the_rest_still_measured(cli):
    result = cli("diagnose", "--curvature", str(SCRIPTS / "once_diff_train.py"), "--at", "1", "--",
                 "--steps", "2")
    assert result.returncode == 0, result.stderr  # a warning, not an error
    snap = result.report["snapshots"][0]
    assert snap["curvature"]["blocked"] == ["fc1"]
    assert "once_differentiable" in snap["curvature"]["error"]
    for name in ("fc2", "head"):
        assert snap["metrics"][name]["lambda_max"] is not None
    assert "trace" not in snap["metrics"]["fc1"]
    warning = result.findings("HF020")[0]
    assert warning["severity"] == "warning" and warning["evidence"]["blocked"] == ["fc1"]


def test_parameter_gradient_hooks_are_reported(cli, tmp_path):
    script = tmp_path / "hooked.py"
    script.write_text(
        "import torch\n"
        "model = torch.nn.Linear(3, 1)\n"
        "model.weight.register_hook(lambda g: g.clamp(-1, 1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(2):\n"
        "    loss = model(torch.randn(4, 3)).pow(2).mean()\n"
        "    opt.zero_grad()\n"
        "    loss.backward()\n"
        "    opt.step()\n"
    )
    result = cli("diagnose", "--curvature", str(script), "--at", "1")
    assert any("gradient hooks on <root>" in n or "gradient hooks on weight" in n
               for n in result.report["notes"]), result.report["notes"]


def test_shared_probe_traces_are_unbiased_against_the_dense_hessian(cli, exact):
    hess, blocks = exact
    result = cli("diagnose", "--curvature", str(SCRIPTS / "exact_train.py"), "--at", "1",
                 "--probes", "64",
                 "--trace-method", "shared", "--", "--steps", "2")
    snap = result.report["snapshots"][0]
    assert any("shared probes" in note for note in snap["curvature"]["notes"])
    head = snap["metrics"]["head"]  # outside the coupling set: from the shared probes
    assert head["trace_se"] > 0
    assert abs(head["trace"] - hess.trace(blocks["head"])) <= 4 * head["trace_se"]


def test_coupling_graph_is_a_networkx_graph_matching_the_json():
    import networkx as nx

    from hfault.capture.schedule import parse_schedule
    from hfault.diagnose import DiagnoseOptions, diagnose

    options = DiagnoseOptions(SCRIPTS / "exact_train.py", ["--steps", "2"],
                              parse_schedule("1", None))
    result = diagnose(options)
    snap = result.report.snapshots[0]
    graph = snap.graph
    assert isinstance(graph, nx.Graph)
    assert list(graph.nodes) == NAMES
    assert graph.nodes["attn.q_proj"]["role"] == "query"
    # couplings among the attention components only: 4 choose 2 edges
    assert graph.number_of_edges() == 6 and not graph.has_edge("head", "attn.q_proj")
    for _, _, attrs in graph.edges(data=True):
        assert attrs["weight"] == attrs["kappa"] and 0 <= attrs["kappa"] <= 1
    as_json = snap.to_dict()["graph"]
    assert {(e["source"], e["target"]) for e in as_json["edges"]} == set(graph.edges)
    hub = max(graph.nodes, key=lambda n: graph.degree(n, weight="weight"))
    assert graph.nodes[hub]["role"] in ("query", "key", "value", "output")


def test_a_snapshot_keeps_no_graph_alive():
    """The record holds numbers only, and once the script's backward ran no tensor saved by any
    graph (the forward's or hfault's double-backward graph) is still alive."""
    import gc
    import weakref

    import torch

    from hfault.components import build_components
    from hfault.probes.curvature_probe import CurvatureConfig, measure_step

    class Saved:
        def __init__(self, tensor):
            self.tensor = tensor

    holders = []

    def pack(tensor):
        holder = Saved(tensor)
        holders.append(weakref.ref(holder))
        return holder

    model, x, y = _build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    components = build_components([opt], [model])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
        loss = nn.functional.cross_entropy(model(x), y)
        forward_saved = len(holders)
        record = measure_step(1, loss, 1.0, components, [opt], CurvatureConfig())
    assert record.error is None
    assert len(holders) > forward_saved > 0  # the double-backward graph saved tensors too
    for field in vars(record.snapshot.blocks[0]).values():
        assert not isinstance(field, torch.Tensor)
    loss.backward()
    del loss
    gc.collect()
    assert sum(ref() is not None for ref in holders) == 0
