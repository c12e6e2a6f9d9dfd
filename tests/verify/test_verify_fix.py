"""``hfault diagnose --verify-fix``: real reruns of real scripts (subprocess CLI runs), the
param-group split on real optimizers (bit-exact against hand-built groups), clipping, and the
verdict criteria on report-shaped data."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hfault import ExitCode
from hfault.capture.hooks import Hooks
from hfault.capture.runner import run_script
from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession
from hfault.diagnose import DiagnoseOptions, diagnose
from hfault.fixes.lower_lr import as_groups
from hfault.verify import FixApplier, PlannedFix, plan_fixes, split_param_groups
from hfault.verify.compare import (
    final_loss,
    findings_diff,
    loss_change,
    loss_tolerance,
    validation_outcome,
    verdict,
)
from tests.conftest import SAMPLES, SCRIPTS, CliResult, run_cli

pytestmark = pytest.mark.e2e  # runs real training scripts

# SGD far beyond 2/λmax on a linear regression: the loss grows every step (HF010, HF201 fire).
DIVERGE = '''
import torch
from torch import nn

torch.manual_seed(0)
x = torch.randn(256, 8)
y = x @ torch.randn(8, 1)
model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=1.2)
for step in range(30):
    idx = torch.randint(0, 256, (64,))
    loss = nn.functional.mse_loss(model(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
'''


def _series(report: dict[str, Any], component: str, metric: str) -> dict[int, Any]:
    return {s["step"]: s["metrics"].get(component, {}).get(metric) for s in report["snapshots"]}


# ---------------------------------------------------------------- the LR fault, rerun for real


@pytest.fixture(scope="module")
def lr_verified(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliResult, Path]:
    """transformer_lr_fault.py (blocks.0.attn.q_proj at 100× the LR), verified once."""
    tmp = tmp_path_factory.mktemp("verify_lr")
    result = run_cli(["diagnose", "--curvature", str(SAMPLES / "transformer_lr_fault.py"),
                      "--max-steps", "40",
                      "--at", "1,20,40", "--verify-fix"], tmp)
    return result, tmp / "report.json"


def test_lr_fault_rerun_applies_the_new_lr_and_is_stable(lr_verified) -> None:  # type: ignore[no-untyped-def]
    result, _ = lr_verified
    # The exit code is the first run's: its HF023 (q_proj's own group at 100× the others' rate)
    # and HF204 (attention collapse with the dead query-key curvature signature) are errors,
    # whatever the rerun says.
    assert result.report is not None
    assert result.report["summary"]["verdict"] == "faulty"
    assert result.returncode == ExitCode.FINDINGS, result.stderr
    report = result.report
    assert report is not None
    vf = report["verify_fix"]
    q = "blocks.0.attn.q_proj"
    assert [(f["rule"], f["component"], f["kind"]) for f in vf["fixes"]] == [
        ("HF023", q, "lower_lr")]
    fix = vf["fixes"][0]
    assert fix["lr_before"] == pytest.approx(0.3)
    assert fix["lr_after"] == pytest.approx(0.003)
    assert fix["max_norm"] is None
    # q_proj alone made up its param group: that group is rescaled, no empty group is left.
    assert fix["groups"] == [{"group": 1, "new_group": None, "whole_group": True}]
    assert fix["parameters"] == [f"{q}.weight", f"{q}.bias"]
    after = vf["after"]
    assert after["run"]["optimizers"][0]["param_groups"] == 2
    assert list(_series(after, q, "lr").values()) == pytest.approx([0.003] * 3)
    assert list(_series(after, "blocks.0.attn.k_proj", "lr").values()) == pytest.approx(
        [0.003] * 3)
    # The same steps were measured in both runs, with the same settings.
    assert vf["steps"] == [1, 20, 40] == [s["step"] for s in after["snapshots"]]
    assert after["run"]["max_steps"] == 40 and after["run"]["steps"] == 40
    # Step 1 is the same batch and the same weights: only the learning rate differs.
    row = next(m for m in vf["metrics"] if m["component"] == q and m["metric"] == "stability_ratio")
    assert row["steps"] == [1, 20, 40]
    assert row["after"][0] == pytest.approx(row["before"][0] * 0.01, rel=1e-6)
    for before, later in zip(row["before"][1:], row["after"][1:], strict=True):
        assert later < before / 5, row
    logits = next(m for m in vf["metrics"] if m["metric"] == "max_logit")
    assert logits["component"] == "blocks.0.attn" and logits["after"][-1] < logits["before"][-1]
    edge = vf["edges"][0]
    assert q in (edge["source"], edge["target"]) and len(edge["kappa"]["after"]) == 3
    assert vf["verdict"] in ("fixed", "improved"), vf["summary"]
    motivating = [d for d in vf["findings"] if d["motivating"]]
    assert [(d["rule"], d["component"], d["status"]) for d in motivating] == [
        ("HF023", q, "gone")]
    assert len(vf["loss"]["before"]) == len(vf["loss"]["after"]) == 40
    assert isinstance(vf["final_loss"]["before"], float)
    assert isinstance(vf["final_loss"]["after"], float)
    assert any("--verify-fix rerun" in n and "0.003" in n for n in after["notes"])
    assert "verify_fix" not in after
    assert "Fix verification" in result.stdout and "0.3 → 0.003" in result.stdout
    assert "hfault: verifying 1 fix(es)" in result.stderr


def test_saved_report_renders_the_verification_again(lr_verified, cli) -> None:  # type: ignore[no-untyped-def]
    _, saved = lr_verified
    again = cli("report", str(saved), json_report=False)
    assert again.returncode == ExitCode.FINDINGS, again.stderr  # the first run's verdict
    assert "Fix verification" in again.stdout
    assert "lr 0.3 → 0.003" in again.stdout


# ---------------------------------------------------------------- clipping and a real split


@pytest.fixture
def diverge(tmp_path: Path) -> Path:
    path = tmp_path / "diverge.py"
    path.write_text(DIVERGE)
    return path


def test_clipping_bounds_the_rerun_gradients(cli, diverge: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("diagnose", str(diverge), "--select", "HF010", "--verify-fix", "--quiet")
    assert result.returncode == ExitCode.FINDINGS  # HF010 is an error in the first run
    report = result.report
    assert report is not None
    top = report["findings"][0]
    assert top["rule"] == "HF010"
    assert top["fix"]["values"] == {"kind": "clip_grad", "max_norm": 1.0}
    vf = report["verify_fix"]
    (fix,) = vf["fixes"]
    assert (fix["kind"], fix["max_norm"], fix["component"]) == (
        "clip_grad", 1.0, "(all parameters)")
    assert fix["steps"] == 30 and fix["clipped_steps"] == 30
    total = next(m for m in vf["metrics"] if m["component"] == "(all parameters)")
    assert total["metric"] == "grad_norm"
    assert all(b > 1.0 for b in total["before"])
    # hfault reads gradients after the hook: what the optimizer applied.
    assert all(a <= 1.0 + 1e-5 for a in total["after"]), total
    for snap in vf["after"]["snapshots"]:
        norms = [m["grad_norm"] for m in snap["metrics"].values()]
        assert math.sqrt(sum(n * n for n in norms)) <= 1.0 + 1e-5
    assert vf["final_loss"]["after"] < 1.0 < vf["final_loss"]["before"]
    assert vf["verdict"] == "fixed", vf["summary"]
    assert not vf["after"]["findings"]


def test_component_in_a_shared_group_gets_a_new_group(cli, diverge: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("diagnose", "--curvature", str(diverge), "--select", "HF201", "--verify-fix",
                 "--quiet")
    report = result.report
    assert report is not None
    vf = report["verify_fix"]
    (fix,) = vf["fixes"]
    assert (fix["rule"], fix["component"], fix["kind"]) == ("HF201", "weight", "lower_lr")
    assert fix["groups"] == [{"group": 0, "new_group": 1, "whole_group": False}]
    assert fix["lr_before"] == pytest.approx(1.2)
    assert fix["lr_after"] == pytest.approx(report["findings"][0]["fix"]["values"]["new_lr"])
    after = vf["after"]
    assert after["run"]["optimizers"][0]["param_groups"] == 2
    lrs = _series(after, "weight", "lr").values()
    assert list(lrs) == pytest.approx([fix["lr_after"]] * len(lrs))
    assert list(_series(after, "bias", "lr").values()) == pytest.approx([1.2] * len(lrs))
    ratio = next(m for m in vf["metrics"] if m["metric"] == "stability_ratio")
    measured = [(b, a) for b, a in zip(ratio["before"], ratio["after"], strict=True)
                if b is not None]
    assert measured and all(a < 1.0 < b for b, a in measured)


def test_split_that_breaks_a_per_group_scheduler_is_not_blamed_on_the_fix(  # type: ignore[no-untyped-def]
        cli, tmp_path: Path) -> None:
    script = tmp_path / "sched.py"
    script.write_text(DIVERGE.replace(
        "for step in range(30):",
        "sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1.0])\n"
        "for step in range(30):").replace("    opt.step()", "    opt.step()\n    sched.step()"))
    result = cli("diagnose", "--curvature", str(script), "--select", "HF201", "--verify-fix",
                 "--quiet")
    vf = result.report["verify_fix"]
    assert vf["after"]["run"]["status"] == "crashed"
    assert vf["verdict"] == "not_applicable"
    assert "Expected 2 lr_lambdas, but got 1" in vf["summary"]


def test_healthy_script_is_not_applicable_without_a_rerun(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("diagnose", str(SCRIPTS / "basic_train.py"), "--verify-fix", "--no-curvature")
    assert result.returncode == ExitCode.OK
    report = result.report
    assert report is not None
    vf = report["verify_fix"]
    assert vf["verdict"] == "not_applicable"
    assert vf["after"] is None and vf["fixes"] == []
    assert "verifying" not in result.stderr  # no rerun
    assert "NOT APPLICABLE" in result.stdout


# ---------------------------------------------------------------- the split itself


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.embed(x))))


def _groups(model: _Net) -> list[dict[str, Any]]:
    """The script's own groups: embed and norm share one, the head has its own lr."""
    return [
        {"params": [*model.embed.parameters(), *model.norm.parameters()],
         "weight_decay": 0.1, "betas": (0.8, 0.95)},
        {"params": list(model.head.parameters()), "lr": 5e-3},
    ]


