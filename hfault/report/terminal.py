"""The terminal report (rich): verdict, ranked findings with evidence and fixes, how the fault
propagates (coupling paths, hubs), the components, the strongest couplings, attention, cost."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from hfault.fixes.dedupe import relation_text
from hfault.numbers import fmt

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_VERDICT_STYLE = {
    "healthy": "bold green",
    "suspicious": "bold yellow",
    "faulty": "bold red",
    "crashed": "bold red",
    "not_diagnosed": "bold magenta",
}
MAX_COMPONENT_ROWS = 40
MAX_SNIPPETS = 3
MAX_EDGES = 8


def report_console(width: int | None = None) -> Console:
    """The console reports are printed on. Markup is off: names, messages and paths come from the
    user's code and may hold ``[`` and ``]`` (a ModuleDict key, an exception message), which rich
    would otherwise read as markup, drop, or fail on. Styles are set with ``Text`` instead."""
    return Console(width=width, markup=False)


def render(report: Mapping[str, Any], console: Console) -> None:
    """Render a report's JSON form, so a saved report (``hfault report``) looks the same."""
    run, summary = report["run"], report["summary"]
    console.print(Rule(Text("hfault report", style="bold")))
    verdict, counts = summary["verdict"], summary["counts"]
    head = Text()
    head.append(verdict.replace("_", " ").upper(), style=_VERDICT_STYLE.get(verdict, "bold"))
    head.append(
        f"  {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
    )
    if summary.get("top_component"):
        head.append(f"  •  most likely: {summary['top_component']}", style="bold magenta")
    meta = (
        f"script {run['script']}  •  status {run['status']}  •  {run['steps']} step(s), "
        f"{run['backward_calls']} backward call(s)  •  {run['seconds']:.1f}s  •  "
        f"{run['device']}  •  torch {run['torch']}"
    )
    if run.get("world_size"):
        meta += f"  •  rank {run.get('rank')} of {run['world_size']} (torchrun)"
    body: list[Any] = [head, Text(meta, style="dim")]
    if run.get("error"):
        err = run["error"]
        where = f" at {err.get('file')}:{err.get('line')}" if err.get("file") else ""
        said = (f"script raised {err['type']}: {err['message']}{where}"
                if err["type"] != "os._exit" else f"{err['message']}{where}: training ended there")
        body.append(Text(said, style="red"))
    for note in report.get("notes", []):
        body.append(Text(f"note: {note}", style="yellow"))
    console.print(Panel(Group(*body), box=box.ROUNDED))
    _findings(report, console)
    _propagation(report, console)
    _components(report, console)
    _verify_fix(report, console)


def _evidence(f: Mapping[str, Any]) -> str:
    ev = f.get("evidence") or {}
    metric, value, threshold = ev.get("metric"), ev.get("value"), ev.get("threshold")
    if value is None or isinstance(value, (list, dict)):
        return metric or "–"
    text = f"{metric or 'value'} {fmt(value)}"
    if threshold is not None and not isinstance(threshold, (list, dict)):
        text += f" (limit {fmt(threshold)})"
    return text


