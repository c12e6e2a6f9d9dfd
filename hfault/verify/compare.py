"""Before/after comparison and verdict of ``hfault diagnose --verify-fix``.

Pure functions on two report dicts (the JSON form), so a saved report pair can be compared again
and the criteria are testable without running anything. The verdict is led by the outcome,
the training loss over the compared horizon (``--verify-steps``); the findings' change is
evidence beside it. In this order:

- ``not_applicable``: a learning-rate fix was not in effect (the script assigned the LR itself,
  :mod:`hfault.verify.lr_hold`: no verdict on a fix that was not applied); no mechanical fix
  among the findings, or none could be applied (no rerun, or a rerun without any change);
  :mod:`hfault.verify.flow` also sets it when the rerun was interrupted or the param-group split
  broke the script's LR scheduler (per-group lists).
- ``worse``: the rerun crashed where the first run did not; or the final loss (mean of the last
  10% of the steps, non-finite = worst) rose by more than its tolerance (5% of the first run's,
  1% of its first loss, or two standard errors of the difference: :func:`loss_tolerance`), or
  the validation loss the script printed rose by more than 5% (:func:`validation_outcome`: the
  held-out outcome leads, whatever the training loss did), even when the motivating findings
  stopped firing; or new error findings appeared while no
  motivating finding went away and the loss did not improve.
- ``fixed``: the final loss is known and not worse beyond its tolerance, every finding that
  motivated an applied fix (same rule, same component) is gone, and no new error finding
  appeared.
- ``improved``: some motivating finding is gone or weaker (lower severity, or score down by at least
  ``SCORE_DROP`` = 10%), or the final loss dropped by more than the tolerance.
- ``unchanged``: otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from hfault.findings import SEVERITY_ORDER
from hfault.fixes.kind import ALL_PARAMETERS
from hfault.fixes.registry import KINDS
from hfault.numbers import as_float, encode, fmt
from hfault.verify.lr_hold import manual_text, not_in_effect

LOSS_TOLERANCE = 0.05
"""Relative change of the final loss within which it counts as unchanged."""
SCORE_DROP = 0.10
"""Relative drop of a finding's score that counts as weaker (and rise as stronger)."""
TAIL = 0.1
"""The final loss is the mean of this last share of the steps (at least one step)."""
FLOOR = 0.01
"""Final losses closer than this share of the first step's loss count as the same."""
NOISE_CAP = 0.5
"""The noise allowance (two standard errors) is at most this share of the first final loss."""
METRICS = ("stability_ratio", "lambda_max", "grad_norm", "lr")
ATTENTION_METRICS = ("max_logit", "entropy_norm_mean")
MAX_EDGES_PER_COMPONENT = 5


def _tail(points: Sequence[Sequence[Any]]) -> list[tuple[Any, float]]:
    """The last ``TAIL`` share of the steps (at least one), as (step, loss)."""
    values = [(p[0], v) for p in points if (v := as_float(p[1])) is not None]
    return values[len(values) - max(1, int(len(values) * TAIL)) :] if values else []


def final_loss(points: Sequence[Sequence[Any]]) -> float | str | None:
    """Mean of the last ``TAIL`` of the steps' losses; "nan"/"inf" when any of them is
    non-finite; None without losses."""
    tail = [v for _, v in _tail(points)]
    if not tail:
        return None
    if any(math.isnan(v) for v in tail):
        return "nan"
    if any(math.isinf(v) for v in tail):
        return "inf"
    return sum(tail) / len(tail)