def _train(model: _Net, opt: torch.optim.Optimizer, steps: int = 6) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_split_moves_the_params_with_their_group_settings_and_trains_bit_exact() -> None:
    torch.manual_seed(0)
    model = _Net()
    twin = copy.deepcopy(model)
    fix = PlannedFix("HF201", "embed", "lower_lr", factor=0.1, optimizer=0, root="_Net",
                     names=("embed.weight", "embed.bias"))
    applier = FixApplier([fix])
    with Hooks([applier]):  # alone: the listener needs no capture session
        opt = torch.optim.AdamW(_groups(model), lr=1e-2, weight_decay=0.01)
    assert not applier.failed
    (record,) = applier.applied
    assert record["groups"] == [{"group": 0, "new_group": 2, "whole_group": False}]
    assert (record["lr_before"], record["lr_after"]) == (1e-2, pytest.approx(1e-3))
    groups = opt.param_groups
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())  # each exactly once
    moved = groups[2]
    assert [id(p) for p in moved["params"]] == [id(p) for p in model.embed.parameters()]
    assert moved["lr"] == pytest.approx(1e-3)
    assert {k: v for k, v in moved.items() if k not in ("params", "lr")} == {
        k: v for k, v in groups[0].items() if k not in ("params", "lr")}
    assert moved["weight_decay"] == 0.1 and moved["betas"] == (0.8, 0.95)
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.norm.parameters()]
    assert groups[1]["lr"] == 5e-3  # the other group is untouched

    by_hand = torch.optim.AdamW(
        [{"params": list(twin.norm.parameters()), "weight_decay": 0.1, "betas": (0.8, 0.95)},
         {"params": list(twin.head.parameters()), "lr": 5e-3},
         {"params": list(twin.embed.parameters()), "weight_decay": 0.1, "betas": (0.8, 0.95),
          "lr": 1e-2 * 0.1}],
        lr=1e-2, weight_decay=0.01,
    )
    assert _train(model, opt) == _train(twin, by_hand)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The scheduler built after the optimizer scales the new group like the others.
    assert opt.param_groups[2]["initial_lr"] == pytest.approx(1e-3)
    assert opt.param_groups[2]["lr"] == pytest.approx(1e-3 / 7)


