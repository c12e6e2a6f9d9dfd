"""The terminal report (rich): verdict, ranked findings with evidence and fixes, how the fault
propagates (coupling paths, hubs), the components, the strongest couplings, attention, cost.

Every table fits the console's width (:mod:`hfault.report.columns`): below what a table needs,
its columns are abbreviated, then dropped, in the order the ``*_COLUMN_PRIORITY`` lists give
(most important first; a table's name columns always stay), component names are shortened from
the left, and the report says which columns it left out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from hfault.fixes.dedupe import NO_GRADIENT_RULE, relation_text
from hfault.numbers import fmt
from hfault.report.columns import Column, Fitted, fit, table_width
from hfault.report.width import terminal_width

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_SEVERITY_SHORT = {"error": "err", "warning": "warn", "info": "info"}
_VERDICT_STYLE = {
    "healthy": "bold green",
    "suspicious": "bold yellow",
    "faulty": "bold red",
    "crashed": "bold red",
    "not_diagnosed": "bold magenta",
}
MAX_COMPONENT_ROWS = 40

# Columns that give way at a narrow width, most important first: the last ones are abbreviated,
# then dropped, first. The component table keeps what says a component is beyond its stability
# limit (r, λmax) and moving too fast (‖g‖, the update ratio, its lr) longest.
COMPONENT_COLUMN_PRIORITY = ("r", "λmax", "‖g‖", "‖Δθ‖/‖θ‖", "lr", "zero g", "tr H ± se", "role",
                             "λmin", "params")
FINDING_COLUMN_PRIORITY = ("rule", "severity", "step", "evidence")  # messages repeat evidence
COUPLING_COLUMN_PRIORITY = ("κ ± se", "ρ")
ATTENTION_COLUMN_PRIORITY = ("entropy / log keys", "max logit", "lowest head")
FIX_COLUMN_PRIORITY = ("fix", "how")
FIXED_COUPLING_COLUMN_PRIORITY = ("κ before → after", "ρ before → after")
_ROLE_SHORT = {"attention-pooling": "pool", "cross-attention": "cross"}
MAX_SNIPPETS = 3
MAX_EDGES = 8


def report_console(width: int | None = None) -> Console:
    """The console reports are printed on, ``width`` columns wide (default: ``COLUMNS``, else the
    terminal's width, else 120; see :mod:`hfault.report.width`). Markup is off: names, messages
    and paths come from the user's code and may hold ``[`` and ``]`` (a ModuleDict key, an
    exception message), which rich would otherwise read as markup, drop, or fail on. Styles are
    set with ``Text`` instead."""
    return Console(width=terminal_width() if width is None else width, markup=False)


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
    phases = report.get("phases") or []
    if len(phases) > 1:  # a fine-tune, a GAN: whose steps and losses are whose
        body.append(Text("phases: " + "  •  ".join(_phase(p) for p in phases), style="dim"))
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


def _phase(phase: Mapping[str, Any]) -> str:
    """``2 SGD steps 41–80 (loss 21.4 → 1.86)``."""
    text = f"{phase['phase']} {phase['class']} steps {phase['first_step']}–{phase['last_step']}"
    loss = phase.get("loss")
    if loss:
        text += f" (loss {fmt(loss['first'])} → {fmt(loss['last'])})"
    return text


def _count(n: int) -> str:
    """A parameter count in at most 4 cells (``590k``, ``4.1M``)."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= limit:
            value = n / limit
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(n)


def _left_out(fitted: Fitted, console: Console) -> None:
    """Which columns a table left out for the width, so a reader knows to widen it."""
    if fitted.dropped:
        console.print(Text(f"not shown at {console.width} columns: {', '.join(fitted.dropped)} "
                           "(set COLUMNS wider; the JSON report has them)", style="dim"))


def _evidence(f: Mapping[str, Any]) -> str:
    ev = f.get("evidence") or {}
    metric, value, threshold = ev.get("metric"), ev.get("value"), ev.get("threshold")
    if value is None or isinstance(value, (list, dict)):
        return metric or "–"
    text = f"{metric or 'value'} {fmt(value)}"
    if threshold is not None and not isinstance(threshold, (list, dict)):
        text += f" (limit {fmt(threshold)})"
    return text


