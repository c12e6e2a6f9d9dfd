"""Terminal tables of ``hfault perturb`` (rich), rendered from the JSON data, and JSON writing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hfault.numbers import clean, fmt

__all__ = ["render", "write_json"]


def write_json(data: Mapping[str, Any], path: Path) -> None:
    """Strict JSON, non-finite numbers as "nan"/"inf"/"-inf" as in every hfault report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2, allow_nan=False) + "\n")


def _pm(stat: Mapping[str, Any] | None, percent: bool = False) -> str:
    """``mean ± half-width`` of a 95% interval (``mean`` alone without one)."""
    if not stat or stat.get("mean") is None:
        return "–"
    mean, ci = stat["mean"], stat.get("ci95")
    if percent:
        text = f"{100 * mean:.1f}%"
        if ci:
            text += f" ±{50 * (ci[1] - ci[0]):.1f}"
    else:
        text = fmt(mean)
        if ci:
            text += f" ±{fmt(0.5 * (ci[1] - ci[0]), 2)}"
    if stat.get("missing"):
        text += f" ({stat['missing']} out)"
    return text


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render(data: Mapping[str, Any], console: Console) -> None:
    """Header (settings, baseline curvature, noise floor, notes) and two tables per α sweep."""
    s = data["settings"]
    first = s["injection"]["first"]
    inj = ", ".join(map(str, s["injection"]["steps"]))
    if s["injection"]["every"]:
        inj = (inj + "; " if inj else "") + f"every {s['injection']['every']}"
    draws = f"{s['draws']} draws" + (" (antithetic pairs δ, −δ)" if s["antithetic"] else "")
    runs = data.get("runs") or {}
    head = Text()
    head.append("hfault perturb", style="bold")
    head.append(f"  {data['script']}  •  status {data['status']}")
    meta = (
        f"θ_b ← θ_b + α·RMS(θ_b)·δ after the optimizer step at {inj}; measured at step "
        f"{data['measured_step']}  •  {draws}, seed {s['seed']}  •  "
        f"{runs.get('count', '?')} runs in {fmt(runs.get('seconds'))}s"
    )
    body: list[Any] = [head, Text(meta, style="dim")]
    floor = data.get("noise_floor")
    if floor is not None:
        if floor["identical"]:
            body.append(Text("noise floor: a second unperturbed run is bit-identical "
                             f"({floor['steps_compared']} steps)", style="green"))
        else:
            body.append(Text(
                f"noise floor: two unperturbed runs differ by up to |ΔL| "
                f"{fmt(floor['max_abs_dloss'])}, flip share {_pct(floor['flip_share'])}",
                style="yellow"))
    if data.get("error"):
        err = data["error"]
        where = f" at {err.get('file')}:{err.get('line')}" if err.get("file") else ""
        body.append(Text(f"script raised {err.get('type')}: {err.get('message')}{where}",
                         style="red"))
    for note in data.get("notes", []):
        body.append(Text(f"note: {note}", style="yellow"))
    console.print(Panel(Group(*body), box=box.ROUNDED))

    base = Table(title=f"Baseline at step {data['measured_step']} (the step after the first "
                 f"injection, step {first})", box=box.SIMPLE, title_justify="left")
    for col in ("component", "RMS(θ)", "‖g‖", "Tr(H_bb) ± SE", "λmax", "λmin"):
        base.add_column(col, justify="left" if col == "component" else "right",
                        overflow="fold")
    for name, c in data["baseline"]["components"].items():
        trace = "–" if c.get("trace") is None else (
            f"{fmt(c['trace'])} ± {fmt(c.get('trace_se'), 2)}")
        base.add_row(name, fmt(c.get("rms")), fmt(c.get("grad_norm")), trace,
                     fmt(c.get("lambda_max")), fmt(c.get("lambda_min")))
    console.print(base)
    if not data["experiments"]:
        return

    steps = f"step {data['measured_step']}"
    resolution = data["baseline"].get("loss_resolution")
    caption = None
    unresolved = any(
        ((a.get("summary") or {}).get("prediction") or {}).get("resolved") is False
        for e in data["experiments"] for a in e["alphas"]
    )
    if resolution and unresolved:
        caption = (f"* the prediction is below 10× the loss's float rounding (eps·|L| = "
                   f"{fmt(resolution, 2)}): ΔL₁ is not resolved at this α")
    loss = _table(
        f"Loss change on the first batch after the injection ({steps}) vs the second-order model",
        ["component", "α", "ΔL₁ (95% CI)", "same draws", "2nd-order err",
         "½α²ΣRMS²Tr (95% CI)", "sd(α·g·δ)"],
        caption,
    )
    has_eval = any((a.get("summary") or {}).get("flip_eval") for e in data["experiments"]
                   for a in e["alphas"])
    effect = _table(
        f"Predictions and loss from {steps} to the end of the run (flips: share of argmax "
        "predictions that differ from the baseline's)",
        ["component", "α", "flips₁", "flips window", *(["flips eval"] if has_eval else []),
         "ΔL window", "ΔL last", "diverged"],
    )
    curv = _table(
        f"Gradient norm and curvature of the perturbed block at {steps}",
        ["component", "α", "Δ‖g‖", "ΔTr(H_bb)", "Δλmax"],
    )
    for e in data["experiments"]:
        single = len(e["components"]) == 1
        for i, a in enumerate(e["alphas"]):
            sm = a.get("summary")
            if sm is None:
                continue
            label = e["label"] if i == 0 else ""
            alpha = fmt(a["alpha"])
            p = sm["prediction"]
            mark = " *" if p.get("resolved") is False else ""
            trace = fmt(p["trace"])
            if p.get("trace_ci95"):
                lo, hi = p["trace_ci95"]
                trace += f" ±{fmt(0.5 * (hi - lo), 2)}"
            loss.add_row(label, alpha, _pm(sm["dloss_first"]) + mark, fmt(p["same_draws"]),
                         fmt(p["model_error"], 2), trace, fmt(p["first_order_sd"]))
            row = [label, alpha, _pm(sm["flip_first"], True), _pm(sm["flip_window"], True)]
            row += [_pm(sm["flip_eval"], True)] if has_eval else []
            row += [_pm(sm["dloss_window"]), _pm(sm["dloss_last"]),
                    f"{sm['diverged']}/{len(a['draws'])}"]
            effect.add_row(*row)
            dtr = dlm = "–"
            if single and sm.get("dtrace"):
                name = e["components"][0]
                dtr, dlm = _pm(sm["dtrace"].get(name)), _pm(sm["dlambda_max"].get(name))
            curv.add_row(label, alpha, _pm(sm["dgrad_first"]), dtr, dlm)
        if e is not data["experiments"][-1]:
            for table in (loss, effect, curv):
                table.add_section()
    console.print(loss)
    console.print(effect)
    console.print(curv)


def _table(title: str, columns: list[str], caption: str | None = None) -> Table:
    table = Table(title=title, box=box.SIMPLE, title_justify="left", caption=caption,
                  caption_justify="left")
    for col in columns:
        if col == "component":
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col, justify="right", overflow="fold")
    return table