def test_split_of_named_params_and_of_a_whole_group() -> None:
    model = _Net()
    groups = [{"params": list(model.named_parameters()), "initial_lr": 0.2, "lr": 0.2}]
    norm = list(model.norm.parameters())
    normalized = as_groups(groups)
    assert normalized is not None
    result = split_param_groups(normalized, [(norm, 0.5)], {"lr": 1.0})
    assert result == [{"lr_before": 0.2, "lr_after": 0.1,
                       "groups": [{"group": 0, "new_group": 1, "whole_group": False}]}]
    opt = torch.optim.SGD(normalized, lr=1.0)
    assert opt.param_groups[1]["param_names"] == ["norm.weight", "norm.bias"]
    assert opt.param_groups[1]["initial_lr"] == pytest.approx(0.1)
    head = list(model.head.parameters())
    whole = [{"params": head}, {"params": [*model.embed.parameters(), *norm]}]
    result = split_param_groups(whole, [(head, 0.1)], {"lr": 0.3})
    assert result[0]["groups"] == [{"group": 0, "new_group": None, "whole_group": True}]
    assert len(whole) == 2 and whole[0]["lr"] == pytest.approx(0.03)
    assert split_param_groups(whole, [([nn.Parameter(torch.ones(1))], 0.1)], {"lr": 0.3}) == [
        "none of its parameters is in this optimizer"]


