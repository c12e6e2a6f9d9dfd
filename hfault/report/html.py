"""The HTML report: one self-contained file (inline CSS, inline SVG charts drawn here, a few lines
of optional JS), so it opens offline, can be attached to a CI run or an issue, and shows what the
terminal cannot: the coupling heatmap and graph, per-component timelines, the spectrum of flagged
blocks, and a fix's before/after.

It renders the report's JSON form (what ``--json`` writes), so a saved report renders the same;
every string from the report is escaped (script names and messages are untrusted).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfault.fixes.dedupe import relation_text
from hfault.numbers import as_float, fmt
from hfault.report import svg
from hfault.report.svg import HLine, Mark, Series, esc

_VERDICTS = ("healthy", "suspicious", "faulty", "crashed", "not_diagnosed")
_FIX_VERDICTS = ("fixed", "improved", "unchanged", "worse", "not_applicable")
_ROLE_ORDER = {"query": 0, "key": 1, "value": 2, "output": 3, "attention-pooling": 4,
               "cross-attention": 5, "other": 6}
CURVATURE_COLUMNS = (("trace", "tr H"), ("lambda_max", "λmax"),
                     ("stability_ratio", "r = lr·λ̃/τ of the step taken"),
                     ("grad_norm", "‖g‖"))
FIRST_ORDER_COLUMNS = (("grad_norm", "‖g‖"), ("update_ratio", "‖Δθ‖/‖θ‖"),
                       ("weight_norm", "‖θ‖"), ("zero_grad_fraction", "zero-grad share"))
MAX_TIMELINE_ROWS = 40
MAX_SPECTRUM_BLOCKS = 8


def write_html(report: Mapping[str, Any], path: Path) -> None:
    """Write :func:`to_html` of the report to path (UTF-8), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_html(report), encoding="utf-8")


def to_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML document; tolerant of partial reports (a crash before the
    first snapshot, no curvature, an older report without some fields)."""
    ctx = _Context.of(report)
    run = report.get("run") or {}
    sections = [
        ("findings", "Findings", _findings(ctx)),
        ("verify-fix", "Before / after the fix", _verify_fix(report.get("verify_fix"))),
        ("coupling", "Coupling", _coupling(ctx)),
        ("timelines", "Timelines", _timelines(ctx)),
        ("spectrum", "Spectrum of the flagged blocks", _spectrum(ctx)),
    ]
    sections = [s for s in sections if s[2]]
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{content}</section>'
                   for sid, name, content in sections)
    title = f"hfault report · {run.get('script', '?')}"
    version = (report.get("tool") or {}).get("version", "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="hfault {esc(version)}">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f'<body>{_header(report)}<nav class="toc">{nav}</nav><main>{body}</main>'
        f"{_footer(report)}<script>{_JS}</script></body></html>\n"
    )


# ---------------------------------------------------------------- shared context


@dataclass
class _Context:
    """What several sections need, computed once: components, snapshots, flagged names, and the
    finding steps to mark on each component's charts."""

    report: Mapping[str, Any]
    components: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    flagged: list[str]
    marks: dict[str, list[Mark]] = field(default_factory=dict)
    steps: tuple[float, float] | None = None

    @classmethod
    def of(cls, report: Mapping[str, Any]) -> _Context:
        findings = [f for f in report.get("findings") or [] if isinstance(f, dict)]
        flagged = list(dict.fromkeys(f["component"] for f in findings if f.get("component")))
        ctx = cls(report, list(report.get("components") or []),
                  list(report.get("snapshots") or []), findings, flagged)
        for f in findings:
            if f.get("component") and isinstance(f.get("step"), int):
                ctx.marks.setdefault(f["component"], []).append(Mark(f["step"], f["rule"]))
        xs = [s["step"] for s in ctx.snapshots if isinstance(s.get("step"), int)]
        xs += [m.x for ms in ctx.marks.values() for m in ms]
        ctx.steps = (min(xs), max(xs)) if xs else None
        return ctx

    def component(self, name: str) -> Mapping[str, Any]:
        return next((c for c in self.components if c.get("name") == name), {})

    def series(self, name: str, metric: str) -> list[tuple[float, float | None]]:
        """A metric of one component at the snapshot steps. The stability ratio chart plots r
        of the step taken, ``effective_ratio`` as :func:`hfault.report.build.derive` stored it:
        the very number HF201 reads."""
        key = "effective_ratio" if metric == "stability_ratio" else metric
        return [(s["step"], as_float(((s.get("metrics") or {}).get(name) or {}).get(key)))
                for s in self.snapshots]

    def threshold_lines(self, name: str | None, metric: str) -> list[HLine]:
        """A rule's threshold on the chart of the metric its finding is about."""
        out = []
        for f in self.findings:
            ev = f.get("evidence") or {}
            t = as_float(ev.get("threshold"))
            chart = "stability_ratio" if ev.get("metric") == "effective_ratio" else ev.get("metric")
            if chart == metric and t is not None and math.isfinite(t) and (
                name is None or f.get("component") == name
            ):
                out.append(HLine(t, f"{f['rule']} limit {fmt(t)}", svg.BAD))
        return list({h.label: h for h in out}.values())


# ---------------------------------------------------------------- header


def _header(report: Mapping[str, Any]) -> str:
    run, summary = report.get("run") or {}, report.get("summary") or {}
    verdict = summary.get("verdict") if summary.get("verdict") in _VERDICTS else "unknown"
    counts = summary.get("counts") or {}
    count_text = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("error", "warning", "info"))
    top = summary.get("top_component")
    parts = [
        '<header class="top"><div class="wrap">',
        f'<div class="script">hfault report · <code>{esc(run.get("script", "?"))}</code></div>',
        f'<div class="verdict-line"><span class="badge v-{verdict}">{esc(verdict)}</span>'
        f'<span class="counts">{esc(count_text)}</span>',
        f'<span class="top-comp">most likely: <code>{esc(top)}</code></span>' if top else "",
        "</div>",
        f'<p class="headline">{esc(summary.get("headline") or "")}</p>',
        _facts(run),
        "</div></header>",
    ]
    error = run.get("error")
    extra = [_crash(error)] if isinstance(error, Mapping) else []
    extra += [f'<p class="note">note: {esc(n)}</p>' for n in report.get("notes") or []]
    extra.append(_numerics(report.get("numerics") or []))
    if any(extra):
        parts.append(f'<div class="wrap alerts">{"".join(extra)}</div>')
    return "".join(parts)