def loss_tolerance(before: Sequence[Sequence[Any]], after: Sequence[Sequence[Any]]) -> float:
    """How far the final losses may differ and still count as the same, the largest of:
    ``LOSS_TOLERANCE`` (5%) of the first run's final loss; ``FLOOR`` (1%) of its first loss (two
    converged runs at 1e-6 and 3e-6 are the same); and two standard errors of the difference of
    the tail means, capped at ``NOISE_CAP`` (half) of the first run's final loss (a diverging
    tail's spread must not hide a drop from 1e22 to 0.3). Over the same steps (the usual case:
    same batches) the standard error is that of the paired step-by-step differences; else of two
    independent means."""
    b = final_loss(before)
    if not isinstance(b, float):
        return 0.0
    first = next((v for _, v in ((p[0], as_float(p[1])) for p in before)
                  if v is not None and math.isfinite(v)), None)
    tolerance = max(LOSS_TOLERANCE * abs(b), FLOOR * abs(first) if first is not None else 0.0)
    tb, ta = _tail(before), _tail(after)
    if len(tb) < 2 or len(ta) < 2 or not all(math.isfinite(v) for _, v in tb + ta):
        return tolerance
    if [s for s, _ in tb] == [s for s, _ in ta]:
        diffs = [a - b for (_, b), (_, a) in zip(tb, ta, strict=True)]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    else:
        se = math.sqrt(statistics.variance([v for _, v in tb]) / len(tb)
                       + statistics.variance([v for _, v in ta]) / len(ta))
    return max(tolerance, min(2 * se, NOISE_CAP * abs(b)))


def loss_change(before: Any, after: Any, tolerance: float = 0.0) -> str | None:
    """better / same / worse (non-finite is the worst) of two final losses; None when either
    is missing. Without ``tolerance``: ``LOSS_TOLERANCE`` relative."""
    b, a = as_float(before), as_float(after)
    if b is None or a is None:
        return None
    b = math.inf if not math.isfinite(b) else b
    a = math.inf if not math.isfinite(a) else a
    if a == b:
        return "same"
    if math.isinf(a):
        return "worse"
    if math.isinf(b):
        return "better"
    tolerance = tolerance or LOSS_TOLERANCE * max(abs(b), 1e-12)
    if a > b + tolerance:
        return "worse"
    if a < b - tolerance:
        return "better"
    return "same"


def loss_points(report: Mapping[str, Any]) -> list[list[Any]]:
    return [[p["step"], p["loss"]] for p in report.get("timeline", {}).get("loss", [])]