def test_fused_slice_moves_the_whole_tensor(tmp_path: Path) -> None:
    """nn.MultiheadAttention's query rows cannot get their own group: in_proj moves whole."""
    script = SCRIPTS / "mha_train.py"
    options = DiagnoseOptions(script, ["--steps", "2"], curvature=None)
    first = diagnose(options)
    name = "attn.in_proj.query"
    assert name in [c["name"] for c in first.report.to_dict()["components"]]
    report = {"findings": [{
        "rule": "HF201", "component": name, "severity": "error", "score": 1.0, "rank": 1,
        "fix": {"summary": "", "snippet": None, "values": {
            "component": name, "lr": 0.1, "new_lr": 0.01, "factor": 0.1}},
    }]}
    fixes, skipped = plan_fixes(report, first.state)
    assert not skipped
    (fix,) = fixes
    assert fix.fused == ("attn.in_proj_weight", "attn.in_proj_bias") == fix.names
    session = CaptureSession(Schedule(auto=False), None)
    applier = session.add(FixApplier(fixes))
    run_script(script, ["--steps", "2"], session)
    (record,) = applier.applied
    assert "is a slice of attn.in_proj_weight, attn.in_proj_bias" in record["note"]
    groups = session.state.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.01)
    assert [p.shape for p in groups[1]["params"]] == [torch.Size([24, 8]), torch.Size([24])]


