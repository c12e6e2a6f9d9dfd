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
MAX_EDGES = 8


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
    curved = next((s for s in reversed(report.snapshots) if s.curvature), None)
    title = f"Components at step {last.step} (loss {_fmt(last.loss, 4)})"
    if curved is not None:
        title += f"; curvature at step {curved.step}"
    table = Table(title=title, box=box.SIMPLE)
    columns = [
        ("component", "left"),
        ("role", "left"),
        ("params", "right"),
        ("‖g‖", "right"),
        ("‖Δθ‖/‖θ‖", "right"),
        ("lr", "right"),
    ]
    if curved is None:
        columns.insert(5, ("zero g", "right"))
    if curved is not None:
        columns += [("tr H ± se", "right"), ("λmin", "right"), ("λmax", "right"), ("r", "right")]
    for col, just in columns:
        if col == "component":
            longest = max(len(c["name"]) for c in report.components[:MAX_COMPONENT_ROWS])
            table.add_column(col, min_width=min(longest, 36), overflow="fold")
        else:
            table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    flagged = {f.component for f in report.findings if f.component}
    for comp in report.components[:MAX_COMPONENT_ROWS]:
        m = last.metrics.get(comp["name"], {})
        row = [
            comp["name"],
            comp["role"],
            f"{comp['numel']:,}",
            _fmt(m.get("grad_norm")),
            _fmt(m.get("update_ratio")),
            _fmt(m.get("lr")),
        ]
        if curved is None:
            row.insert(5, f"{m['zero_grad_fraction']:.0%}" if "zero_grad_fraction" in m else "–")
        if curved is not None:
            c = curved.metrics.get(comp["name"], {})
            trace = (
                f"{_fmt(c['trace'])} ± {_fmt(c.get('trace_se'), 2)}" if "trace" in c else "–"
            )
            row += [trace, _fmt(c.get("lambda_min")), _fmt(c.get("lambda_max")),
                    _fmt(c.get("stability_ratio"), 2)]
        table.add_row(*row, style="bold" if comp["name"] in flagged else None)
    console.print(table)
    if len(report.components) > MAX_COMPONENT_ROWS:
        console.print(
            Text(
                f"... {len(report.components) - MAX_COMPONENT_ROWS} more components in the JSON "
                "report (--json)",
                style="dim",
            )
        )
    if curved is not None and curved.graph is not None:
        _couplings(curved.graph, console)
    if last.attention or (curved is not None and curved.attention):
        _attention((curved if curved is not None and curved.attention else last), console)
    _cost(report, console)


def _couplings(graph: Any, console: Console) -> None:
    edges = sorted(graph.edges(data=True), key=lambda e: -e[2]["weight"])[:MAX_EDGES]
    if not edges:
        return
    table = Table(title="Strongest couplings κ = ‖H_ab‖/√(‖H_a·‖‖H_b·‖)", box=box.SIMPLE)
    for col in ("component a", "component b", "κ ± se", "ρ"):
        table.add_column(col, justify="left" if "component" in col else "right")
    for a, b, e in edges:
        table.add_row(a, b, f"{_fmt(e['kappa'], 2)} ± {_fmt(e['kappa_se'], 1)}",
                      _fmt(e.get("rho"), 2))
    console.print(table)


def _attention(snapshot: Any, console: Console) -> None:
    table = Table(title=f"Attention at step {snapshot.step}", box=box.SIMPLE)
    for col in ("attention module", "entropy / log keys", "lowest head", "max logit"):
        table.add_column(col, justify="left" if col == "attention module" else "right")
    for name, a in snapshot.attention.items():
        table.add_row(name, _fmt(a.get("entropy_norm_mean"), 2),
                      _fmt(a.get("entropy_norm_head_min"), 2), _fmt(a.get("max_logit"), 3))
    console.print(table)


def _cost(report: Report, console: Console) -> None:
    if report.run.curvature:
        measured = [s for s in report.snapshots if s.curvature]
        seconds = sum(float(s.curvature["seconds"]) for s in measured if s.curvature)
        console.print(
            Text(
                f"cost: {report.run.hvps} Hessian-vector products at {len(measured)} step(s), "
                f"{seconds:.1f}s of {report.run.seconds:.1f}s",
                style="dim",
            )
        )