def validation_outcome(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The last validation loss each run printed (``validation`` of the report), at the same
    step when both printed one there, and their change (``LOSS_TOLERANCE`` relative: one value
    has no noise estimate). Empty when either run printed none."""
    vb = [(int(s), as_float(v)) for s, v in before.get("validation") or []]
    va = [(int(s), as_float(v)) for s, v in after.get("validation") or []]
    if not vb or not va:
        return {}
    common = sorted({s for s, _ in vb} & {s for s, _ in va})
    if common:  # compare at the last step both runs evaluated
        at = common[-1]
        b = next(v for s, v in reversed(vb) if s == at)
        a = next(v for s, v in reversed(va) if s == at)
    else:
        (at, b), a = vb[-1], va[-1][1]
    return {"step": at, "before": encode(b), "after": encode(a),
            "change": loss_change(b, a)}


# ---------------------------------------------------------------- findings
def _key(f: Mapping[str, Any]) -> tuple[str, str | None]:
    return (f["rule"], f.get("component"))


def findings_diff(
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    motivating: set[tuple[str, str | None]],
) -> list[dict[str, Any]]:
    """Each finding of either run by (rule, component): gone, weaker, same, stronger or new."""
    later = {_key(f): f for f in after}
    out = []
    for f in before:
        g = later.pop(_key(f), None)
        status = "gone"
        if g is not None:
            status = _strength(f, g)
        out.append(_diff_row(f, g, status, _key(f) in motivating))
    out += [_diff_row(None, g, "new", False) for g in later.values()]
    return out


def _strength(f: Mapping[str, Any], g: Mapping[str, Any]) -> str:
    sev_b, sev_a = SEVERITY_ORDER[f["severity"]], SEVERITY_ORDER[g["severity"]]
    if sev_a > sev_b:
        return "weaker"
    if sev_a < sev_b:
        return "stronger"
    sb, sa = as_float(f.get("score")) or 0.0, as_float(g.get("score")) or 0.0
    if sa < sb * (1 - SCORE_DROP):
        return "weaker"
    if sa > sb * (1 + SCORE_DROP) and sa - sb > 1e-9:
        return "stronger"
    return "same"


def _diff_row(f: Mapping[str, Any] | None, g: Mapping[str, Any] | None, status: str,
              motivating: bool) -> dict[str, Any]:
    one = f or g or {}
    return {
        "rule": one.get("rule"),
        "name": one.get("name"),
        "component": one.get("component"),
        "status": status,
        "motivating": motivating,
        "severity_before": f.get("severity") if f else None,
        "severity_after": g.get("severity") if g else None,
        "score_before": f.get("score") if f else None,
        "score_after": g.get("score") if g else None,
    }


# ---------------------------------------------------------------- metrics at matched steps
def _snapshots(report: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    return {s["step"]: s for s in report.get("snapshots", [])}


def matched_steps(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[int]:
    return sorted(set(_snapshots(before)) & set(_snapshots(after)))


def _series(report: Mapping[str, Any], steps: Sequence[int], where: str, name: str,
            metric: str) -> list[Any]:
    snaps = _snapshots(report)
    return [((snaps.get(s) or {}).get(where) or {}).get(name, {}).get(metric) for s in steps]


def metric_rows(before: Mapping[str, Any], after: Mapping[str, Any], steps: Sequence[int],
                components: Sequence[str]) -> list[dict[str, Any]]:
    """Per watched component the metrics of ``METRICS``, and of its attention module
    ``ATTENTION_METRICS``, before and after at the matched steps (metrics measured in neither
    run are left out)."""
    rows = []
    comps = {c["name"]: c for c in before.get("components", [])}
    modules: list[str] = []
    for name in components:
        for metric in METRICS:
            rows.append(_row(before, after, steps, "metrics", name, metric))
        module = (comps.get(name) or {}).get("attention")
        if module and module not in modules:
            modules.append(module)
    for module in modules:
        for metric in ATTENTION_METRICS:
            rows.append(_row(before, after, steps, "attention", module, metric))
    return [r for r in rows if any(v is not None for v in r["before"] + r["after"])]


def total_grad_norm_row(before: Mapping[str, Any], after: Mapping[str, Any],
                        steps: Sequence[int]) -> dict[str, Any]:
    """‖g‖ over every component (what clipping bounds) before and after, at the matched steps."""

    def total(report: Mapping[str, Any]) -> list[Any]:
        snaps, out = _snapshots(report), []
        for step in steps:
            norms = [v for m in ((snaps.get(step) or {}).get("metrics") or {}).values()
                     if (v := as_float(m.get("grad_norm"))) is not None]
            out.append(encode(math.sqrt(sum(v * v for v in norms))) if norms else None)
        return out

    return {"component": ALL_PARAMETERS, "metric": "grad_norm", "steps": list(steps),
            "before": total(before), "after": total(after)}


def _row(before: Mapping[str, Any], after: Mapping[str, Any], steps: Sequence[int], where: str,
         name: str, metric: str) -> dict[str, Any]:
    return {
        "component": name,
        "metric": metric,
        "steps": list(steps),
        "before": _series(before, steps, where, name, metric),
        "after": _series(after, steps, where, name, metric),
    }


def edge_rows(before: Mapping[str, Any], after: Mapping[str, Any], steps: Sequence[int],
              components: Sequence[str]) -> list[dict[str, Any]]:
    """κ and ρ of the coupling edges incident to the watched components, before and after at
    the matched steps; per component its ``MAX_EDGES_PER_COMPONENT`` strongest (largest κ in
    either run)."""

    def edges(report: Mapping[str, Any]) -> dict[int, dict[tuple[str, str], Mapping[str, Any]]]:
        out: dict[int, dict[tuple[str, str], Mapping[str, Any]]] = {}
        for step, snap in _snapshots(report).items():
            graph = snap.get("graph") or {}
            out[step] = {tuple(sorted((e["source"], e["target"]))): e
                         for e in graph.get("edges", [])}
        return out

    eb, ea = edges(before), edges(after)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for name in components:
        pairs = {pair for table in (eb, ea) for step in steps for pair in table.get(step, {})
                 if name in pair and pair not in seen}

        def strength(pair: tuple[str, str]) -> float:
            values = [as_float(t.get(s, {}).get(pair, {}).get("kappa")) for t in (eb, ea)
                      for s in steps]
            return max((v for v in values if v is not None and math.isfinite(v)), default=0.0)

        for pair in sorted(pairs, key=lambda p: (-strength(p), p))[:MAX_EDGES_PER_COMPONENT]:
            seen.add(pair)
            row: dict[str, Any] = {"source": pair[0], "target": pair[1], "steps": list(steps)}
            for metric in ("kappa", "rho"):
                row[metric] = {
                    "before": [eb.get(s, {}).get(pair, {}).get(metric) for s in steps],
                    "after": [ea.get(s, {}).get(pair, {}).get(metric) for s in steps],
                }
            rows.append(row)
    return rows


# ---------------------------------------------------------------- the verdict
def describe_fix(fix: Mapping[str, Any]) -> str:
    return KINDS[fix["kind"]].describe(fix)


def _fmt(x: Any) -> str:
    """A report number for the verdict's sentence ("n/a" when it is none)."""
    return fmt(as_float(x), missing="n/a")


def _names(rows: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{r['rule']} on {r['component'] or 'the run'}" for r in rows)


def _fires(rows: Sequence[Any]) -> str:
    return "fires" if len(rows) == 1 else "fire"


def verdict(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    fixes: Sequence[Mapping[str, Any]],
    diff: Sequence[Mapping[str, Any]],
    final: Mapping[str, Any],
    validation: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """(verdict, one-sentence summary); the criteria are in the module docstring. ``final``
    holds the final losses ``before``/``after`` and their ``tolerance``; ``validation`` the
    printed validation losses (:func:`validation_outcome`), when both runs printed one."""
    off = not_in_effect(fixes)
    if off:
        return "not_applicable", "; ".join(manual_text(f) for f in off)
    applied = "; ".join(describe_fix(f) for f in fixes)
    tolerance = final.get("tolerance") or 0.0
    loss = loss_change(final.get("before"), final.get("after"), tolerance)
    loss_text = f"final loss {_fmt(final.get('before'))} → {_fmt(final.get('after'))}"
    val = validation or {}
    if val.get("change") == "worse":  # the held-out outcome leads: train-loss gains do not count
        loss = "worse"
        loss_text += (f", validation loss {_fmt(val.get('before'))} → {_fmt(val.get('after'))} "
                      f"at step {val.get('step')}")
    elif val:
        loss_text += f", validation loss {_fmt(val.get('before'))} → {_fmt(val.get('after'))}"
    run_b, run_a = before.get("run", {}), after.get("run", {})
    if run_a.get("status") == "crashed" and run_b.get("status") != "crashed":
        err = run_a.get("error") or {}
        return "worse", (f"with {applied} the script crashed: {err.get('type')}: "
                         f"{err.get('message')}")
    targets = [d for d in diff if d["motivating"]]
    gone = [d for d in targets if d["status"] == "gone"]
    weaker = [d for d in targets if d["status"] == "weaker"]
    still = [d for d in targets if d["status"] != "gone"]
    new_errors = [d for d in diff if d["status"] == "new" and d["severity_after"] == "error"]
    if loss == "worse":
        tail = (f"; {_names(gone)} no longer {_fires(gone)}, but the training is worse"
                if gone else "")
        if val.get("change") == "worse":
            return "worse", (f"the validation loss rose by more than {LOSS_TOLERANCE:.0%} with "
                             f"{applied} ({loss_text}){tail}")
        return "worse", (f"the {loss_text} rose by more than its tolerance ±{_fmt(tolerance)} "
                         f"with {applied}{tail}")
    if targets and len(gone) == len(targets) and not new_errors and loss in ("same", "better"):
        others = [d for d in diff if d["status"] != "gone" and d["severity_after"] == "error"]
        rest = f"; other error findings remain: {_names(others)}" if others else ""
        how = "lower" if loss == "better" else f"within ±{_fmt(tolerance)}"
        return "fixed", (f"{loss_text} ({how}) and {_names(gone)} no longer {_fires(gone)} "
                         f"with {applied}{rest}")
    if new_errors and not gone and loss != "better":
        return "worse", f"with {applied}: new error finding(s) {_names(new_errors)}; {loss_text}"
    if gone or weaker or loss == "better":
        parts = []
        if gone:
            parts.append(f"{_names(gone)} gone")
        if weaker:
            parts.append(f"{_names(weaker)} weaker")
        remaining = [d for d in still if d not in weaker]
        if remaining:
            parts.append(f"{_names(remaining)} still {_fires(remaining)}")
        if new_errors:
            parts.append(f"new: {_names(new_errors)}")
        if loss is None:
            parts.append("no loss was recorded to judge the outcome: not fixed")
        return "improved", f"with {applied}: " + "; ".join([*parts, loss_text])
    within = f" (within ±{_fmt(tolerance)})" if tolerance else ""
    return "unchanged", (f"with {applied}: {_names(still) or 'the findings'} still "
                         f"{_fires(still)} as strongly; {loss_text}{within}")


def compare(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    fixes: Sequence[Mapping[str, Any]],
    motivating: set[tuple[str, str | None]],
    *,
    skipped: Sequence[Mapping[str, Any]] = (),
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``verify_fix`` object of a report: both runs and their comparison."""
    points_b, points_a = loss_points(before), loss_points(after)
    final: dict[str, Any] = {"before": final_loss(points_b), "after": final_loss(points_a)}
    final["tolerance"] = loss_tolerance(points_b, points_a)
    final["change"] = loss_change(final["before"], final["after"], final["tolerance"])
    diff = findings_diff(before.get("findings", []), after.get("findings", []), motivating)
    steps = matched_steps(before, after)
    watched = list(dict.fromkeys(
        [f["component"] for f in fixes if f["component"] != ALL_PARAMETERS]
        + [c for _, c in motivating if c]
    ))
    if not watched and before.get("summary", {}).get("top_component"):
        watched = [before["summary"]["top_component"]]
    validation = validation_outcome(before, after)
    if fixes:
        result, summary = verdict(before, after, fixes, diff, final, validation)
    else:
        result = "not_applicable"
        summary = "no fix could be applied in the rerun" + (
            f": {skipped[0]['reason']}" if skipped else "")
    return {
        "fixes": list(fixes),
        "verdict": result,
        "summary": summary,
        "loss": {"before": loss_points(before), "after": loss_points(after)},
        "final_loss": {k: encode(as_float(v)) if k in ("before", "after") and v is not None else v
                       for k, v in final.items()},
        "validation": validation or None,
        "metrics": ([total_grad_norm_row(before, after, steps)]
                    if any(KINDS[f["kind"]].bounds_total_norm for f in fixes) else [])
        + metric_rows(before, after, steps, watched),
        "edges": edge_rows(before, after, steps, watched),
        "steps": steps,
        "findings": diff,
        "skipped": list(skipped),
        "notes": list(notes),
        "criteria": _CRITERIA,
        "after": dict(after),
    }


_CRITERIA = {"loss_tolerance": LOSS_TOLERANCE, "loss_floor": FLOOR, "noise_cap": NOISE_CAP,
             "score_drop": SCORE_DROP, "tail": TAIL}


def not_applicable(before: Mapping[str, Any], reason: str,
                   skipped: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """``verify_fix`` when nothing was rerun."""
    points = loss_points(before)
    loss = final_loss(points)
    return {
        "fixes": [],
        "verdict": "not_applicable",
        "summary": reason,
        "loss": {"before": points, "after": []},
        "final_loss": {"before": encode(as_float(loss)) if loss is not None else None,
                       "after": None},
        "metrics": [],
        "edges": [],
        "steps": [],
        "findings": [],
        "skipped": list(skipped),
        "notes": [],
        "criteria": _CRITERIA,
        "after": None,
    }