def test_unresolvable_fix_is_reported_not_applied() -> None:
    model = _Net()
    fix = PlannedFix("HF201", "gone", "lower_lr", factor=0.1, optimizer=0, root="_Net",
                     names=("no.such.weight",))
    other = PlannedFix("HF006", "x", "lower_lr", factor=0.1, optimizer=3, root="_Net",
                       names=("embed.weight",))
    applier = FixApplier([fix, other])
    with Hooks([applier]):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert len(opt.param_groups) == 1 and not applier.applied
    reasons = {f["component"]: f["reason"] for f in applier.failed}
    assert reasons == {"gone": "_Net.no.such.weight is not a parameter of optimizer #0",
                       "x": "the rerun created no optimizer #3"}


# ---------------------------------------------------------------- the verdict's criteria


def _loss(values: list[Any]) -> list[list[Any]]:
    return [[i + 1, v] for i, v in enumerate(values)]


def test_final_loss_and_its_comparison() -> None:
    assert final_loss(_loss([9.0] * 18 + [1.0, 3.0])) == 2.0  # the last 10%: two steps
    assert final_loss(_loss([1.0, "nan"])) == "nan"
    assert final_loss([]) is None
    assert loss_change("nan", 5.0) == "better" and loss_change(5.0, "inf") == "worse"
    assert loss_change("nan", "nan") == "same"
    assert loss_change(1.0, 1.04) == "same" and loss_change(1.0, 1.2) == "worse"
    # Paired noise widens the tolerance; a drop by orders of magnitude still counts.
    noisy_b, noisy_a = _loss([1.0] * 18 + [0.5, 1.5]), _loss([1.0] * 18 + [1.5, 0.5])
    assert loss_tolerance(noisy_b, noisy_a) == pytest.approx(0.5)
    huge = _loss([1.0] * 18 + [1e20, 1e22])
    assert loss_change(final_loss(huge), 0.3, loss_tolerance(huge, _loss([0.3] * 20))) == "better"
    # Two converged runs: differences below 1% of the first loss are the same.
    assert loss_tolerance(_loss([2.0] + [1e-6] * 19), _loss([2.0] + [3e-6] * 19)) == 0.02


def _finding(rule: str, component: str | None, severity: str = "error",
             score: float = 2.0) -> dict[str, Any]:
    return {"rule": rule, "name": rule.lower(), "component": component, "severity": severity,
            "score": score}


def _run(findings: list[dict[str, Any]], losses: list[Any],
         status: str = "completed") -> dict[str, Any]:
    return {"run": {"status": status, "error": {"type": "RuntimeError", "message": "boom"}},
            "findings": findings,
            "timeline": {"loss": [{"step": s, "loss": v} for s, v in _loss(losses)]}}


@pytest.mark.parametrize(
    ("after_findings", "after_loss", "status", "expected"),
    [
        ([], 1.0, "completed", "fixed"),
        ([_finding("HF205", "q", "warning")], 1.0, "completed", "fixed"),
        ([], 2.0, "completed", "worse"),  # the finding is gone but the loss rose
        ([_finding("HF201", "q", "warning")], 1.0, "completed", "improved"),  # weaker severity
        ([_finding("HF201", "q", score=1.0)], 1.0, "completed", "improved"),  # lower score
        ([_finding("HF201", "q")], 0.5, "completed", "improved"),  # lower loss
        ([_finding("HF201", "q")], 1.0, "completed", "unchanged"),
        ([_finding("HF201", "q"), _finding("HF003", "k")], 1.0, "completed", "worse"),
        ([], 1.0, "crashed", "worse"),
    ],
)
def test_verdict(after_findings, after_loss, status, expected) -> None:  # type: ignore[no-untyped-def]
    before = _run([_finding("HF201", "q"), _finding("HF205", "q", "warning")], [2.0] * 10 + [1.0])
    after = _run(after_findings, [2.0] * 10 + [after_loss], status)
    fixes = [{"rule": "HF201", "component": "q", "kind": "lower_lr", "lr_before": 0.3,
              "lr_after": 0.003, "max_norm": None}]
    diff = findings_diff(before["findings"], after["findings"], {("HF201", "q")})
    final = {"before": final_loss(_loss([2.0] * 10 + [1.0])),
             "after": final_loss(_loss([2.0] * 10 + [after_loss]))}
    result, summary = verdict(before, after, fixes, diff, final)
    assert result == expected, summary
    assert "lr of q 0.3 → 0.003" in summary


