"""The ``lower_lr`` snippet: valid Python in every variant, and, pasted where it says, a split that
keeps the script's param groups (weight decay, betas) and scales each group's own learning rate."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hfault.fixes.lr_snippet import OptimizerSite, param_group_snippet, read_site, snippet_variant

HEAD = {"name": "head", "parameters": ["head.weight", "head.bias"],
        "access": 'list(model.get_submodule("head").parameters())'}
FACTOR = 0.05


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)


def decay_groups(model: nn.Module, lr: float = 3e-4) -> torch.optim.AdamW:
    """nanoGPT's optimizer: matrices decay, biases do not, with their own betas."""
    params = list(model.parameters())
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95))


def check_split(model: nn.Module, opt: torch.optim.Optimizer, before: list[dict[str, Any]],
                flagged: set[int]) -> None:
    """Every parameter exactly once; flagged ones in groups with the settings of the group they
    left and its lr × FACTOR; the others where they were."""
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())
    source = {id(p): g for g in before for p in g["params"]}
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= flagged or not ids & flagged, "a group mixes flagged and other parameters"
        for p in group["params"]:
            old = source[id(p)]
            for key, value in old.items():
                if key not in ("params", "lr", "lr_scale", "initial_lr"):
                    assert group[key] == value, key
            expect = old["lr"] * FACTOR if id(p) in flagged else old["lr"]
            assert group["lr"] == pytest.approx(expect)
            if id(p) in flagged:
                assert group["lr_scale"] == pytest.approx(FACTOR)


def snapshot(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{**g, "params": list(g["params"])} for g in opt.param_groups]


# ---------------------------------------------------------------- the generic form, executed
def test_generic_snippet_splits_a_decay_and_no_decay_pair_keeping_each_groups_settings() -> None:
    model = Net()
    opt = decay_groups(model)
    before = snapshot(opt)
    snippet = param_group_snippet(HEAD, FACTOR, OptimizerSite(param_groups=2))
    exec(compile(snippet, "<snippet>", "exec"), {"model": model, "optimizer": opt})
    flagged = {id(p) for p in model.head.parameters()}
    check_split(model, opt, before, flagged)
    assert len(opt.param_groups) == 4  # each group lost head's tensor to a copy of itself
    assert {g["weight_decay"] for g in opt.param_groups[2:]} == {0.1, 0.0}
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    loss = model.head(model.body(torch.randn(3, 4))).sum()
    loss.backward()
    opt.step()  # the split optimizer steps


def test_a_group_made_of_the_flagged_parameters_is_scaled_in_place() -> None:
    model = Net()
    opt = torch.optim.SGD([{"params": model.body.parameters()},
                           {"params": model.head.parameters(), "lr": 10.0}], lr=0.1, momentum=0.9)
    before = snapshot(opt)
    exec(param_group_snippet(HEAD, FACTOR), {"model": model, "optimizer": opt})
    check_split(model, opt, before, {id(p) for p in model.head.parameters()})
    assert [g["lr"] for g in opt.param_groups] == [0.1, pytest.approx(0.5)]


def test_a_scheduler_built_after_the_split_keeps_the_factor_through_its_schedule() -> None:
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    exec(param_group_snippet(HEAD, FACTOR), {"model": model, "optimizer": opt})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    for _ in range(3):
        opt.step()
        sched.step()
    rest, head = opt.param_groups
    assert head["lr"] == pytest.approx(rest["lr"] * FACTOR)


def test_a_loop_assigning_lr_keeps_the_factor_through_lr_scale() -> None:
    model = Net()
    opt = decay_groups(model)
    exec(param_group_snippet(HEAD, FACTOR), {"model": model, "optimizer": opt})
    for group in opt.param_groups:  # what the snippet's comment tells such a loop to do
        group["lr"] = 6e-4 * group.get("lr_scale", 1.0)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.head.weight)] == pytest.approx(6e-4 * FACTOR)
    assert lrs[id(model.body.weight)] == pytest.approx(6e-4)


def test_a_fused_slice_says_the_whole_tensor_moves() -> None:
    comp = {"name": "attn.in_proj.query", "parameters": ["attn.in_proj_weight[0:8, :]"],
            "access": "[model.attn.in_proj_weight]"}
    snippet = param_group_snippet(comp, FACTOR)
    assert "attn.in_proj.query is a slice of a fused tensor" in snippet
    assert "flagged = {id(p) for p in [model.attn.in_proj_weight]}" in snippet
    compile(snippet, "<snippet>", "exec")


# ---------------------------------------------------------------- where it goes, pasted there
SCRIPT = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)