def _facts(run: Mapping[str, Any]) -> str:
    steps = fmt(run.get("steps"))
    if run.get("max_steps"):
        steps += f" (max {fmt(run['max_steps'])})"
    seconds = as_float(run.get("seconds"))
    facts = [
        ("status", run.get("status")),
        ("rank", f"{run['rank']} of {run['world_size']} (torchrun)"
         if run.get("world_size") else None),
        ("steps", steps),
        ("backward calls", run.get("backward_calls")),
        ("seconds", f"{seconds:.1f}" if seconds is not None else None),
        ("device", run.get("device")),
        ("torch", run.get("torch")),
        ("python", run.get("python")),
        ("curvature", "yes" if run.get("curvature") else "no"),
        ("Hessian-vector products", run.get("hvps")),
        ("snapshots", run.get("schedule")),
        ("script arguments", " ".join(run.get("argv") or []) or None),
    ]
    for opt in run.get("optimizers") or []:
        src = opt.get("source") or {}
        where = f" at {src.get('file')}:{src.get('line')}" if src.get("file") else ""
        facts.append((f"optimizer {opt.get('index', '')}",
                      f"{opt.get('class')} lr {fmt(opt.get('lr'))}, "
                      f"{opt.get('param_groups', '?')} param group(s){where}"))
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(fmt(v))}</dd></div>"
                    for k, v in facts if v is not None)
    return f'<dl class="facts">{items}</dl>'


def _crash(err: Mapping[str, Any]) -> str:
    where = f" at {err.get('file')}:{err.get('line')}" if err.get("file") else ""
    func = f" in {err.get('function')}" if err.get("function") else ""
    code = f"<pre>{esc(err['code'])}</pre>" if err.get("code") else ""
    tb = (f"<details><summary>traceback</summary><pre>{esc(err['traceback'])}</pre></details>"
          if err.get("traceback") else "")
    head = (f"The script raised {err.get('type')}: {err.get('message')}"
            if err.get("type") != "os._exit"
            else f"{str(err.get('message')).capitalize()}: training ended there")
    return f'<div class="crash"><strong>{esc(head)}</strong>{esc(where + func)}{code}{tb}</div>'