@pytest.mark.parametrize(
    ("val_before", "val_after", "expected"),
    [
        ([[50, 2.0], [100, 1.0]], [[50, 2.0], [100, 1.2]], "worse"),  # held-out loss rose 20%
        ([[50, 2.0], [100, 1.0]], [[50, 2.0], [100, 1.03]], "fixed"),  # within 5%
        ([[50, 2.0], [100, 1.0]], [[50, 1.0]], "fixed"),  # last common step: 50, better
        ([[50, 2.0], [100, 1.0]], [], "fixed"),  # the rerun printed none: no evidence
    ],
)
def test_a_printed_validation_loss_leads_the_verdict(val_before, val_after, expected) -> None:  # type: ignore[no-untyped-def]
    """Training loss the same, the motivating finding gone: the validation loss decides."""
    before = {**_run([_finding("HF201", "q")], [2.0] * 10 + [1.0]), "validation": val_before}
    after = {**_run([], [2.0] * 10 + [1.0]), "validation": val_after}
    fixes = [{"rule": "HF201", "component": "q", "kind": "lower_lr", "lr_before": 0.3,
              "lr_after": 0.003, "max_norm": None}]
    diff = findings_diff(before["findings"], after["findings"], {("HF201", "q")})
    final = {"before": 1.0, "after": 1.0}
    val = validation_outcome(before, after)
    result, summary = verdict(before, after, fixes, diff, final, val)
    assert result == expected, summary
    if expected == "worse":
        assert val == {"step": 100, "before": 1.0, "after": 1.2, "change": "worse"}
        assert summary.startswith("the validation loss rose by more than 5%")
        assert "HF201 on q no longer fires, but the training is worse" in summary
    elif val_after:
        assert "validation loss" in summary


def test_verify_fix_object_has_the_agreed_shape(lr_verified) -> None:  # type: ignore[no-untyped-def]
    result, _ = lr_verified
    vf = result.report["verify_fix"]
    assert {"fixes", "verdict", "summary", "loss", "final_loss", "metrics", "after"} <= set(vf)
    for fix in vf["fixes"]:
        assert {"rule", "component", "kind", "lr_before", "lr_after", "max_norm"} <= set(fix)
    for m in vf["metrics"]:
        assert set(m) == {"component", "metric", "steps", "before", "after"}
        assert len(m["steps"]) == len(m["before"]) == len(m["after"])
    assert all(len(p) == 2 for p in vf["loss"]["before"] + vf["loss"]["after"])
    json.dumps(vf, allow_nan=False)


def test_a_consequence_gets_no_fix_of_its_own_in_the_rerun() -> None:
    """A finding the report explains by a higher-ranked one (``consequence_of``) is skipped:
    applying both fixes over-fixes."""
    first = diagnose(DiagnoseOptions(SCRIPTS / "basic_train.py", ["--steps", "2"],
                                     curvature=None))

    def finding(rank: int, component: str, **extra: Any) -> dict[str, Any]:
        return {"rule": "HF006", "component": component, "severity": "error", "score": 1.0,
                "rank": rank, **extra, "fix": {"summary": "", "snippet": None, "values": {
                    "kind": "lower_lr", "component": component, "lr": 0.1, "new_lr": 0.01,
                    "factor": 0.1}}}

    report = {"findings": [finding(1, "head"), finding(2, "embed", consequence_of=1)]}
    fixes, skipped = plan_fixes(report, first.state)
    assert [f.component for f in fixes] == ["head"]
    assert skipped == [{"rule": "HF006", "component": "embed", "kind": "lower_lr",
                        "reason": "a consequence of finding #1, whose fix is applied instead"}]