model = Net()
params = list(model.parameters())
opt = torch.optim.AdamW(
    [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
     {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
    lr=3e-4, betas=(0.9, 0.95),
)
"""

METHOD = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def configure_optimizers(self):
        params = list(self.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95))


model = Net()
opt = model.configure_optimizers()
"""


def paste(source: str, site: OptimizerSite, snippet: str) -> str:
    """The script with the snippet where its comment says: after the statement's last line, at
    its indentation; a returned optimizer is assigned first."""
    lines = source.splitlines()
    assert site.line is not None and site.end_line is not None
    stmt = lines[site.line - 1]
    indent = stmt[: len(stmt) - len(stmt.lstrip())]
    if site.returned:
        lines[site.line - 1] = stmt.replace("return ", "optimizer = ", 1)
    block = textwrap.indent(snippet, indent).splitlines()
    return "\n".join(lines[: site.end_line] + block + lines[site.end_line:]) + "\n"


def test_script_site_names_the_lines_and_the_variable_and_the_pasted_script_runs(
        tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    site = read_site({"class": "AdamW", "param_groups": 2,
                      "source": {"file": str(path), "line": 14}}, str(path))
    assert (site.end_line, site.target, site.returned) == (18, "opt", False)
    assert snippet_variant(site) == "script"
    snippet = param_group_snippet(HEAD, FACTOR, site)
    assert f"lines 14-18 of {path}" in snippet.replace("\n# ", " ")
    assert "The optimizer has 2 param groups" in snippet
    scope: dict[str, Any] = {"__name__": "train"}
    exec(compile(paste(SCRIPT, site, snippet), str(path), "exec"), scope)
    model, opt = scope["model"], scope["opt"]
    check_split(model, opt, snapshot(decay_groups(model)),  # what the script built
                {id(p) for p in model.head.parameters()})


def test_configure_optimizers_site_uses_self_and_returns_the_split_optimizer(
        tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(METHOD)
    site = read_site({"class": "AdamW", "param_groups": 2,
                      "source": {"file": str(path), "line": 15}}, str(tmp_path / "train.py"))
    assert (site.function, site.self_is_model, site.returned) == (
        "configure_optimizers", True, True)
    assert snippet_variant(site) == "method"
    snippet = param_group_snippet(HEAD, FACTOR, site)
    assert 'self.get_submodule("head")' in snippet and snippet.rstrip().endswith(
        "return optimizer")
    scope: dict[str, Any] = {"__name__": "model"}
    exec(compile(paste(METHOD, site, snippet), str(path), "exec"), scope)
    model, opt = scope["model"], scope["opt"]
    check_split(model, opt, snapshot(decay_groups(model)),
                {id(p) for p in model.head.parameters()})


class Trainer:
    """What the snippet relies on of transformers' Trainer: ``create_optimizer`` builds the
    optimizer (decay and no-decay groups) from ``self.model``, stores and returns it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.optimizer: torch.optim.Optimizer | None = None

    def create_optimizer(self) -> torch.optim.Optimizer:
        self.optimizer = decay_groups(self.model)
        return self.optimizer


def test_trainer_site_subclasses_trainer_and_splits_what_it_builds(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("trainer = Trainer(model=model, args=args)\ntrainer.train()\n")
    library = "/venv/lib/python3.11/site-packages/transformers/trainer.py"
    site = read_site({"class": "AdamW", "param_groups": 2,
                      "source": {"file": library, "line": 1200}}, str(script))
    assert site.trainer and snippet_variant(site) == "trainer" and site.line is None
    snippet = param_group_snippet(HEAD, FACTOR, site)
    assert "optimizers=(optimizer, None)" in snippet.replace("\n# ", " ")
    scope: dict[str, Any] = {"Trainer": Trainer}
    exec(compile(snippet, "<snippet>", "exec"), scope)
    model = Net()
    trainer = scope["SplitTrainer"](model)
    opt = trainer.create_optimizer()
    assert opt is trainer.optimizer
    check_split(model, opt, snapshot(decay_groups(model)),
                {id(p) for p in model.head.parameters()})


def test_library_site_without_a_trainer_gives_the_generic_form_without_a_library_line() -> None:
    site = read_site({"class": "AdamW", "source": {
        "file": "/venv/lib/python3.11/site-packages/somelib/opt.py", "line": 3}}, None)
    snippet = param_group_snippet(HEAD, FACTOR, site)
    assert snippet_variant(site) == "script" and "site-packages" not in snippet
    compile(snippet, "<snippet>", "exec")


def test_unreadable_source_gives_the_generic_form() -> None:
    site = read_site({"class": "SGD", "source": {"file": "/nonexistent/train.py", "line": 7}})
    assert site.end_line is None and snippet_variant(site) == "script"
    snippet = param_group_snippet(HEAD, FACTOR, site)
    assert "line 7 of /nonexistent/train.py" in snippet
    compile(snippet, "<snippet>", "exec")
