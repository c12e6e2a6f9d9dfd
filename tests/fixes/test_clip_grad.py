"""The ``clip_grad`` kind: filling in, planning once per run, and clipping real parameters
exactly as ``torch.nn.utils.clip_grad_norm_`` does."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from hfault.capture.session import CaptureState
from hfault.fixes.clip_grad import CLIP_GRAD, applied_record, clip_gradients
from hfault.fixes.kind import ALL_PARAMETERS, FixTarget, PlanContext, PlannedFix, Skip


def _model_with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    loss = model(torch.randn(32, 6)).pow(2).sum() * 50
    loss.backward()
    return model


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_matches_clip_grad_norm(max_norm: float) -> None:
    ours, theirs = _model_with_grads(), _model_with_grads()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    total = clip_gradients(opt, max_norm)
    expected = float(torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), max_norm))
    assert total == pytest.approx(expected)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad)
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ours.parameters()))  # type: ignore[union-attr]
    assert norm == pytest.approx(min(expected, max_norm), rel=1e-5)


def test_clip_skips_parameters_without_gradients() -> None:
    model = _model_with_grads()
    frozen = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([*model.parameters(), frozen], lr=0.1)
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))  # type: ignore[union-attr]
    assert clip_gradients(opt, 1e9) == pytest.approx(expected)
    assert frozen.grad is None
    assert clip_gradients(torch.optim.SGD([frozen], lr=0.1), 1.0) is None


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("inf"), float("nan"), True, "1", None])
def test_fill_refuses_an_unusable_limit(max_norm: Any) -> None:
    assert CLIP_GRAD.fill({"max_norm": max_norm}, FixTarget()) is None


def test_fill_writes_the_kind_and_the_limit() -> None:
    assert CLIP_GRAD.fill({"max_norm": 2}, FixTarget()) == (
        {"kind": "clip_grad", "max_norm": 2.0}, None)


def test_plan_clips_once_per_run() -> None:
    context = PlanContext(CaptureState(), {}, [], {})
    first = {"rule": "HF010", "component": None, "severity": "error", "score": 2.0, "rank": 1}
    planned = CLIP_GRAD.plan(first, {"kind": "clip_grad", "max_norm": 1.0}, context)
    assert isinstance(planned, PlannedFix)
    assert (planned.rule, planned.component, planned.kind, planned.max_norm) == (
        "HF010", ALL_PARAMETERS, "clip_grad", 1.0)
    assert planned.finding == first
    context.planned.append(planned)
    second = {**first, "rule": "HF007", "component": "head"}
    assert CLIP_GRAD.plan(second, {"kind": "clip_grad", "max_norm": 5.0}, context) == Skip(
        "head", "gradient clipping is applied once, for HF010")
    assert CLIP_GRAD.plan(second, {"kind": "clip_grad", "max_norm": 0}, context) is None


def test_applied_record_and_texts() -> None:
    fix = PlannedFix("HF010", ALL_PARAMETERS, "clip_grad", max_norm=1.0)
    record = applied_record(fix, 30, 12, float("inf"))
    assert record == {
        "rule": "HF010", "component": ALL_PARAMETERS, "kind": "clip_grad", "lr_before": None,
        "lr_after": None, "max_norm": 1.0, "steps": 30, "clipped_steps": 12,
        "largest_norm": "inf",
        "note": "clip_grad_norm_ on every optimizer's parameters right before step(), after the "
                "script's own gradient processing; the total gradient norm exceeded max_norm at "
                "12 of 30 optimizer step(s) (largest inf)"}
    assert applied_record(fix, 0, 0, None)["note"].endswith("gradient processing")
    assert CLIP_GRAD.applied_text(record) == "gradient clipping at max_norm 1 (HF010)"
    assert CLIP_GRAD.describe(record) == "gradient clipping at max_norm 1"
    assert CLIP_GRAD.plan_text(fix) == "clip gradients at 1 (HF010)"