def _numerics(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return ""
    ranked = any(e.get("rank") is not None for e in events)  # torchrun: every rank's events
    rows = "".join(
        (f"<tr><td class=num>{esc(fmt(e.get('rank')))}</td>" if ranked else "<tr>")
        + f"<td>{esc(e.get('kind'))}</td><td class=num>{esc(fmt(e.get('step')))}</td>"
        f"<td><code>{esc(e.get('where') or '–')}</code></td><td>{esc(e.get('value'))}</td>"
        f"<td>{esc(e.get('detail', ''))}</td></tr>" for e in events)
    return ('<div class="numerics"><strong>First non-finite values</strong><table><thead><tr>'
            + ("<th>rank</th>" if ranked else "")
            + "<th>kind</th><th>step</th><th>where</th><th>value</th><th>detail</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


# ---------------------------------------------------------------- findings


def _evidence_text(f: Mapping[str, Any]) -> str:
    ev = f.get("evidence") or {}
    metric, value, threshold = ev.get("metric"), ev.get("value"), ev.get("threshold")
    if value is None or isinstance(value, (list, dict)):
        return str(metric or "–")
    text = f"{metric or 'value'} {fmt(as_float(value) if as_float(value) is not None else value)}"
    if threshold is not None and not isinstance(threshold, (list, dict)):
        text += f" vs {fmt(as_float(threshold) if as_float(threshold) is not None else threshold)}"
    return text


def _name(name: Any) -> str:
    """A module path in <code>, breakable after its dots (long names wrap at their parts)."""
    return f"<code>{esc(name).replace('.', '.<wbr>')}</code>"


def _sev(severity: Any) -> str:
    sev = severity if severity in ("error", "warning", "info") else "info"
    return f'<span class="sev sev-{sev}">{esc(severity)}</span>'


def _findings(ctx: _Context) -> str:
    if not ctx.findings:
        return '<p class="ok">No findings.</p>'
    rows = []
    for f in ctx.findings:
        rank = f.get("rank", "")
        rows.append(
            f'<tr><td class=num><a href="#finding-{esc(rank)}">{esc(rank)}</a></td>'
            f'<td><code>{esc(f.get("rule"))}</code> {esc(f.get("name", ""))}</td>'
            f"<td>{_sev(f.get('severity'))}</td>"
            f"<td>{_name(f.get('component') or '(run)')}</td>"
            f"<td>{esc(f.get('message', ''))}</td>"
            f"<td>{esc(_evidence_text(f))}</td><td class=num>{esc(fmt(f.get('step')))}</td></tr>")
    table = ('<table class="findings"><thead><tr><th>#</th><th>rule</th><th>severity</th>'
             "<th>component</th><th>message</th><th>evidence vs threshold</th><th>step</th>"
             f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return table + "".join(_finding_card(f) for f in ctx.findings)


def _finding_card(f: Mapping[str, Any]) -> str:
    fix, loc = f.get("fix") or {}, f.get("location") or {}
    sev, rank = esc(f.get("severity")), esc(f.get("rank"))
    parts = [
        f'<article class="card sev-border-{sev}" id="finding-{rank}">',
        f'<h3>#{esc(f.get("rank"))} <code>{esc(f.get("rule"))}</code> {esc(f.get("name", ""))} '
        f'{_sev(f.get("severity"))} <span class="comp">{esc(f.get("component") or "(run)")}</span>'
        "</h3>",
        f"<p>{esc(f.get('message', ''))}</p>",
        _evidence_block(f.get("evidence") or {}),
    ]
    relation = relation_text(f)
    if relation:
        parts.append(f'<p class="relation">{esc(relation)}</p>')
    elif fix.get("summary"):
        parts.append(f'<p class="fix"><strong>Fix:</strong> {esc(fix["summary"])}</p>')
    if fix.get("snippet") and not relation:
        parts.append(f'<pre class="snippet"><code>{esc(str(fix["snippet"]).strip())}</code></pre>')
    meta = []
    if loc.get("path"):
        meta.append(f"at <code>{esc(loc['path'])}:{esc(loc.get('line', ''))}</code>")
    if f.get("related"):
        meta.append("related: " + ", ".join(f"<code>{esc(r)}</code>" for r in f["related"]))
    if f.get("score") is not None:
        meta.append(f"score {esc(fmt(as_float(f.get('score'))))}")
    if meta:
        parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
    parts.append("</article>")
    return "".join(parts)


def _is_series(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 1 and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and as_float(p[0]) is not None for p in v)


def _evidence_block(ev: Mapping[str, Any]) -> str:
    """Every named evidence value; series ([[step, value], ...]) as a small chart."""
    items, charts = [], []
    for key, value in ev.items():
        if _is_series(value) and all(isinstance(p[1], bool) for p in value):
            hit = [fmt(p[0]) for p in value if p[1]]
            items.append((key, f"at step {', '.join(hit) or 'none'} of {len(value)} measured"))
        elif _is_series(value):
            pts = [(float(as_float(p[0]) or 0), as_float(p[1])) for p in value]
            charts.append(svg.line_chart([Series(key, pts)], title=key, width=240, height=110))
        elif isinstance(value, (dict, list)):
            items.append((key, ", ".join(map(str, value))[:200]))
        else:
            items.append((key, fmt(as_float(value)) if as_float(value) is not None else fmt(value)))
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items)
    return f'<dl class="evidence">{dl}</dl>' + (
        f'<div class="charts">{"".join(charts)}</div>' if charts else "")


# ---------------------------------------------------------------- verify-fix


def _points(pairs: Any) -> list[tuple[float, float | None]]:
    out = []
    for p in pairs or []:
        if isinstance(p, (list, tuple)) and len(p) == 2 and as_float(p[0]) is not None:
            out.append((float(as_float(p[0]) or 0), as_float(p[1])))
    return out


def _verify_fix(vf: Any) -> str:
    """The rerun with the fixes applied (``--verify-fix``): verdict, fixes, loss and the flagged
    metrics before and after, at matched steps."""
    if not isinstance(vf, Mapping):
        return ""
    verdict = vf.get("verdict") if vf.get("verdict") in _FIX_VERDICTS else "unknown"
    final = vf.get("final_loss") or {}
    tolerance = as_float(final.get("tolerance"))
    parts = [
        f'<p class="verdict-line"><span class="badge f-{verdict}">'
        f'{esc(str(vf.get("verdict", "?")).replace("_", " "))}</span> '
        f'{esc(vf.get("summary", ""))}</p>',
        f'<p class="meta">final loss (mean of the last 10% of the steps) '
        f'{esc(fmt(as_float(final.get("before"))))} → {esc(fmt(as_float(final.get("after"))))}'
        + (f" (±{esc(fmt(tolerance, 2))} counts as unchanged)" if tolerance else "") + "</p>",
    ]
    val = vf.get("validation")
    if isinstance(val, Mapping):
        parts.append(f'<p class="meta">validation loss the script printed, at step '
                     f'{esc(val.get("step"))}: {esc(fmt(as_float(val.get("before"))))} → '
                     f'{esc(fmt(as_float(val.get("after"))))} ({esc(val.get("change"))})</p>')
    horizon = vf.get("horizon")
    if isinstance(horizon, Mapping) and horizon.get("baseline") == "rerun":
        parts.append(f'<p class="meta">compared over {esc(horizon.get("steps"))} steps '
                     "(--verify-steps): the before side is a rerun without fixes, the first run "
                     "trained other steps</p>")
    rows = "".join(
        f"<tr><td><code>{esc(x.get('rule'))}</code></td><td>{_name(x.get('component'))}"
        f"</td><td>{esc(x.get('kind'))}</td>"
        f"<td class=num>{esc(fmt(as_float(x.get('lr_before'))))}</td>"
        f"<td class=num>{esc(fmt(as_float(x.get('lr_after'))))}</td>"
        f"<td class=num>{esc(fmt(as_float(x.get('max_norm'))))}</td>"
        f"<td>{_fix_how(x)}</td></tr>"
        for x in vf.get("fixes") or [] if isinstance(x, Mapping))
    if rows:
        parts.append("<table><thead><tr><th>rule</th><th>component</th><th>fix</th>"
                     "<th>lr before</th><th>lr after</th><th>max_norm</th><th>how</th></tr>"
                     f"</thead><tbody>{rows}</tbody></table>")
    loss = vf.get("loss") or {}
    charts = [svg.line_chart(
        [Series("before", _points(loss.get("before")), svg.PALETTE[3]),
         Series("after (fixed)", _points(loss.get("after")), svg.PALETTE[2])],
        title="loss, before vs after", width=560, height=220)]
    for m in vf.get("metrics") or []:
        if not isinstance(m, Mapping):
            continue
        steps = [float(s) for s in m.get("steps") or [] if as_float(s) is not None]
        before = [as_float(v) for v in m.get("before") or []]
        after = [as_float(v) for v in m.get("after") or []]
        title = f"{m.get('metric')} · {m.get('component')}"
        charts.append(svg.line_chart(
            [Series("before", list(zip(steps, before, strict=False)), svg.PALETTE[3]),
             Series("after", list(zip(steps, after, strict=False)), svg.PALETTE[2])],
            title=title, width=min(max(280, svg.text_width(title, 12) + 70), 560), height=150))
    parts.append(f'<div class="charts">{"".join(charts)}</div>')
    parts += [_finding_changes(vf.get("findings")), _edge_changes(vf.get("edges")),
              _skipped(vf.get("skipped"))]
    rerun = vf.get("after")
    if isinstance(rerun, Mapping):
        parts.append(_findings_diff(vf, rerun))
    parts += [f'<p class="meta">note: {esc(n)}</p>' for n in vf.get("notes") or []]
    return "".join(parts)


def _fix_how(fix: Mapping[str, Any]) -> str:
    """How the fix was applied, and whether it held: a script that sets the learning rate itself
    overrides a lowered one, and the comparison then says nothing about the fix."""
    how = esc(fix.get("note") or "")
    held = fix.get("in_effect")
    if isinstance(held, Mapping) and held.get("held") is False:
        off = (f'<strong class="sev-error">not in effect</strong> from step '
               f'{esc(held.get("first_step_off"))}: the script sets the LR itself')
        where = held.get("assigned_at")
        if isinstance(where, Mapping) and where.get("file"):
            off += f' (<code>{esc(where.get("file"))}:{esc(where.get("line"))}</code>)'
        how = f"{how}; {off}" if how else off
    elif isinstance(held, Mapping) and held.get("held") is True:
        checked = held.get("steps_checked")
        how += ("; " if how else "") + f"held at every step checked ({esc(checked)})"
    return how


def _arrow(before: Any, after: Any, digits: int = 3) -> str:
    b, a = as_float(before), as_float(after)
    return (f"{esc(fmt(b, digits) if b is not None else '–')} → "
            f"{esc(fmt(a, digits) if a is not None else '–')}")


def _finding_changes(rows: Any) -> str:
    """Every finding of either run by (rule, component): gone, weaker, same, stronger or new."""
    body = "".join(
        f"<tr><td><code>{esc(d.get('rule'))}</code> {esc(d.get('name') or '')}</td>"
        f"<td>{_name(d.get('component') or '(run)')}</td>"
        f"<td><span class=\"change c-{esc(d.get('status'))}\">{esc(d.get('status'))}</span>"
        f"{' · fixed here' if d.get('motivating') else ''}</td>"
        f"<td>{esc(d.get('severity_before') or '–')} → {esc(d.get('severity_after') or '–')}"
        f"</td><td class=num>{_arrow(d.get('score_before'), d.get('score_after'))}</td></tr>"
        for d in rows or [] if isinstance(d, Mapping))
    return _titled_table("Findings, before → after",
                         ("rule", "component", "change", "severity", "score"), body)


def _titled_table(title: str, headers: Sequence[str], body: str) -> str:
    """An h3 and a table of ``body`` rows; nothing when there are no rows."""
    if not body:
        return ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (f"<h3>{esc(title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _last_pair(values: Any) -> tuple[Any, Any]:
    """(before, after) at the last matched step where both were measured (else the last)."""
    before = list((values or {}).get("before") or [])
    after = list((values or {}).get("after") or [])
    pairs = list(zip(before, after, strict=False))
    both = [p for p in pairs if as_float(p[0]) is not None and as_float(p[1]) is not None]
    return (both or pairs or [(None, None)])[-1]


def _edge_changes(rows: Any) -> str:
    """κ and ρ of the fixed components' strongest couplings, at the last matched step."""
    body = "".join(
        f"<tr><td>{_name(e.get('source'))} — {_name(e.get('target'))}</td>"
        f"<td class=num>{_arrow(*_last_pair(e.get('kappa')))}</td>"
        f"<td class=num>{_arrow(*_last_pair(e.get('rho')), digits=2)}</td></tr>"
        for e in rows or [] if isinstance(e, Mapping))
    return _titled_table("Couplings of the fixed components (last matched step)",
                         ("edge", "κ before → after", "ρ before → after"), body)


def _skipped(rows: Any) -> str:
    items = "".join(
        f"<li><code>{esc(x.get('rule'))}</code> {_name(x.get('component'))} "
        f"({esc(x.get('kind'))}): {esc(x.get('reason'))}</li>"
        for x in rows or [] if isinstance(x, Mapping))
    return f"<h3>Fixes not applied</h3><ul>{items}</ul>" if items else ""


def _findings_diff(vf: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Which findings of the rerun remain, by rule and component."""
    summary = after.get("summary") or {}
    verdict = summary.get("verdict") if summary.get("verdict") in _VERDICTS else "unknown"
    rows = "".join(
        f"<tr><td><code>{esc(f.get('rule'))}</code> {esc(f.get('name', ''))}</td>"
        f"<td>{_sev(f.get('severity'))}</td><td>{_name(f.get('component') or '(run)')}"
        f"</td><td>{esc(f.get('message', ''))}</td></tr>"
        for f in after.get("findings") or [] if isinstance(f, Mapping))
    table = ("<table><thead><tr><th>rule</th><th>severity</th><th>component</th><th>message</th>"
             f"</tr></thead><tbody>{rows}</tbody></table>" if rows
             else '<p class="ok">The rerun has no findings.</p>')
    return (f'<h3>The rerun: <span class="badge v-{verdict}">{esc(verdict)}</span></h3>'
            f'<p class="meta">{esc(summary.get("headline", ""))}</p>{table}')


# ---------------------------------------------------------------- coupling


def _graph_snapshot(ctx: _Context) -> Mapping[str, Any] | None:
    """The last snapshot whose coupling graph has edges (else the last with a graph)."""
    graphs = [s for s in ctx.snapshots if isinstance(s.get("graph"), Mapping)]
    with_edges = [s for s in graphs if s["graph"].get("edges")]
    chosen = with_edges or graphs
    return chosen[-1] if chosen else None


def _coupling_nodes(ctx: _Context, graph: Mapping[str, Any]) -> list[str]:
    """The coupling set (nodes with an edge), ordered by layer, attention module, role."""
    names = {n for e in graph.get("edges") or [] for n in (e.get("source"), e.get("target"))}
    order = {c.get("name"): i for i, c in enumerate(ctx.components)}
    info = {n.get("name"): n for n in graph.get("nodes") or []}

    def key(name: str) -> tuple[Any, ...]:
        node = info.get(name) or ctx.component(name)
        layer = node.get("layer")
        return (layer if isinstance(layer, int) else 10**9, str(node.get("attention") or ""),
                _ROLE_ORDER.get(str(node.get("role")), 9), order.get(name, 10**9), name)

    return sorted((n for n in names if isinstance(n, str)), key=key)


def common_prefix(names: Sequence[str]) -> str:
    """The longest dotted module-path prefix all names share, leaving each a non-empty rest:
    "distilbert.transformer.layer." for DistilBERT's projections (labels stay short)."""
    if len(names) < 2:
        return ""
    parts = [n.split(".") for n in names]
    shared = 0
    while all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    return ".".join(parts[0][:shared]) + "." if shared else ""


def _indefinite(e: Mapping[str, Any]) -> str:
    """metrics.md: |ρ| > 1 means the 2×2 Hessian along the gradients is indefinite."""
    rho = as_float(e.get("rho"))
    return " (|ρ| > 1: indefinite, not a correlation)" if rho is not None and abs(rho) > 1 else ""


def _edge_tip(e: Mapping[str, Any]) -> str:
    return (f"{e.get('source')} — {e.get('target')}: κ = {fmt(as_float(e.get('kappa')), 3)} ± "
            f"{fmt(as_float(e.get('kappa_se')), 2)}, ρ = {fmt(as_float(e.get('rho')), 2)}"
            f"{_indefinite(e)}, ‖H_ab‖_F = {fmt(as_float(e.get('hfro')), 3)}")


def _coupling(ctx: _Context) -> str:
    snap = _graph_snapshot(ctx)
    if snap is None:
        return '<p class="muted">No coupling graph: curvature was not measured.</p>'
    graph = snap["graph"]
    names = _coupling_nodes(ctx, graph)
    if len(names) < 2:
        return (f'<p class="muted">No couplings measured at step {esc(snap.get("step"))} '
                "(fewer than two components in the coupling set, or curvature failed).</p>")
    index = {n: i for i, n in enumerate(names)}
    edges = [e for e in graph.get("edges") or [] if e.get("source") in index
             and e.get("target") in index and math.isfinite(as_float(e.get("kappa")) or math.nan)]
    kmax = max((as_float(e["kappa"]) or 0.0 for e in edges), default=0.0) or 1.0
    cells = {}
    for e in edges:
        i, j = index[e["source"]], index[e["target"]]
        cell = svg.Cell(as_float(e["kappa"]) or 0.0, _edge_tip(e))
        cells[(i, j)] = cells[(j, i)] = cell
    flagged = {index[n] for n in ctx.flagged if n in index}
    prefix = common_prefix(names)
    labels = [n[len(prefix):] for n in names]
    heat = svg.heatmap(labels, cells, title=f"κ between components, step {snap.get('step')}",
                       vmax=kmax, highlight=flagged, legend="κ")
    shared = (f" Labels leave out the common prefix <code>{esc(prefix)}</code>" if prefix
              else "")
    return (f'<p class="muted">κ = ‖H_ab‖_F / √(‖H_a·‖_F ‖H_b·‖_F) ∈ [0, 1] between the '
            "components of the coupling set, from the last measured step "
            f"({esc(snap.get('step'))}). Colour scale from 0 to the largest κ; hover a cell for "
            "κ ± SE, ρ and ‖H_ab‖_F. "
            f"Flagged components in red.{shared}</p>"
            f'<div class="charts">{heat}{_graph_drawing(ctx, graph, names, edges, kmax)}</div>'
            f"{_propagation(ctx)}")


def _path_edges(ctx: _Context) -> dict[frozenset[str], tuple[str, str]]:
    """Edges on propagation paths, with their direction along the path."""
    out: dict[frozenset[str], tuple[str, str]] = {}
    for p in (ctx.report.get("propagation") or {}).get("paths") or []:
        path = [n for n in p.get("path") or [] if isinstance(n, str)]
        for a, b in itertools.pairwise(path):
            out.setdefault(frozenset((a, b)), (a, b))
    return out


def _graph_drawing(ctx: _Context, graph: Mapping[str, Any], names: list[str],
                   edges: list[Mapping[str, Any]], kmax: float) -> str:
    info = {n.get("name"): n for n in graph.get("nodes") or []}
    on_path = _path_edges(ctx)
    path_nodes = {n for pair in on_path for n in pair}
    flagged = set(ctx.flagged)
    prefix = common_prefix(names)
    nodes = []
    for name in names:
        n = info.get(name) or {}
        tip = (f"{name} ({n.get('role', '?')}, layer {fmt(n.get('layer'))}): tr H "
               f"{fmt(as_float(n.get('trace')))}, λmax {fmt(as_float(n.get('lambda_max')))}, "
               f"r {fmt(as_float(n.get('stability_ratio')), 2)}"
               + (" · flagged" if name in flagged else ""))
        nodes.append(svg.Node(name, tip, name in flagged, name in path_nodes,
                              name[len(prefix):]))
    drawn = []
    for e in edges:
        key = frozenset((e["source"], e["target"]))
        src, dst = on_path.get(key, (e["source"], e["target"]))
        drawn.append(svg.Edge(src, dst, (as_float(e["kappa"]) or 0.0) / kmax, _edge_tip(e),
                              key in on_path))
    drawing = svg.node_link(nodes, drawn, title="coupling graph (edge width ∝ κ)", uid="cg")
    legend = ('<p class="legend"><span class="dot flagged"></span>flagged component '
              '<span class="swatch path"></span>propagation path (arrow: from the flagged '
              "component to the output side) <span class=\"swatch edge\"></span>coupling, width "
              f"and opacity ∝ κ (largest {esc(fmt(kmax, 2))})</p>")
    width = svg.node_link_width(nodes)
    return f'<figure class="graph" style="max-width:{width:.0f}px">{drawing}{legend}</figure>'


def _propagation(ctx: _Context) -> str:
    prop = ctx.report.get("propagation") or {}
    items = []
    for p in prop.get("paths") or []:
        chain = " → ".join(_name(n) for n in p.get("path") or [])
        strength = fmt(as_float(p.get("strength")), 2)
        items.append(f"<li><strong>path</strong> {chain} "
                     f"<span class=muted>(∏κ = {esc(strength)})</span></li>")
    hubs = prop.get("hubs") or []
    if hubs:
        items.append("<li><strong>hubs</strong> " + ", ".join(
            f"{_name(h.get('name'))} (Σκ {esc(fmt(as_float(h.get('weighted_degree')), 2))})"
            for h in hubs) + "</li>")
    for group in prop.get("communities") or []:
        items.append("<li><strong>group</strong> "
                     + ", ".join(_name(n) for n in group) + "</li>")
    if not items:
        return ""
    return (f"<h3>How it propagates (step {esc(prop.get('step'))})</h3>"
            f'<ul class="prop">{"".join(items)}</ul>')


# ---------------------------------------------------------------- timelines


def _timelines(ctx: _Context) -> str:
    return _loss_chart(ctx) + _attention_charts(ctx) + _component_rows(ctx)


def _loss_chart(ctx: _Context) -> str:
    pts = [(float(p["step"]), as_float(p.get("loss"))) for p in
           (ctx.report.get("timeline") or {}).get("loss") or [] if isinstance(p.get("step"), int)]
    if not pts:
        return '<p class="muted">No loss recorded.</p>'
    charted = {c.get("name") for c in ctx.components}
    marks = [Mark(f["step"], f["rule"]) for f in ctx.findings if isinstance(f.get("step"), int)
             and (not f.get("component") or f["component"] not in charted)]
    chart = svg.line_chart([Series("loss", pts)], title="loss per step", width=1100, height=220,
                           marks=marks, cls="chart wide")
    return (f"<figure>{chart}<figcaption>Loss of every optimizer step (red bands: non-finite "
            "loss; dashed lines: steps of findings on the run or on modules without their own "
            "chart).</figcaption></figure>")


def _attention_charts(ctx: _Context) -> str:
    modules = list(dict.fromkeys(m for s in ctx.snapshots for m in (s.get("attention") or {})))
    if not modules:
        return ""
    charts = []
    for metric, title in (("entropy_norm_mean", "attention entropy / log keys"),
                          ("entropy_norm_head_min", "lowest head's entropy / log keys"),
                          ("max_logit", "largest attention logit")):
        series = [Series(m, [(s["step"], as_float(((s.get("attention") or {}).get(m) or {})
                                             .get(metric))) for s in ctx.snapshots],
                         svg.PALETTE[i % len(svg.PALETTE)]) for i, m in enumerate(modules)]
        marks = [Mark(f["step"], f["rule"]) for f in ctx.findings
                 if (f.get("evidence") or {}).get("metric") == metric
                 and isinstance(f.get("step"), int)]
        charts.append(svg.line_chart(series, title=title, width=360, height=190,
                                     scale="linear", hlines=ctx.threshold_lines(None, metric),
                                     marks=marks, x_domain=ctx.steps))
    return (f'<h3>Attention</h3><div class="charts">{"".join(charts)}</div>'
            '<p class="muted">Per attention module at the snapshot steps: 1 = uniform '
            "attention, 0 = all weight on one key.</p>")


def _timeline_order(ctx: _Context) -> list[str]:
    """Flagged components first (by rank), then the attention components, then the rest."""
    names = [n for c in ctx.components if isinstance(n := c.get("name"), str)]
    attn = [n for c in ctx.components if c.get("attention") and isinstance(n := c.get("name"), str)]
    flagged = [n for n in ctx.flagged if n in names]
    return list(dict.fromkeys([*flagged, *attn, *names]))


def _component_rows(ctx: _Context) -> str:
    if not ctx.snapshots or not ctx.components:
        return '<p class="muted">No snapshot was taken.</p>'
    curved = any("trace" in m for s in ctx.snapshots for m in (s.get("metrics") or {}).values())
    columns = CURVATURE_COLUMNS if curved else FIRST_ORDER_COLUMNS
    order = _timeline_order(ctx)
    rows = []
    for name in order[:MAX_TIMELINE_ROWS]:
        rows.append(_component_row(ctx, name, columns))
    more = (f'<p class="muted">{len(order) - MAX_TIMELINE_ROWS} more components in the JSON '
            "report.</p>" if len(order) > MAX_TIMELINE_ROWS else "")
    head = "".join(f"<div>{esc(label)}</div>" for _, label in columns)
    curvature_note = ("; the grey line r = 1 is the optimizer's stability limit, error bars on "
                      "tr H are ± one standard error" if curved else
                      "; no curvature was measured, so these are first-order statistics")
    return ('<h3>Per component, at the snapshot steps</h3><p class="muted">Flagged components '
            "first, then the attention components. Each chart has its own y scale (log when the "
            "values are positive and span decades); dashed red lines mark the steps of the "
            f"component's findings{curvature_note}.</p>"
            '<input id="tl-filter" type="search" placeholder="filter components" hidden>'
            f'<div class="tl"><div class="tl-head"><div>component</div>{head}</div>'
            f"{''.join(rows)}</div>{more}")


def _params(numel: Any) -> str:
    if not isinstance(numel, int):
        return "? parameters"
    return "1 parameter" if numel == 1 else f"{numel:,} parameters"


def _component_row(ctx: _Context, name: str, columns: Sequence[tuple[str, str]]) -> str:
    comp = ctx.component(name)
    flagged = name in ctx.flagged
    marks = ctx.marks.get(name, [])
    charts = []
    for k, (metric, label) in enumerate(columns):
        errors = ([as_float((s.get("metrics") or {}).get(name, {}).get("trace_se"))
                   for s in ctx.snapshots] if metric == "trace" else None)
        hlines = ctx.threshold_lines(name, metric)
        if metric == "stability_ratio":
            hlines.append(HLine(1.0, "r = 1"))
        charts.append(svg.line_chart(
            [Series(label, ctx.series(name, metric), svg.BAD if flagged else svg.PALETTE[0],
                    errors=errors)],
            width=250, height=130, hlines=hlines, marks=marks, x_domain=ctx.steps,
            mark_labels=k == 0))
    mine = [f for f in ctx.findings if f.get("component") == name]
    worst = next((sev for sev in ("error", "warning", "info")
                  if any(f.get("severity") == sev for f in mine)), "info")
    rules = ", ".join(dict.fromkeys(str(f.get("rule")) for f in mine))
    badge = f'<span class="sev sev-{worst}">{esc(rules)}</span>' if mine else ""
    return (f'<div class="tl-row{" flagged" if flagged else ""}" data-name="{esc(name)}">'
            f'<div class="tl-name">{_name(name)}'
            '<span class="muted">'
            f'{esc(comp.get("role", ""))} · {esc(_params(comp.get("numel")))}</span>{badge}'
            f"</div>{''.join(f'<div>{c}</div>' for c in charts)}</div>")


# ---------------------------------------------------------------- spectrum


def _spectrum(ctx: _Context) -> str:
    measured = [n for n in ctx.flagged
                if any("lambda_max" in ((s.get("metrics") or {}).get(n) or {})
                       for s in ctx.snapshots)]
    blocks = measured[:MAX_SPECTRUM_BLOCKS]
    if not blocks:
        why = ("no flagged component" if not ctx.flagged
               else "no curvature was measured for the flagged components")
        return f'<p class="muted">Nothing to show: {why}.</p>'
    figures = [_spectrum_block(ctx, name) for name in blocks]
    return ('<p class="muted">Per snapshot step, the bar spans the extreme eigenvalues '
            "[λmin, λmax] of the component's Hessian block H_bb (Lanczos; Ritz residual in the "
            "tooltip), and the dot beside it is the mean eigenvalue Tr(H_bb)/n with ± one "
            "standard error (Hutchinson, n = the component's parameter count). The mean must lie "
            "within [λmin, λmax]; a dot outside the bar means one of the estimates is off "
            "(a noisy trace or unconverged extremes). A bar reaching below 0 is an indefinite "
            "block.</p>"
            f'<div class="charts">{"".join(figures)}</div>'
            + (f'<p class="muted">{len(measured) - len(blocks)} more flagged components in the '
               "JSON report.</p>" if len(measured) > len(blocks) else ""))


def _spectrum_block(ctx: _Context, name: str) -> str:
    numel = as_float(ctx.component(name).get("numel"))
    items, rows = [], []
    for s in ctx.snapshots:
        m = (s.get("metrics") or {}).get(name) or {}
        if "lambda_max" not in m and "trace" not in m:
            continue
        lo, hi = as_float(m.get("lambda_min")), as_float(m.get("lambda_max"))
        tr, se = as_float(m.get("trace")), as_float(m.get("trace_se"))
        mid = tr / numel if tr is not None and numel else None
        err = se / numel if se is not None and numel else None
        tip = (f"step {s['step']}: λmin {fmt(lo)}, λmax {fmt(hi)}, residual "
               f"{fmt(as_float(m.get('eig_residual')), 2)}; Tr/n {fmt(mid)} ± {fmt(err, 2)}")
        items.append(svg.Interval(str(s["step"]), lo, hi, mid, err, tip))
        cells = (s["step"], fmt(lo), fmt(hi), f"{fmt(tr)} ± {fmt(se, 2)}", fmt(mid),
                 fmt(as_float(m.get("eig_residual")), 2),
                 fmt(as_float(m.get("effective_ratio")), 2))  # r as HF201 and the chart read it
        rows.append("<tr>" + "".join(f"<td class=num>{esc(c)}</td>" for c in cells) + "</tr>")
    chart = svg.interval_chart(items, title=name, width=380, height=210)
    table = ('<table class="small"><thead><tr><th>step</th><th>λmin</th><th>λmax</th>'
             "<th>tr H ± se</th><th>Tr/n</th><th>residual</th><th>r</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    return f'<figure class="spec">{chart}{table}</figure>'


# ---------------------------------------------------------------- footer


def _footer(report: Mapping[str, Any]) -> str:
    tool = report.get("tool") or {}
    rules = report.get("rules") or []
    rows = "".join(
        f"<tr><td><code>{esc(r.get('id'))}</code></td><td>{esc(r.get('name'))}</td>"
        f"<td>{esc(r.get('severity'))}</td><td>{esc(r.get('summary', ''))}</td>"
        f"<td>{esc(', '.join(f'{k}={fmt(v)}' for k, v in (r.get('params') or {}).items()))}"
        "</td></tr>" for r in rules if isinstance(r, Mapping))
    applied = (f"<details><summary>{len(rules)} rules applied</summary><table><thead><tr>"
               "<th>id</th><th>name</th><th>severity</th><th>summary</th><th>thresholds</th>"
               f"</tr></thead><tbody>{rows}</tbody></table></details>" if rows else "")
    return (f'<footer class="wrap">{applied}<p class="muted">{esc(tool.get("name", "hfault"))} '
            f'{esc(tool.get("version", ""))} · report schema '
            f'{esc(report.get("schema_version", "?"))} · a self-contained file: no network '
            "needed to view it.</p></footer>")


# ---------------------------------------------------------------- assets

_CSS = """
:root{--fg:#1d232a;--muted:#5f6b76;--line:#e1e5ea;--bg:#f4f6f8;--card:#fff;--err:#c62828;
--warn:#a15c00;--info:#0b6aa2;--ok:#2e7d32}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;color:var(--fg);background:var(--bg)}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace}
code{font-size:.92em;overflow-wrap:break-word}
.wrap,main{max-width:1320px;margin:0 auto;padding:0 28px}
header.top{background:#1f2730;color:#f3f5f7;padding:18px 0 14px}
header.top code{color:#fff}
.script{font-size:15px;opacity:.9}
.verdict-line{display:flex;flex-wrap:wrap;align-items:center;gap:14px;margin:10px 0 4px}
.badge{display:inline-block;padding:3px 12px;border-radius:14px;font-weight:700;
text-transform:uppercase;letter-spacing:.05em;font-size:13px;color:#fff;background:#777}
.v-healthy,.f-fixed{background:var(--ok)}.v-not_diagnosed{background:#7a4a9a}.v-suspicious,.f-improved{background:#c77c00}
.v-faulty,.f-worse{background:var(--err)}.v-crashed{background:#6a1b9a}
.f-unchanged,.f-not_applicable{background:#6b7580}
.change{font-weight:600}.c-gone{color:var(--ok)}.c-weaker{color:#2e7d32}
.c-stronger,.c-new{color:var(--err)}.c-same{color:#6b7580}
.counts{opacity:.85}.top-comp{font-weight:600}
.headline{font-size:16px;margin:6px 0 10px;max-width:1100px}
dl.facts{display:flex;flex-wrap:wrap;gap:6px 22px;margin:0;font-size:12.5px}
dl.facts div{display:flex;gap:6px}dl.facts dt{opacity:.65}dl.facts dd{margin:0}
.alerts{padding-top:12px}
.crash{background:#fdecea;border:1px solid #f5c2c0;border-radius:8px;padding:10px 14px;
margin:6px 0;color:#7f1d1d}
.crash pre{margin:8px 0 0}
.note{background:#fff8e1;border:1px solid #f3df9b;border-radius:8px;padding:8px 12px;margin:6px 0}
.numerics{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 12px;
margin:6px 0}
nav.toc{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);
padding:8px 28px;display:flex;gap:18px;justify-content:center}
nav.toc a{color:var(--info);text-decoration:none;font-weight:600}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px;
margin:18px 0}
h2{font-size:19px;margin:0 0 10px}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.small{font-size:12px;width:auto}table.small td,table.small th{padding:3px 8px}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.sev-error{background:#fdecea;color:var(--err)}.sev-warning{background:#fff4e0;color:var(--warn)}
.sev-info{background:#e6f2fa;color:var(--info)}
.card{border:1px solid var(--line);border-left:5px solid #999;border-radius:8px;padding:10px 16px;
margin:14px 0;background:#fff}
.sev-border-error{border-left-color:var(--err)}.sev-border-warning{border-left-color:#e0a100}
.sev-border-info{border-left-color:var(--info)}
.card h3{margin:2px 0 6px;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
.card .comp{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600}
dl.evidence{display:flex;flex-wrap:wrap;gap:4px 8px;margin:6px 0;font-size:12.5px}
dl.evidence div{background:#f3f5f7;border-radius:6px;padding:2px 8px;display:flex;gap:6px}
dl.evidence dt{color:var(--muted)}dl.evidence dd{margin:0;font-variant-numeric:tabular-nums}
.fix{margin:8px 0 6px}.relation{margin:8px 0 6px;font-style:italic}.fix strong{color:var(--ok)}
pre{background:#101820;color:#e6edf3;padding:10px 14px;border-radius:8px;overflow:auto;
font-size:12.5px;line-height:1.45;margin:6px 0}
.meta,.muted{color:var(--muted);font-size:12.5px}.ok{color:var(--ok);font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:14px 18px;align-items:flex-start}
figure{margin:6px 0}figcaption{color:var(--muted);font-size:12px}
svg.chart{max-width:100%;height:auto;background:#fff}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;font-size:11px;
fill:#333}
svg .ttl{font-weight:600;font-size:12px;fill:#222}
svg .tick{fill:#6b7580;font-size:10px}svg .ty{text-anchor:end}svg .tx{text-anchor:middle}
svg .axl{fill:#8a949e;font-size:10px;text-anchor:end}
svg .axl0{fill:#8a949e;font-size:10px}
svg .frame{fill:none;stroke:#cfd6dd}svg .grid{stroke:#edf0f3}svg .zero{stroke:#9aa3ab}
svg .ax{stroke:#9aa3ab}
svg .ln{fill:none;stroke-width:1.8;stroke-linejoin:round}svg .err{fill:none;stroke-width:1.2}
svg .bad{fill:#d62728;fill-opacity:.16}
svg .href{stroke-dasharray:5 3;stroke-width:1.2}svg .hlbl{font-size:10px}
svg .mark line{stroke-dasharray:3 3;stroke-width:1.3}
svg .mark text{font-size:10px;font-weight:700}
svg .nodata{fill:#9aa3ab;text-anchor:middle}
svg .empty{fill:#f6f7f9;stroke:#fff}svg .cell{stroke:#fff}
svg .val{font-size:10px;text-anchor:middle}
svg .lbl{fill:#333}svg .hl{fill:#c62828;font-weight:700}
svg .ivl{fill:#4e79a7;fill-opacity:.5;stroke:#4e79a7}
svg .lg{font-size:10px}
.graph{margin:0}.legend{font-size:12px;color:var(--muted)}
.dot,.swatch{display:inline-block;vertical-align:middle;margin:0 4px 0 10px}
.dot.flagged{width:10px;height:10px;border-radius:50%;background:#d62728}
.swatch{width:22px;height:4px}.swatch.path{background:#e8710a}
.swatch.edge{background:#4e79a7;opacity:.6}
ul.prop{margin:4px 0;padding-left:18px}ul.prop li{margin:3px 0}
.tl{display:flex;flex-direction:column;gap:2px}
.tl-head,.tl-row{display:grid;grid-template-columns:190px repeat(4,minmax(0,1fr));gap:8px;
align-items:center}
.tl-head{font-size:12px;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);
padding:4px 0}
.tl-row{border-bottom:1px solid var(--line);padding:2px 0}
.tl-row.flagged{background:#fff6f5}
.tl-name{display:flex;flex-direction:column;gap:2px;padding-left:4px}
.tl-name .sev{align-self:flex-start}
#tl-filter{margin:6px 0;padding:5px 10px;border:1px solid var(--line);border-radius:6px;width:260px}
.spec{display:flex;flex-direction:column;gap:4px}
footer{padding-bottom:30px}
details summary{cursor:pointer;color:var(--info)}
@media print{nav.toc{display:none}section{break-inside:avoid-page}}
"""

_JS = """
(function () {
  var box = document.getElementById("tl-filter");
  if (box) {
    box.hidden = false;
    box.addEventListener("input", function () {
      var q = box.value.toLowerCase();
      document.querySelectorAll(".tl-row").forEach(function (row) {
        row.hidden = q !== "" && row.dataset.name.toLowerCase().indexOf(q) < 0;
      });
    });
  }
  document.body.dataset.rendered = "ok";
})();
"""
