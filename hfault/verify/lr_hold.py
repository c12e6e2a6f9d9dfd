"""Whether a ``lower_lr`` fix stayed in effect in the rerun.

The split sets the new group's ``lr`` once, at the optimizer's construction. A script that
assigns ``param_group["lr"]`` itself every iteration from its own schedule (nanoGPT's
``for g in optimizer.param_groups: g["lr"] = lr``) overwrites it before the first step, and the
rerun then trains the component exactly as the first run did: a verdict on such a rerun would
judge a fix that was never applied. So after every optimizer step the learning rate the fixed
parameters got is compared with the intended one: ``factor`` times the LR of a reference group at
the same step (the group they left, or for a group scaled as a whole another group of the same
optimizer, by their ratio at construction). A scheduler that scales every group keeps the ratio;
an assignment that gives all groups the same LR breaks it. Reading a float off the group is all
it costs (no sync for tensors on the CPU, one ``item()`` for a tensor LR on a GPU).

The fix is reported, not re-applied: re-scaling the group behind the script's back at each step
would judge a training that no line of the script produces; the person has to edit the
assignment anyway (:func:`manual_text` says how). Where no reference group exists (the component
is its optimizer's only group), :func:`from_snapshots` compares the rerun's LR with the first
run's at the steps both measured: equal there means overwritten.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hfault.fixes.lower_lr import as_float
from hfault.numbers import fmt

RATIO_TOLERANCE = 1e-3
"""Relative difference of the observed LR ratio from the intended one that counts as off."""
_ASSIGNMENT = re.compile(r"""\[\s*["']lr["']\s*\]\s*(?:\*|/|\+|-)?=(?!=)""")


@dataclass
class _Watch:
    """One fixed param group of one optimizer and its reference."""

    record: dict[str, Any]
    group: int
    reference: int
    ratio: float
    """The intended ``lr(group) / lr(reference)``."""
    checked: int = 0
    off: int = 0
    first_off: int | None = None
    expected: float | None = None
    seen: float | None = None


class LrHold:
    """The LR checks of one rerun; :class:`~hfault.verify.apply.FixApplier` feeds it."""

    def __init__(self) -> None:
        self._watches: dict[int, list[_Watch]] = {}
        self._steps: dict[int, int] = {}

    def watch(self, opt: torch.optim.Optimizer, record: dict[str, Any],
              construction_lrs: Sequence[float | None], touched: set[int]) -> None:
        """Check the groups of ``record`` (a ``lower_lr`` ``verify_fix.fixes`` entry) in ``opt``;
        ``construction_lrs``: every group's LR as built (after the split), ``touched``: the
        groups whose LR a fix changed (no reference for another)."""
        factor = float(record["factor"])
        for change in record["groups"]:
            if change["new_group"] is not None:
                self._add(opt, _Watch(record, change["new_group"], change["group"], factor))
                continue
            group = change["group"]
            ref = next((i for i, lr in enumerate(construction_lrs)
                        if i not in touched and lr), None)
            lr = construction_lrs[group] if group < len(construction_lrs) else None
            if ref is not None and lr is not None:
                self._add(opt, _Watch(record, group, ref, lr / construction_lrs[ref]))

    def _add(self, opt: torch.optim.Optimizer, watch: _Watch) -> None:
        self._watches.setdefault(id(opt), []).append(watch)

    def check(self, opt: torch.optim.Optimizer) -> None:
        """After ``opt.step()``: the LR it just applied to each watched group."""
        watches = self._watches.get(id(opt))
        if not watches:
            return
        step = self._steps[id(opt)] = self._steps.get(id(opt), 0) + 1
        groups = opt.param_groups
        for w in watches:
            if max(w.group, w.reference) >= len(groups):
                continue
            lr, ref = as_float(groups[w.group].get("lr")), as_float(groups[w.reference].get("lr"))
            if lr is None or not ref:
                continue
            w.checked += 1
            expected = ref * w.ratio
            if not math.isclose(lr, expected, rel_tol=RATIO_TOLERANCE):
                w.off += 1
                if w.first_off is None:
                    w.first_off, w.expected, w.seen = step, expected, lr

    def results(self, script: Path) -> None:
        """Write each watched record's ``in_effect`` (records without a watch get null)."""
        line = first_lr_assignment(script)
        for watches in self._watches.values():
            for w in watches:
                prior = w.record.get("in_effect")
                if prior and prior.get("held") is False:
                    continue  # another of its groups already failed
                w.record["in_effect"] = {
                    "held": None if not w.checked else w.off == 0,
                    "steps_checked": w.checked,
                    "steps_off": w.off,
                    "first_step_off": w.first_off,
                    "lr_expected": w.expected,
                    "lr_seen": w.seen,
                    "reference": f"param group {w.reference}",
                    "assigned_at": line if w.off else None,
                }


def unchecked() -> dict[str, Any]:
    """``in_effect`` of a fix no step checked."""
    return {"held": None, "steps_checked": 0, "steps_off": 0, "first_step_off": None,
            "lr_expected": None, "lr_seen": None, "reference": None, "assigned_at": None}


def from_snapshots(record: dict[str, Any], before: Mapping[str, Any], after: Mapping[str, Any],
                   script: Path) -> None:
    """For a fix without a reference group: its component's LR in the rerun against the first
    run's at the steps both measured. Only an LR equal to the first run's counts as off (the
    script assigned it); other differences may be a loss-driven scheduler's."""
    if (record.get("in_effect") or {}).get("held") is not None:
        return
    name, factor = record["component"], float(record["factor"])
    lrs_b, lrs_a = _lrs(before, name), _lrs(after, name)
    steps = sorted(set(lrs_b) & set(lrs_a))
    off = [s for s in steps if math.isclose(lrs_a[s], lrs_b[s], rel_tol=RATIO_TOLERANCE)
           and not math.isclose(factor, 1.0)]
    if not steps:
        record["in_effect"] = unchecked()
        return
    first = off[0] if off else None
    record["in_effect"] = {
        "held": not off, "steps_checked": len(steps), "steps_off": len(off),
        "first_step_off": first,
        "lr_expected": lrs_b[first] * factor if first is not None else None,
        "lr_seen": lrs_a[first] if first is not None else None,
        "reference": "the first run's lr at the measured steps",
        "assigned_at": first_lr_assignment(script) if off else None,
    }


def _lrs(report: Mapping[str, Any], name: str) -> dict[int, float]:
    out = {}
    for snap in report.get("snapshots", []):
        lr = as_float(((snap.get("metrics") or {}).get(name) or {}).get("lr"))
        if lr:
            out[snap["step"]] = lr
    return out


def first_lr_assignment(script: Path) -> dict[str, Any] | None:
    """``{"file", "line"}`` of the script's first ``...["lr"] = ...`` (a text search of the
    script file only: the likely place it sets the LR itself); None where it has none."""
    try:
        lines = script.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for number, text in enumerate(lines, 1):
        code = text.split("#", 1)[0]
        if _ASSIGNMENT.search(code):
            return {"file": str(script), "line": number}
    return None


def not_in_effect(fixes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The applied fixes whose LR the script overwrote."""
    return [f for f in fixes if (f.get("in_effect") or {}).get("held") is False]


def manual_text(fix: Mapping[str, Any]) -> str:
    """Why the rerun says nothing about ``fix``, and how to apply it by hand."""
    held = fix["in_effect"]
    where = held.get("assigned_at")
    at = f" (it assigns param_group['lr'] at {where['file']}:{where['line']})" if where else ""
    factor = f"{float(fix['factor']):.3g}"
    return (
        f"the fix was not in effect: from step {held['first_step_off']} the script set the "
        f"learning rate of {fix['component']}'s param group itself{at}, to "
        f"{fmt(as_float(held.get('lr_seen')), missing='n/a')} instead of "
        f"{fmt(as_float(held.get('lr_expected')), missing='n/a')} (×{factor}), so the rerun "
        f"trained {fix['component']} like the first run and no verdict is given; apply the fix "
        "by hand inside the script's own LR assignment: give the component's param group an "
        f"\"lr_scale\": {factor} and write `for g in optimizer.param_groups: "
        "g['lr'] = lr * g.get('lr_scale', 1.0)`"
    )
