"""The terminal report (rich): verdict, ranked findings, fixes, per-component summary."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from hfault.report.model import Report

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_VERDICT_STYLE = {
    "healthy": "bold green",
    "suspicious": "bold yellow",
    "faulty": "bold red",
    "crashed": "bold red",
}
MAX_COMPONENT_ROWS = 40
MAX_SNIPPETS = 3


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "nan" if x != x else ("inf" if x > 0 else "-inf")
        return f"{x:.{digits}g}"
    return str(x)


def render(report: Report, console: Console) -> None:
    run = report.run
    console.print(Rule("[bold]hfault report"))
    verdict = report.verdict()
    counts = report.counts()
    head = Text()
    head.append(f"{verdict.upper()}", style=_VERDICT_STYLE[verdict])
    head.append(
        f"  {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
    )
    meta = (
        f"script {run.script}  •  status {run.status}  •  {run.steps} step(s), "
        f"{run.backward_calls} backward call(s)  •  {run.seconds:.1f}s  •  {run.device}  •  "
        f"torch {run.torch}"
    )
    body: list[Any] = [head, Text(meta, style="dim")]
    if run.error:
        err = run.error
        where = f" at {err.get('file')}:{err.get('line')}" if err.get("file") else ""
        body.append(Text(f"script raised {err['type']}: {err['message']}{where}", style="red"))
    for note in report.notes:
        body.append(Text(f"note: {note}", style="yellow"))
    console.print(Panel(Group(*body), box=box.ROUNDED))
    _findings(report, console)
    _components(report, console)


def _findings(report: Report, console: Console) -> None:
    if not report.findings:
        console.print(Text("No findings.", style="green"))
        return
    console.print(Text("Findings (ranked)", style="bold"))
    for f in report.findings:
        line = Text(f"{f.rank:>3}  ")
        line.append(f"{f.severity.upper():<7}", style=_SEVERITY_STYLE[f.severity])
        line.append(f"  {f.rule} {f.name}", style="bold")
        if f.component:
            line.append(f"  {f.component}", style="magenta")
        if f.step is not None:
            line.append(f"  @ step {f.step}", style="dim")
        console.print(line)
        console.print(Padding(Text(f.message), (0, 0, 0, 5)))
        if f.fix:
            console.print(Padding(Text("→ " + f.fix.summary, style="green"), (0, 0, 0, 5)))
        console.print()
    shown = 0
    for f in report.findings:
        if f.fix and f.fix.snippet and shown < MAX_SNIPPETS:
            shown += 1
            console.print(
                Panel(
                    Syntax(f.fix.snippet, "python", theme="ansi_dark", word_wrap=True),
                    title=f"fix for #{f.rank} {f.rule} ({f.component or 'run'})",
                    title_align="left",
                    box=box.ROUNDED,
                )
            )


def _components(report: Report, console: Console) -> None:
    if not report.components or not report.snapshots:
        return
    last = report.snapshots[-1]
    table = Table(
        title=f"Components at step {last.step} (loss {_fmt(last.loss, 4)})",
        box=box.SIMPLE,
        expand=True,
    )
    for col, just in (
        ("component", "left"),
        ("role", "left"),
        ("params", "right"),
        ("‖g‖", "right"),
        ("‖θ‖", "right"),
        ("‖Δθ‖/‖θ‖", "right"),
        ("zero g", "right"),
        ("lr", "right"),
    ):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    flagged = {f.component for f in report.findings if f.component}
    rows = report.components[:MAX_COMPONENT_ROWS]
    for comp in rows:
        m = last.metrics.get(comp["name"], {})
        style = "bold" if comp["name"] in flagged else None
        table.add_row(
            comp["name"],
            comp["role"],
            f"{comp['numel']:,}",
            _fmt(m.get("grad_norm")),
            _fmt(m.get("weight_norm")),
            _fmt(m.get("update_ratio")),
            f"{m['zero_grad_fraction']:.0%}" if "zero_grad_fraction" in m else "–",
            _fmt(m.get("lr")),
            style=style,
        )
    console.print(table)
    if len(report.components) > MAX_COMPONENT_ROWS:
        console.print(
            Text(
                f"... {len(report.components) - MAX_COMPONENT_ROWS} more components in the JSON "
                "report (--json)",
                style="dim",
            )
        )
