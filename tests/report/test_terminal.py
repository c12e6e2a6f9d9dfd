"""The terminal report prints what the user's code named, verbatim: brackets in module names,
exception messages or notes are text, never rich markup."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

import hfault
from hfault.report.terminal import render, report_console


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({"enc[bold]": nn.Linear(4, 4), "head[/]": nn.Linear(4, 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers["head[/]"](self.layers["enc[bold]"](x))


def test_brackets_from_user_code_are_printed_as_text(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Block()
    opt = torch.optim.SGD(model.parameters(), lr=50.0)  # diverges: findings name components
    try:
        with hfault.watch(max_steps=12, optimizers=[opt]) as run:
            for _ in range(12):
                loss = model(torch.randn(8, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            raise RuntimeError("bad [/] shard [red]7[/red]")
    except RuntimeError:
        pass
    report = run.report
    assert report is not None
    names = [c["name"] for c in report["components"]]
    assert names == ["layers.enc[bold]", "layers.head[/]"]
    out = io.StringIO()
    console = report_console(200)
    console.file = out
    render(report, console)
    text = out.getvalue()
    assert "layers.enc[bold]" in text and "layers.head[/]" in text
    assert "bad [/] shard [red]7[/red]" in text