def _findings(report: Mapping[str, Any], console: Console) -> None:
    findings = report.get("findings", [])
    if not findings:
        console.print(Text("No findings.", style="green"))
        return
    table = Table(title="Findings, ranked", box=box.SIMPLE, title_justify="left", expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("component", overflow="fold", ratio=2)
    table.add_column("evidence", overflow="fold", ratio=2)
    table.add_column("step", justify="right", no_wrap=True)
    for f in findings:
        table.add_row(
            str(f["rank"]),
            f"{f['rule']} {f['name']}",
            Text(f["severity"], style=_SEVERITY_STYLE[f["severity"]]),
            f.get("component") or "(run)",
            _evidence(f),
            fmt(f.get("step")),
        )
    console.print(table)
    for f in findings:
        line = Text(f"{f['rank']:>3}  ")
        line.append(f"{f['rule']}", style=_SEVERITY_STYLE[f["severity"]])
        line.append(f"  {f['message']}")
        console.print(line)
        fix, relation = f.get("fix"), relation_text(f)
        if relation:
            console.print(Padding(Text(relation, style="cyan"), (0, 0, 0, 5)))
        elif fix:
            console.print(Padding(Text("fix: " + fix["summary"], style="green"), (0, 0, 0, 5)))
        loc = f.get("location")
        if loc:
            console.print(Padding(Text(f"at {loc['path']}:{loc['line']}", style="dim"),
                                  (0, 0, 0, 5)))
    console.print()
    shown = 0
    for f in findings:
        fix = f.get("fix")
        if fix and fix.get("snippet") and shown < MAX_SNIPPETS and not relation_text(f):
            shown += 1
            console.print(
                Panel(
                    Syntax(fix["snippet"].strip(), "python", theme="ansi_dark", word_wrap=True),
                    title=Text(f"fix for #{f['rank']} {f['rule']} ({f.get('component') or 'run'})"),
                    title_align="left",
                    box=box.ROUNDED,
                )
            )


def _propagation(report: Mapping[str, Any], console: Console) -> None:
    prop = report.get("propagation")
    if not prop:
        return
    lines = Text()
    for path in prop.get("paths", [])[:3]:
        lines.append("path  ", style="bold")
        lines.append(" → ".join(path["path"]))
        lines.append(f"  (∏κ = {fmt(path.get('strength'), 2)})\n", style="dim")
    hubs = prop.get("hubs", [])
    if hubs:
        lines.append("hubs  ", style="bold")
        lines.append(", ".join(f"{h['name']} (Σκ {fmt(h['weighted_degree'], 2)})"
                               for h in hubs))
        lines.append("\n")
    for group in prop.get("communities", [])[:3]:
        lines.append("group ", style="bold")
        lines.append(", ".join(group) + "\n")
    if lines.plain:
        console.print(Panel(lines, title=Text(f"How it propagates (coupling graph, step "
                                              f"{prop['step']})"),
                            title_align="left", box=box.ROUNDED))


def _components(report: Mapping[str, Any], console: Console) -> None:
    components, snapshots = report.get("components", []), report.get("snapshots", [])
    if not components or not snapshots:
        return
    last = snapshots[-1]
    curved = next((s for s in reversed(snapshots) if s.get("curvature")), None)
    title = f"Components at step {last['step']} (loss {fmt(last.get('loss'), 4)})"
    if curved is not None:
        title += f"; curvature at step {curved['step']}"
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
            longest = max(len(c["name"]) for c in components[:MAX_COMPONENT_ROWS])
            table.add_column(col, min_width=min(longest, 36), overflow="fold")
        else:
            table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    flagged = {f["component"] for f in report.get("findings", []) if f.get("component")}
    for comp in components[:MAX_COMPONENT_ROWS]:
        m = last["metrics"].get(comp["name"], {})
        row = [
            comp["name"],
            comp["role"],
            f"{comp['numel']:,}",
            fmt(m.get("grad_norm")),
            fmt(m.get("update_ratio")),
            fmt(m.get("lr")),
        ]
        if curved is None:
            row.insert(5, f"{m['zero_grad_fraction']:.0%}" if "zero_grad_fraction" in m else "–")
        if curved is not None:
            c = curved["metrics"].get(comp["name"], {})
            trace = (
                f"{fmt(c['trace'])} ± {fmt(c.get('trace_se'), 2)}" if "trace" in c else "–"
            )
            row += [trace, fmt(c.get("lambda_min")), fmt(c.get("lambda_max")),
                    fmt(c.get("stability_ratio"), 2)]
        table.add_row(*row, style="bold" if comp["name"] in flagged else None)
    console.print(table)
    if len(components) > MAX_COMPONENT_ROWS:
        console.print(
            Text(
                f"... {len(components) - MAX_COMPONENT_ROWS} more components in the JSON "
                "report (--json)",
                style="dim",
            )
        )
    if curved is not None and curved.get("graph"):
        _couplings(curved["graph"], console)
    if last.get("attention") or (curved is not None and curved.get("attention")):
        _attention((curved if curved is not None and curved.get("attention") else last), console)
    _cost(report, console)


def _weight(edge: Mapping[str, Any]) -> float:
    k = edge.get("kappa")
    return float(k) if isinstance(k, (int, float)) and math.isfinite(k) else 0.0


def _couplings(graph: Mapping[str, Any], console: Console) -> None:
    edges = sorted(graph.get("edges", []), key=lambda e: -_weight(e))[:MAX_EDGES]
    if not edges:
        return
    table = Table(title="Strongest couplings κ = ‖H_ab‖/√(‖H_a·‖‖H_b·‖)", box=box.SIMPLE)
    for col in ("component a", "component b", "κ ± se", "ρ"):
        table.add_column(col, justify="left" if "component" in col else "right")
    for e in edges:
        table.add_row(e["source"], e["target"],
                      f"{fmt(e.get('kappa'), 2)} ± {fmt(e.get('kappa_se'), 1)}",
                      _rho(e.get("rho")))
    if any(_indefinite(e.get("rho")) for e in edges):
        table.caption = ("ρ* : |ρ| > 1, the 2×2 Hessian along the two gradients is indefinite: "
                         "a sign of negative curvature, not a correlation")
    console.print(table)


def _indefinite(rho: Any) -> bool:
    return isinstance(rho, (int, float)) and math.isfinite(rho) and abs(rho) > 1


def _rho(rho: Any) -> str:
    """ρ, starred where |ρ| > 1 (metrics.md: indefinite, not a correlation)."""
    return fmt(rho, 2) + ("*" if _indefinite(rho) else "")


def _attention(snapshot: Mapping[str, Any], console: Console) -> None:
    table = Table(title=f"Attention at step {snapshot['step']}", box=box.SIMPLE)
    for col in ("attention module", "entropy / log keys", "lowest head", "max logit"):
        table.add_column(col, justify="left" if col == "attention module" else "right")
    for name, a in snapshot["attention"].items():
        table.add_row(name, fmt(a.get("entropy_norm_mean"), 2),
                      fmt(a.get("entropy_norm_head_min"), 2), fmt(a.get("max_logit"), 3))
    console.print(table)


def _cost(report: Mapping[str, Any], console: Console) -> None:
    run = report["run"]
    if run.get("curvature"):
        measured = [s for s in report["snapshots"] if s.get("curvature")]
        seconds = sum(float(s["curvature"]["seconds"]) for s in measured)
        console.print(
            Text(
                f"cost: {run['hvps']} Hessian-vector products at {len(measured)} step(s), "
                f"{seconds:.1f}s of {run['seconds']:.1f}s",
                style="dim",
            )
        )


# ---------------------------------------------------------------- --verify-fix
_FIX_VERDICT_STYLE = {
    "fixed": "bold green",
    "improved": "bold cyan",
    "unchanged": "bold yellow",
    "worse": "bold red",
    "not_applicable": "bold",
}
_METRIC_LABEL = {
    "stability_ratio": "r",
    "lambda_max": "λmax",
    "grad_norm": "‖g‖",
    "lr": "lr",
    "max_logit": "max logit",
    "entropy_norm_mean": "entropy/log keys",
}
MAX_STEP_COLUMNS = 5


def _pick_steps(steps: list[Any]) -> list[int]:
    """Indices of at most MAX_STEP_COLUMNS steps, first and last included."""
    n = len(steps)
    if n <= MAX_STEP_COLUMNS:
        return list(range(n))
    k = MAX_STEP_COLUMNS - 1
    return sorted({round(i * (n - 1) / k) for i in range(k + 1)})


def _arrow(before: Any, after: Any, digits: int = 3) -> str:
    return f"{fmt(before, digits)} → {fmt(after, digits)}"


def _verify_fix(report: Mapping[str, Any], console: Console) -> None:
    """The rerun with the mechanical fixes (``--verify-fix``): fixes, before → after at the
    matched steps, final loss, findings, verdict."""
    vf = report.get("verify_fix")
    if not isinstance(vf, Mapping):
        return
    console.print(Rule(Text("Fix verification", style="bold")))
    verdict = str(vf.get("verdict", "?"))
    line = Text(verdict.replace("_", " ").upper(), style=_FIX_VERDICT_STYLE.get(verdict, "bold"))
    line.append(f"  {vf.get('summary', '')}")
    console.print(line)
    horizon = vf.get("horizon")
    if isinstance(horizon, Mapping) and horizon.get("baseline") == "rerun":
        console.print(f"compared over {horizon.get('steps')} steps (--verify-steps): the before "
                      "side is a rerun without fixes, the first run trained other steps")
    fixes = [f for f in vf.get("fixes") or [] if isinstance(f, Mapping)]
    if fixes:
        table = Table(title="Fixes applied in the rerun", box=box.SIMPLE, title_justify="left",
                      expand=True)
        for col in ("rule", "component", "fix", "how"):
            table.add_column(col, overflow="fold", ratio=3 if col == "how" else None)
        for f in fixes:
            if f.get("kind") == "lower_lr":
                what = f"lr {_arrow(f.get('lr_before'), f.get('lr_after'))}"
            else:
                what = f"clip ‖g‖ ≤ {fmt(f.get('max_norm'))}"
            how = str(f.get("note") or "")
            held = f.get("in_effect")
            if isinstance(held, Mapping) and held.get("held") is False:
                how += (f"; NOT IN EFFECT from step {held.get('first_step_off')}: the script "
                        "sets the LR itself")
            table.add_row(str(f.get("rule")), str(f.get("component")), what, how)
        console.print(table)
    steps = list(vf.get("steps") or [])
    cols = _pick_steps(steps)
    rows = [m for m in vf.get("metrics") or [] if isinstance(m, Mapping)]
    for name in dict.fromkeys(str(m.get("component")) for m in rows):
        if not cols:
            break
        # One small table per component: the step columns need the width.
        table = Table(title=f"{name}: before → after at matched steps", box=box.SIMPLE,
                      title_justify="left")
        table.add_column("metric", no_wrap=True)
        for i in cols:
            table.add_column(f"step {steps[i]}", justify="right", no_wrap=True)
        for m in rows:
            if str(m.get("component")) != name:
                continue
            before, after = list(m.get("before") or []), list(m.get("after") or [])
            cells = [_arrow(before[i] if i < len(before) else None,
                            after[i] if i < len(after) else None) for i in cols]
            table.add_row(_METRIC_LABEL.get(str(m.get("metric")), str(m.get("metric"))), *cells)
        console.print(table)
    edges = [e for e in vf.get("edges") or [] if isinstance(e, Mapping)]
    if edges and cols:
        table = Table(title=f"Couplings of the fixed components at step {steps[cols[-1]]}",
                      box=box.SIMPLE, title_justify="left")
        for col in ("component a", "component b", "κ before → after", "ρ before → after"):
            table.add_column(col, justify="left" if "component" in col else "right")
        last = cols[-1]
        for e in edges[:MAX_EDGES]:
            kappa, rho = e.get("kappa") or {}, e.get("rho") or {}

            def at(series: Any, i: int = last) -> Any:
                return series[i] if isinstance(series, list) and i < len(series) else None

            table.add_row(str(e.get("source")), str(e.get("target")),
                          _arrow(at(kappa.get("before")), at(kappa.get("after")), 2),
                          _arrow(at(rho.get("before")), at(rho.get("after")), 2))
        console.print(table)
    final = vf.get("final_loss") or {}
    if not isinstance(vf.get("after"), Mapping):
        final = {}  # nothing was rerun
    text = Text("final loss ", style="bold")
    text.append("(mean of the last 10% of the steps) "
                + _arrow(final.get("before"), final.get("after"), 4))
    if isinstance(final.get("tolerance"), (int, float)) and final["tolerance"] > 0:
        text.append(f"  (±{fmt(final['tolerance'], 2)} counts as unchanged)", style="dim")
    if final:
        console.print(text)
    diff = [d for d in vf.get("findings") or [] if isinstance(d, Mapping)]
    for status in ("gone", "weaker", "same", "stronger", "new"):
        hits = [d for d in diff if d.get("status") == status]
        shown = [d for d in hits if d.get("motivating") or {"error", "warning"} & {
            d.get("severity_before"), d.get("severity_after")}]
        if not hits:
            continue
        names = ", ".join(
            f"{d.get('rule')} {d.get('component') or '(run)'}" + (" *" if d.get("motivating")
                                                                    else "")
            for d in shown)
        if len(hits) > len(shown):
            names += f"{', ' if shown else ''}{len(hits) - len(shown)} info"
        console.print(Text(f"findings {status}: ", style="bold").append(names, style=""))
    if any(d.get("motivating") for d in diff):
        console.print(Text("* the finding whose fix was applied", style="dim"))
    for skip in vf.get("skipped") or []:
        if isinstance(skip, Mapping):
            console.print(Text(f"not applied: {skip.get('rule')} {skip.get('component')}: "
                               f"{skip.get('reason')}", style="yellow"))
    for note in vf.get("notes") or []:
        console.print(Text(f"note: {note}", style="dim"))
