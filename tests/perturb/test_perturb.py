"""``hfault perturb``: exactness against dense Hessians, bit-exactness at α = 0, and the CLI.

Exactness runs the real float64 script ``tests/scripts/exact_train.py`` in-process through the
Python API and rebuilds the same weights here (SGD, fixed batch) to get the dense Hessian at the
injection point; CLI tests run ``python -m hfault perturb`` in a subprocess on real scripts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hfault.curvature import Block, BlockPart
from hfault.curvature.dense import DenseHessian, dense_hessian
from hfault.perturb.driver import PerturbOptions, perturb
from hfault.perturb.injection import Injection, draw_deltas, unit_generator
from hfault.perturb.listener import predictions
from hfault.perturb.report import write_json
from hfault.perturb.stats import mean_ci, t_quantile
from tests import forkserver
from tests.conftest import ROOT, SAMPLES, SCRIPTS

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_math_thread")]  # real training

EXACT = SCRIPTS / "exact_train.py"
INJECT_AT = 2  # the exact script's SGD steps before the injection


def _exact_module():
    spec = importlib.util.spec_from_file_location("exact_train_ref", EXACT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


@pytest.fixture(scope="module")
def dense() -> tuple[nn.Module, DenseHessian, list[torch.Tensor]]:
    """The script's weights after INJECT_AT SGD steps, and the dense Hessian of the loss of the
    batch the first forward after the injection sees (the script's batch is fixed)."""
    model, x, y = _exact_module().build(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(INJECT_AT):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = list(model.parameters())
    return model, dense_hessian(nn.functional.cross_entropy(model(x), y), params), params


def _block(model: nn.Module, params: list[torch.Tensor], names: list[str]) -> Block:
    """Parts in the component's order (each module's weight, then bias)."""
    parts = []
    for name in names:
        for p in model.get_submodule(name).parameters():
            parts.append(BlockPart(next(i for i, q in enumerate(params) if q is p)))
    return Block("+".join(names), tuple(parts))


def _rms(model: nn.Module, name: str) -> float:
    flat = torch.cat([p.detach().reshape(-1) for p in model.get_submodule(name).parameters()])
    return float(flat.pow(2).mean().sqrt())


def _exact_options(components: list[str], alphas: list[float], draws: int,
                   **kw: object) -> PerturbOptions:
    return PerturbOptions(EXACT, components, alphas, Injection(frozenset({INJECT_AT})),
                          ["--steps", str(INJECT_AT + 1)], draws=draws, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", ["attn.v_proj", "attn.q_proj"])
def test_mean_loss_change_is_half_alpha2_rms2_trace(dense, name):
    """Mean ΔL over 150 antithetic pairs at α = 0.01 equals ½α²RMS²Tr(H_bb) of the dense Hessian.

    Tolerance from the variance: a pair's mean is m_k = ½α²ρ²·δ_kᵀHδ_k + O(α⁴) with
    Var(δᵀHδ) = 2‖H_bb‖²_F, so SE(mean) = α²ρ²‖H_bb‖_F / √(2P); we allow 4·SE (the O(α⁴) bias
    is ~1e-5 relative here, far below). 4·SE is under 40% of the prediction, so a factor-2 error in
    the scale (α vs α·RMS would be ×ρ² ≈ 0.08) or the ½ fails. q_proj's trace is negative: random
    perturbations lower its loss on average.
    """
    model, hess, params = dense
    alpha, draws = 0.01, 300
    block = _block(model, params, [name])
    trace, fro = hess.trace(block), hess.fro(block, block)
    rho = _rms(model, name)
    result = perturb(_exact_options([name], [alpha], draws, noise_floor=False))
    assert result.exit_code == 0
    (experiment,) = result.data["experiments"]
    assert experiment["rms"][name] == pytest.approx(rho, rel=1e-12)
    summary = experiment["alphas"][0]["summary"]
    measured = summary["dloss_first"]
    assert measured["n"] == draws // 2 and measured["missing"] == 0
    predicted = 0.5 * alpha**2 * rho**2 * trace
    se = alpha**2 * rho**2 * fro / math.sqrt(2 * (draws // 2))
    assert 4 * se < 0.4 * abs(predicted)  # the test can tell a factor 2
    assert abs(measured["mean"] - predicted) <= 4 * se, (measured["mean"], predicted, se)
    assert math.copysign(1, measured["mean"]) == math.copysign(1, trace)
    # hfault's own Hutchinson prediction agrees with the dense trace within its standard error
    base = result.data["baseline"]["components"][name]
    assert abs(base["trace"] - trace) <= 4 * base["trace_se"]
    pred = summary["prediction"]
    assert pred["trace"] == pytest.approx(0.5 * alpha**2 * rho**2 * base["trace"], rel=1e-12)


def test_each_draw_follows_the_dense_second_order_model(dense):
    """Paired, no sampling noise: each antithetic pair's mean ΔL equals ½α²ρ²·δ_kᵀH_bbδ_k for the
    δ_k regenerated here from hfault's generator (seed + k); the per-draw prediction hfault
    reports (g·u and uᵀHu from HVPs on the script's own graph) matches too."""
    model, hess, params = dense
    name, alpha, draws, seed = "head", 0.01, 8, 5
    block = _block(model, params, [name])
    h_bb = hess.sub(block, block)
    rho = _rms(model, name)
    result = perturb(_exact_options([name], [alpha], draws, seed=seed, noise_floor=False))
    rows = result.data["experiments"][0]["alphas"][0]["draws"]
    for k in range(draws // 2):
        (delta,) = draw_deltas([h_bb.shape[0]], unit_generator(seed + k))
        exact = 0.5 * alpha**2 * rho**2 * float(delta @ h_bb @ delta)
        plus, minus = rows[2 * k], rows[2 * k + 1]
        assert (plus["sign"], minus["sign"]) == (1, -1)
        pair = 0.5 * (plus["dloss_first"] + minus["dloss_first"])
        assert pair == pytest.approx(exact, rel=1e-3)
        assert 0.5 * (plus["predicted"] + minus["predicted"]) == pytest.approx(exact, rel=1e-9)
        for row in (plus, minus):
            assert row["dloss_first"] == pytest.approx(row["predicted"], rel=1e-3)


def test_together_perturbs_the_group_with_each_components_rms(dense):
    """--together: one δ over the union, each component scaled by its own RMS; the pair mean is
    ½α²uᵀHu over the union's dense Hessian (cross blocks included)."""
    model, hess, params = dense
    names, alpha, draws = ["attn.v_proj", "head"], 0.01, 4
    result = perturb(_exact_options(names, [alpha], draws, together=True, noise_floor=False))
    (experiment,) = result.data["experiments"]
    assert experiment["components"] == names
    union = _block(model, params, names)
    h = hess.sub(union, union)
    sizes = [sum(p.numel() for p in model.get_submodule(n).parameters()) for n in names]
    rows = experiment["alphas"][0]["draws"]
    for k in range(draws // 2):
        deltas = draw_deltas(sizes, unit_generator(k))
        u = torch.cat([_rms(model, n) * d for n, d in zip(names, deltas, strict=True)])
        exact = 0.5 * alpha**2 * float(u @ h @ u)
        pair = 0.5 * (rows[2 * k]["dloss_first"] + rows[2 * k + 1]["dloss_first"])
        assert pair == pytest.approx(exact, rel=1e-3)
    term = sum(_rms(model, n) ** 2 * hess.trace(_block(model, params, [n])) for n in names)
    assert experiment["curvature_term"]["value"] == pytest.approx(
        term, abs=4 * experiment["curvature_term"]["se"])


def test_alpha_zero_is_bit_exact_with_the_baseline():
    """α = 0 still draws δ and adds 0·δ: with dropout and a shuffled DataLoader (global RNG), any
    draw from the script's random stream would change the batches and masks. Everything after the
    injection is identical to the baseline, and a rerun of the baseline is too."""
    options = PerturbOptions(SCRIPTS / "basic_train.py", ["encoder.layers.0.self_attn.in_proj.*"],
                             [0.0, 0.1], Injection(frozenset({3})), ["--steps", "8"], draws=2,
                             max_steps=8)
    result = perturb(options)
    assert result.exit_code == 0
    assert result.data["noise_floor"]["identical"] is True
    experiments = result.data["experiments"]
    assert [e["label"] for e in experiments] == [
        f"encoder.layers.0.self_attn.in_proj.{r}" for r in ("query", "key", "value")]
    for e in experiments:
        zero, some = e["alphas"]
        for draw in zero["draws"]:
            assert draw["injected"] == [3]
            assert draw["dloss_first"] == 0.0 and draw["dloss_window"] == 0.0
            assert draw["flip_window"] == 0.0 and draw["dgrad_window"] == 0.0
            assert all(c["dtrace"] == 0.0 and c["dlambda_max"] == 0.0
                       for c in draw["curvature"].values())
        assert all(d["dloss_first"] != 0.0 for d in some["draws"])


# ------------------------------------------------------------------------- units
def test_t_quantiles_and_antithetic_units():
    for df, t in ((1, 12.7062), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(df) == pytest.approx(t, abs=1e-4)
    stat = mean_ci([1.0, 3.0, 2.0, 2.0, None, 5.0], antithetic=True)
    assert (stat.n, stat.mean, stat.missing) == (2, 2.0, 2)
    assert stat.lo == stat.hi == 2.0  # both pairs average 2
    plain = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (plain.n, plain.missing) == (3, 1)
    assert plain.hi - plain.mean == pytest.approx(t_quantile(2) * 1.0 / math.sqrt(3))


def test_json_encodes_non_finite_numbers_as_diagnose_does(tmp_path: Path):
    """A blown-up trace is "nan"/"inf" as in the diagnose report (it once became null, which
    reads as "not measured"); a difference of a non-finite loss stays null (missing)."""
    out = tmp_path / "p.json"
    write_json({"baseline": {"components": {"q": {"trace": math.nan, "lambda_max": math.inf,
                                                  "lambda_min": -math.inf, "rms": 0.5}}},
                "draws": [{"dloss_first": None, "nonfinite_loss": True}]}, out)
    data = json.loads(out.read_text())  # strict JSON
    assert data["baseline"]["components"]["q"] == {"trace": "nan", "lambda_max": "inf",
                                                   "lambda_min": "-inf", "rms": 0.5}
    assert data["draws"] == [{"dloss_first": None, "nonfinite_loss": True}]


def test_predictions_of_model_outputs():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])

    class Out(dict):
        @property
        def logits(self) -> torch.Tensor:
            return self["logits"]

    for output in (logits, (logits, torch.tensor(1.0)), Out(loss=torch.tensor(0.3), logits=logits),
                   {"logits": logits}):
        assert predictions(output).tolist() == [1, 0]
    assert predictions(torch.tensor([[0.3], [-0.2]])).tolist() == [1, 0]  # one logit: its sign
    assert predictions(torch.tensor([1, 2])) is None


# ------------------------------------------------------------------------- CLI
def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return forkserver.run([sys.executable, "-m", "hfault", "perturb", *args], text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **env})


def test_cli_glob_sweep_flips_grow_with_alpha_and_json_shape(tmp_path: Path):
    out = tmp_path / "perturb.json"
    proc = _cli(str(SAMPLES / "transformer_lr_fault.py"), "-c", "blocks.*.attn.v_proj",
                "--alpha", "0.01", "--alpha", "1", "--draws", "2", "--max-steps", "12",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Loss change on the first batch after the injection (step 7)" in proc.stdout
    assert "blocks.1.attn.v_proj" in proc.stdout
    data = json.loads(out.read_text())
    assert {"schema_version", "tool", "script", "argv", "status", "error", "settings",
            "measured_step", "baseline", "noise_floor", "experiments", "runs",
            "notes"} <= data.keys()
    assert data["status"] == "completed" and data["measured_step"] == 7
    assert data["settings"]["injection"] == {"steps": [6], "every": None, "first": 6}
    assert data["runs"] == {"count": 10, "seconds": data["runs"]["seconds"], "crashed": 0}
    assert [e["label"] for e in data["experiments"]] == ["blocks.0.attn.v_proj",
                                                         "blocks.1.attn.v_proj"]
    for name, comp in data["baseline"]["components"].items():
        assert comp["rms"] > 0 and comp["trace_se"] > 0, name
    for e in data["experiments"]:
        small, large = e["alphas"]
        assert (small["alpha"], large["alpha"]) == (0.01, 1.0)
        for entry in (small, large):
            assert len(entry["draws"]) == 2
            s = entry["summary"]
            assert {"dloss_first", "dloss_window", "dloss_last", "flip_first", "flip_window",
                    "flip_eval", "dgrad_first", "dgrad_window", "dtrace", "dlambda_max",
                    "prediction", "diverged", "crashed"} <= s.keys()
            assert {"mean", "ci95", "sd", "n", "missing"} == s["flip_window"].keys()
        assert large["summary"]["flip_window"]["mean"] > small["summary"]["flip_window"]["mean"]
        assert abs(large["summary"]["dloss_first"]["mean"]) > abs(
            small["summary"]["dloss_first"]["mean"])


def test_cli_bad_component_is_one_line_exit_2():
    proc = _cli(str(EXACT), "-c", "attn.v_prj", "--max-steps", "2", "--", "--steps", "3")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hfault: error: --component 'attn.v_prj' matches no component")
    assert "attn.v_proj" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "head"], "needs --at STEPS or --max-steps N"),
        (["-c", "head", "--max-steps", "4", "-r", "3"], "antithetic draws come in pairs"),
        (["-c", "head", "--at", "x"], "'x' is not a step number"),
        (["-c", "head", "--at", "9", "--", "--steps", "3"], "ended at step 3, before the inj"),
        (["-c", "head", "--max-steps", "2", "-a", "-1"], "≥ 0"),
    ],
)
def test_cli_usage_errors(args, message):
    proc = _cli(str(EXACT), *args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_cli_every_step_injection(tmp_path: Path):
    out = tmp_path / "p.json"
    proc = _cli(str(EXACT), "-c", "head", "--at", "every:2", "--max-steps", "6", "-a", "0.1",
                "--json", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    draws = data["experiments"][0]["alphas"][0]["draws"]
    assert all(d["injected"] == [2, 4, 6] for d in draws)
    assert data["measured_step"] == 3


def test_cli_script_crash_keeps_partial_results(tmp_path: Path):
    """crash_train.py raises at step 3 (unseeded: its runs match because hfault restores the RNG
    before each run). Injection after step 1; step 2 is measured before the crash."""
    out = tmp_path / "p.json"
    proc = _cli(str(SCRIPTS / "crash_train.py"), "-c", "weight", "--at", "1", "-a", "0.5",
                "--json", str(out))
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "hfault: error: the script raised ValueError: corrupt shard 7")
    data = json.loads(out.read_text())
    assert data["status"] == "crashed" and data["baseline"]["status"] == "crashed"
    assert data["noise_floor"]["identical"] is True
    draws = data["experiments"][0]["alphas"][0]["draws"]
    assert all(d["status"] == "crashed" and d["dloss_first"] != 0.0 for d in draws)
    # a crash before the step after the injection leaves nothing to compare: exit 3, baseline only
    proc = _cli(str(SCRIPTS / "crash_train.py"), "-c", "weight", "--at", "3", "-q",
                "--json", str(out))
    assert proc.returncode == 3
    data = json.loads(out.read_text())
    assert data["status"] == "crashed" and data["experiments"] == []
    assert data["error"]["type"] == "ValueError" and data["baseline"]["steps"] == 2
