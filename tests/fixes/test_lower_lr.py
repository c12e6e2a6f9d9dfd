"""The ``lower_lr`` kind: filling in from report data, its snippet, planning against a real
model and the param-group split of real torch optimizers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hfault.capture.session import CaptureState
from hfault.components import build_components
from hfault.fixes.kind import FixTarget, PlannedFix
from hfault.fixes.lower_lr import (
    LOWER_LR,
    applied_record,
    as_groups,
    split_param_groups,
)
from hfault.verify.plan import plan_fixes


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 2)


HEAD = {"name": "head", "parameters": ["head.weight", "head.bias"], "access": None}


# ---------------------------------------------------------------- filling in
def test_fill_gives_the_values_and_a_snippet_for_the_scripts_optimizer() -> None:
    target = FixTarget(HEAD, lr=0.3, optimizer={"class": "AdamW", "lr": 0.5})
    filled = LOWER_LR.fill({"factor": 0.012345}, target)
    assert filled is not None
    values, snippet = filled
    assert values == {"kind": "lower_lr", "component": "head", "lr": 0.3,
                      "new_lr": pytest.approx(0.3 * 0.0123), "factor": 0.0123}
    assert list(values) == ["kind", *LOWER_LR.produces]
    # the split of the script's own optimizer at ×factor (tests/fixes/test_lr_snippet.py)
    assert snippet is not None and 'split["lr"] = split["lr"] * 0.0123' in snippet
    compile(snippet, "<snippet>", "exec")


@pytest.mark.parametrize(
    ("factor", "component", "lr"),
    [(1.0, HEAD, 0.3), (0.0, HEAD, 0.3), (-0.5, HEAD, 0.3), ("0.5", HEAD, 0.3), (None, HEAD, 0.3),
     (0.5, None, 0.3), (0.5, HEAD, None), (0.5, HEAD, 0.0)],
)
def test_fill_refuses_what_it_cannot_apply(factor: Any, component: Any, lr: Any) -> None:
    assert LOWER_LR.fill({"factor": factor}, FixTarget(component, lr=lr)) is None


# ---------------------------------------------------------------- planning
def _state(model: nn.Module, opt: torch.optim.Optimizer) -> CaptureState:
    modules = list(model.modules())
    return CaptureState(optimizers=[opt], modules={id(m): m for m in modules},
                        components=build_components([opt], modules))


def _finding(rule: str, values: dict[str, Any]) -> dict[str, Any]:
    return {"rule": rule, "component": values.get("component"), "severity": "error",
            "score": 1.0, "rank": 1, "fix": {"summary": "", "snippet": None, "values": values}}


def _lr(component: str, legacy: bool = False) -> dict[str, Any]:
    values = {"component": component, "lr": 0.1, "new_lr": 0.01, "factor": 0.1}
    return values if legacy else {"kind": "lower_lr", **values}


def test_plan_finds_the_parameters_by_name_once_per_component() -> None:
    model = _Net()
    state = _state(model, torch.optim.SGD(model.parameters(), lr=0.1))
    report = {"findings": [_finding("HF201", _lr("head")), _finding("HF006", _lr("head")),
                           _finding("HF002", _lr("attn.in_proj.query")),
                           _finding("HF206", _lr("attn.in_proj.key")),
                           _finding("HF003", _lr("gone")),
                           _finding("HF002", {**_lr("embed"), "factor": 0.0})]}
    fixes, skipped = plan_fixes(report, state)
    assert [(f.rule, f.component) for f in fixes] == [("HF201", "head"),
                                                      ("HF002", "attn.in_proj.query")]
    head, query = fixes
    assert (head.root, head.names, head.fused, head.factor) == (
        "_Net", ("head.weight", "head.bias"), (), 0.1)
    assert query.fused == query.names == ("attn.in_proj_weight", "attn.in_proj_bias")
    assert [(s["rule"], s["component"], s["kind"], s["reason"]) for s in skipped] == [
        ("HF006", "head", "lower_lr", "head already gets the fix of HF201"),
        ("HF206", "attn.in_proj.key", "lower_lr", "attn.in_proj.key shares a fused tensor "
         "with attn.in_proj.query, which already gets a learning-rate fix"),
        ("HF003", "gone", "lower_lr", "gone is not a component of this run"),
    ]


def test_a_report_saved_before_kinds_were_written_is_planned_alike() -> None:
    model = _Net()
    state = _state(model, torch.optim.SGD(model.parameters(), lr=0.1))
    new, _ = plan_fixes({"findings": [_finding("HF201", _lr("head"))]}, state)
    old, _ = plan_fixes({"findings": [_finding("HF201", _lr("head", legacy=True))]}, state)
    assert old == new and len(new) == 1


def test_a_manual_fix_with_lr_values_is_not_planned() -> None:
    """The kind decides, not the shape of the values."""
    model = _Net()
    state = _state(model, torch.optim.SGD(model.parameters(), lr=0.1))
    values = {**_lr("head"), "kind": "manual"}
    assert plan_fixes({"findings": [_finding("HF201", values)]}, state) == ([], [])


# ---------------------------------------------------------------- the split
@pytest.mark.parametrize("opt_class", [torch.optim.SGD, torch.optim.AdamW, torch.optim.Adam])
def test_split_of_a_real_optimizers_param_groups(opt_class: type[torch.optim.Optimizer]) -> None:
    model = _Net()
    groups = as_groups(list(model.parameters()))
    assert groups is not None
    head = list(model.head.parameters())
    result = split_param_groups(groups, [(head, 0.25)], {"lr": 0.02})
    assert result == [{"lr_before": 0.02, "lr_after": 0.005,
                       "groups": [{"group": 0, "new_group": 1, "whole_group": False}]}]
    opt = opt_class(groups, lr=0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.005]
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(p) for p in head]
    rest = {id(p) for p in opt.param_groups[0]["params"]}
    assert rest == {id(p) for p in model.parameters()} - {id(p) for p in head}
    # every hyperparameter but lr is copied from the source group
    assert {k: v for k, v in opt.param_groups[1].items() if k not in ("params", "lr")} == {
        k: v for k, v in opt.param_groups[0].items() if k not in ("params", "lr")}


def test_split_keeps_a_whole_group_in_place_and_scales_initial_lr() -> None:
    model = _Net()
    head = list(model.head.parameters())
    groups = as_groups([{"params": head, "initial_lr": 0.4, "lr": 0.4},
                        {"params": list(model.embed.parameters()), "lr": 0.1}])
    assert groups is not None
    (result,) = split_param_groups(groups, [(head, 0.5)], {"lr": 1.0})
    assert isinstance(result, dict)
    assert result["groups"] == [{"group": 0, "new_group": None, "whole_group": True}]
    opt = torch.optim.SGD(groups, lr=1.0)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.2)
    assert opt.param_groups[1]["lr"] == 0.1


def test_split_scales_a_tensor_learning_rate_and_says_why_nothing_moved() -> None:
    model = _Net()
    head = list(model.head.parameters())
    groups = as_groups([{"params": list(model.parameters()), "lr": torch.tensor(0.1)}])
    assert groups is not None
    (result,) = split_param_groups(groups, [(head, 0.1)], {})
    assert isinstance(result, dict) and result["lr_after"] == pytest.approx(0.01)
    assert isinstance(groups[1]["lr"], torch.Tensor)
    stray = [nn.Parameter(torch.ones(1))]
    assert split_param_groups(groups, [(stray, 0.1)], {}) == [
        "none of its parameters is in this optimizer"]
    no_lr = as_groups([{"params": head, "lr": "fast"}])
    assert no_lr is not None
    assert split_param_groups(no_lr, [(head, 0.1)], {}) == [
        "param group 0 has no numeric learning rate"]


def test_as_groups_normalizes_what_torch_accepts_and_refuses_what_it_rejects() -> None:
    w = nn.Parameter(torch.ones(2))
    assert as_groups([w]) == [{"params": [w]}]
    assert as_groups([{"params": w, "lr": 0.1}]) == [{"params": [w], "lr": 0.1}]
    assert as_groups([("w", w)]) == [{"params": [("w", w)]}]
    assert as_groups([]) is None
    assert as_groups([{"params": {w}}]) is None


# ---------------------------------------------------------------- what is recorded and said
def test_applied_record_and_texts() -> None:
    fix = PlannedFix("HF201", "attn.in_proj.query", "lower_lr", factor=0.1, lr=0.05,
                     optimizer=0, names=("attn.in_proj_weight",),
                     fused=("attn.in_proj_weight",))
    result = {"lr_before": 0.1, "lr_after": 0.01,
              "groups": [{"group": 0, "new_group": 1, "whole_group": False}]}
    record = applied_record(fix, "AdamW", result)
    assert record["kind"] == "lower_lr" and record["max_norm"] is None
    assert record["note"] == (
        "AdamW #0: moved from param group 0 to new group 1; attn.in_proj.query is a slice of "
        "attn.in_proj_weight, which param groups cannot split: the whole tensor gets the new "
        "learning rate; the finding saw lr 0.05 (HF201), the optimizer was built with 0.1 (a "
        "scheduler or the script changes it later): ×0.1 scales the value it was built with "
        "(whether the factor held at every step is in in_effect)")
    assert LOWER_LR.applied_text(record) == "attn.in_proj.query: lr 0.1 → 0.01 (×0.1, HF201)"
    assert LOWER_LR.describe(record) == "lr of attn.in_proj.query 0.1 → 0.01"
    assert LOWER_LR.plan_text(fix) == "attn.in_proj.query lr ×0.1 (HF201)"