def folded(findings: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    """Findings shown under their cause rather than on their own: the components upstream of
    where the gradient stops (HF003 consequences of an HF003), by the cause's rank. One cut can
    starve dozens of components; every one stays in the JSON report, and the terminal lists
    their names in one line."""
    rules = {f.get("rank"): f.get("rule") for f in findings}
    out: dict[int, list[Mapping[str, Any]]] = {}
    for f in findings:
        cause = f.get("consequence_of")
        if isinstance(cause, int) and f.get("rule") == NO_GRADIENT_RULE == rules.get(cause):
            out.setdefault(cause, []).append(f)
    return out


def _findings(report: Mapping[str, Any], console: Console) -> None:
    every = report.get("findings", [])
    if not every:
        console.print(Text("No findings.", style="green"))
        return
    under = folded(every)
    hidden = {id(f) for group in under.values() for f in group}
    findings = [f for f in every if id(f) not in hidden]

    def component(f: Mapping[str, Any]) -> str:
        more = len(under.get(f["rank"], []))
        return (f.get("component") or "(run)") + (f" (+{more} upstream)" if more else "")

    severity = [Text(f["severity"], style=_SEVERITY_STYLE[f["severity"]]) for f in findings]
    columns = [
        Column("#", [str(f["rank"]) for f in findings]),
        Column("rule", [f"{f['rule']} {f['name']}" for f in findings], justify="left",
               short=("rule", [f["rule"] for f in findings])),
        Column("severity", severity, justify="left",
               short=("sev", [Text(_SEVERITY_SHORT[t.plain], style=t.style)
                              for t in severity])),
        Column("component", [component(f) for f in findings], justify="left", kind="name"),
        Column("evidence", [_evidence(f) for f in findings], justify="left", kind="wrap"),
        Column("step", [fmt(f.get("step")) for f in findings]),
    ]
    fitted = fit(columns, FINDING_COLUMN_PRIORITY, console.width)
    console.print(fitted.table("Findings, ranked", title_justify="left"))
    _left_out(fitted, console)
    for f in findings:
        # rank, rule, then the message wrapped at words beside them (a hanging indent)
        line = Table.grid(padding=(0, 2))
        line.add_column(justify="right", no_wrap=True, width=3)
        line.add_column(no_wrap=True)
        line.add_column()
        line.add_row(str(f["rank"]), Text(f["rule"], style=_SEVERITY_STYLE[f["severity"]]),
                     Text(f["message"]))
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
        group = under.get(f["rank"])
        if group:
            names = ", ".join(g.get("component") or "(run)" for g in group)
            console.print(Padding(Text(
                f"+ {len(group)} more {f['rule']} finding(s), consequences of #{f['rank']}: "
                f"{names}", style="cyan"), (0, 0, 0, 5)))
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
    shown = components[:MAX_COMPONENT_ROWS]
    metrics = [last["metrics"].get(c["name"], {}) for c in shown]
    columns = [
        Column("component", [c["name"] for c in shown], justify="left", kind="name"),
        Column("role", [c["role"] for c in shown], justify="left",
               short=("role", [_ROLE_SHORT.get(c["role"], c["role"]) for c in shown])),
        Column("params", [f"{c['numel']:,}" for c in shown],
               short=("params", [_count(c["numel"]) for c in shown])),
        Column("‖g‖", [fmt(m.get("grad_norm")) for m in metrics]),
        Column("‖Δθ‖/‖θ‖", [fmt(m.get("update_ratio")) for m in metrics]),
    ]
    if curved is None:
        columns.append(Column("zero g", [f"{m['zero_grad_fraction']:.0%}"
                                         if "zero_grad_fraction" in m else "–"
                                         for m in metrics]))
    columns.append(Column("lr", [fmt(m.get("lr")) for m in metrics]))
    if curved is not None:
        curv = [curved["metrics"].get(c["name"], {}) for c in shown]
        columns += [
            Column("tr H ± se", [f"{fmt(c['trace'])} ± {fmt(c.get('trace_se'), 2)}"
                                 if "trace" in c else "–" for c in curv],
                   short=("tr H", [fmt(c.get("trace")) for c in curv])),
            Column("λmin", [fmt(c.get("lambda_min")) for c in curv]),
            Column("λmax", [fmt(c.get("lambda_max")) for c in curv]),
            Column("r", [fmt(c.get("stability_ratio"), 2) for c in curv]),
        ]
    flagged = {f["component"] for f in report.get("findings", []) if f.get("component")}
    fitted = fit(columns, COMPONENT_COLUMN_PRIORITY, console.width)
    table = fitted.table(title, row_styles=["bold" if c["name"] in flagged else None
                                            for c in shown])
    console.print(table)
    _left_out(fitted, console)
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
    kappa = [f"{fmt(e.get('kappa'), 2)} ± {fmt(e.get('kappa_se'), 1)}" for e in edges]
    columns = [
        Column("component a", [e["source"] for e in edges], justify="left", kind="name"),
        Column("component b", [e["target"] for e in edges], justify="left", kind="name"),
        Column("κ ± se", kappa, short=("κ", [fmt(e.get("kappa"), 2) for e in edges])),
        Column("ρ", [_rho(e.get("rho")) for e in edges]),
    ]
    fitted = fit(columns, COUPLING_COLUMN_PRIORITY, console.width)
    table = fitted.table("Strongest couplings κ = ‖H_ab‖/√(‖H_a·‖‖H_b·‖)")
    if any(_indefinite(e.get("rho")) for e in edges) and "ρ" not in fitted.dropped:
        table.caption = ("ρ* : |ρ| > 1, the 2×2 Hessian along the two gradients is indefinite: "
                         "a sign of negative curvature, not a correlation")
    console.print(table)
    _left_out(fitted, console)


def _indefinite(rho: Any) -> bool:
    return isinstance(rho, (int, float)) and math.isfinite(rho) and abs(rho) > 1


def _rho(rho: Any) -> str:
    """ρ, starred where |ρ| > 1 (metrics.md: indefinite, not a correlation)."""
    return fmt(rho, 2) + ("*" if _indefinite(rho) else "")


def _attention(snapshot: Mapping[str, Any], console: Console) -> None:
    items = list(snapshot["attention"].items())
    columns = [
        Column("attention module", [name for name, _ in items], justify="left", kind="name"),
        Column("entropy / log keys", [fmt(a.get("entropy_norm_mean"), 2) for _, a in items],
               short=("entropy", [fmt(a.get("entropy_norm_mean"), 2) for _, a in items])),
        Column("lowest head", [fmt(a.get("entropy_norm_head_min"), 2) for _, a in items],
               short=("min head", [fmt(a.get("entropy_norm_head_min"), 2) for _, a in items])),
        Column("max logit", [fmt(a.get("max_logit"), 3) for _, a in items]),
    ]
    fitted = fit(columns, ATTENTION_COLUMN_PRIORITY, console.width)
    console.print(fitted.table(f"Attention at step {snapshot['step']}"))
    _left_out(fitted, console)


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


def _pick_steps(steps: list[Any], limit: int = MAX_STEP_COLUMNS) -> list[int]:
    """Indices of at most ``limit`` (at least 2) steps, first and last included."""
    n, limit = len(steps), max(2, limit)
    if n <= limit:
        return list(range(n))
    k = limit - 1
    return sorted({round(i * (n - 1) / k) for i in range(k + 1)})


def _step_table(name: str, steps: list[Any], rows: list[Mapping[str, Any]],
                width: int) -> Table:
    """One component's metrics before → after, with as many of the matched steps (first and
    last always) as fit the width."""
    labels = [_METRIC_LABEL.get(str(m.get("metric")), str(m.get("metric"))) for m in rows]

    def cells(i: int) -> list[str]:
        out = []
        for m in rows:
            before, after = list(m.get("before") or []), list(m.get("after") or [])
            out.append(_arrow(before[i] if i < len(before) else None,
                              after[i] if i < len(after) else None))
        return out

    columns = [Column("metric", labels, justify="left")]
    for limit in range(MAX_STEP_COLUMNS, 1, -1):
        columns = [columns[0]] + [Column(f"step {steps[i]}", cells(i))
                                  for i in _pick_steps(steps, limit)]
        if table_width([c.natural() for c in columns]) <= width:
            break
    return fit(columns, (), width).table(f"{name}: before → after at matched steps",
                                         title_justify="left")


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
        what, how = [], []
        for f in fixes:
            if f.get("kind") == "lower_lr":
                what.append(f"lr {_arrow(f.get('lr_before'), f.get('lr_after'))}")
            else:
                what.append(f"clip ‖g‖ ≤ {fmt(f.get('max_norm'))}")
            note = str(f.get("note") or "")
            held = f.get("in_effect")
            if isinstance(held, Mapping) and held.get("held") is False:
                note += (f"; NOT IN EFFECT from step {held.get('first_step_off')}: the script "
                         "sets the LR itself")
            how.append(note)
        columns = [
            Column("rule", [str(f.get("rule")) for f in fixes], justify="left"),
            Column("component", [str(f.get("component")) for f in fixes], justify="left",
                   kind="name"),
            Column("fix", what, justify="left", kind="wrap"),
            Column("how", how, justify="left", kind="wrap"),
        ]
        fitted = fit(columns, FIX_COLUMN_PRIORITY, console.width)
        console.print(fitted.table("Fixes applied in the rerun", title_justify="left"))
        _left_out(fitted, console)
    steps = list(vf.get("steps") or [])
    rows = [m for m in vf.get("metrics") or [] if isinstance(m, Mapping)]
    for name in dict.fromkeys(str(m.get("component")) for m in rows):
        if not steps:
            break
        # One small table per component: the step columns need the width.
        console.print(_step_table(name, steps, [m for m in rows
                                                if str(m.get("component")) == name],
                                  console.width))
    edges = [e for e in vf.get("edges") or [] if isinstance(e, Mapping)][:MAX_EDGES]
    if edges and steps:
        last = len(steps) - 1

        def at(series: Any) -> Any:
            return series[last] if isinstance(series, list) and last < len(series) else None

        kappa = [e.get("kappa") or {} for e in edges]
        rho = [e.get("rho") or {} for e in edges]
        columns = [
            Column("component a", [str(e.get("source")) for e in edges], justify="left",
                   kind="name"),
            Column("component b", [str(e.get("target")) for e in edges], justify="left",
                   kind="name"),
            Column("κ before → after", [_arrow(at(k.get("before")), at(k.get("after")), 2)
                                        for k in kappa]),
            Column("ρ before → after", [_arrow(at(r.get("before")), at(r.get("after")), 2)
                                        for r in rho]),
        ]
        columns = [c if c.kind == "name" else
                   Column(c.key, c.cells, short=(c.key.split()[0], c.cells)) for c in columns]
        fitted = fit(columns, FIXED_COUPLING_COLUMN_PRIORITY, console.width)
        console.print(fitted.table(f"Couplings of the fixed components at step {steps[last]}",
                                   title_justify="left"))
        _left_out(fitted, console)
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
