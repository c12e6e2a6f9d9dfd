"""``clip_grad``: gradient clipping, ``clip_grad_norm_(params, max_norm)``.

- Filled in: ``max_norm`` (a number or the rule's expression; finite and above zero, else the
  rule's next ``[[fix]]`` is tried); the rule's own snippet shows the call.
- Planned: once per run, from the highest-ranked finding that asks for it.
- Applied: right before each optimizer's ``step()``, after whatever the script did to the
  gradients, on that optimizer's parameters (:func:`clip_gradients`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from hfault.fixes.kind import (
    ALL_PARAMETERS,
    FixKind,
    FixTarget,
    PlanContext,
    PlannedFix,
    Skip,
    finding_brief,
    number_text,
    positive,
)
from hfault.numbers import encode

if TYPE_CHECKING:
    import torch


class ClipGrad(FixKind):
    name = "clip_grad"
    doc = ("gradient clipping: clip_grad_norm_ on each optimizer's parameters right before "
           "step()")
    fields: ClassVar[Mapping[str, str]] = {"max_norm": "'max_norm' (a number or expression)"}
    produces = ("max_norm",)
    mechanical = True
    bounds_total_norm = True

    def fill(self, fields: Mapping[str, Any], target: FixTarget
             ) -> tuple[dict[str, Any], str | None] | None:
        max_norm = fields.get("max_norm")
        if not positive(max_norm):
            return None  # no usable limit
        return {"kind": self.name, "max_norm": float(max_norm)}, None

    def plan(self, finding: Mapping[str, Any], values: Mapping[str, Any], context: PlanContext
             ) -> PlannedFix | Skip | None:
        max_norm = values.get("max_norm")
        if not positive(max_norm):
            return None
        first = next((x for x in context.planned if x.kind == self.name), None)
        if first is not None:
            return Skip(finding.get("component"),
                        f"gradient clipping is applied once, for {first.rule}")
        return PlannedFix(finding["rule"], finding.get("component") or ALL_PARAMETERS,
                          self.name, finding_brief(finding), max_norm=float(max_norm))

    def plan_text(self, fix: PlannedFix) -> str:
        return f"clip gradients at {fix.max_norm:g} ({fix.rule})"

    def applied_text(self, record: Mapping[str, Any]) -> str:
        return f"gradient clipping at max_norm {record['max_norm']:g} ({record['rule']})"

    def describe(self, record: Mapping[str, Any]) -> str:
        return f"gradient clipping at max_norm {number_text(record.get('max_norm'))}"


CLIP_GRAD = ClipGrad()


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> float | None:
    """Clip the gradients of ``optimizer``'s parameters to a total norm of ``max_norm``; the
    total norm before clipping, None when no parameter has a gradient."""
    import torch

    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return None
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def applied_record(fix: PlannedFix, steps: int, clipped_steps: int,
                   largest_norm: float | None) -> dict[str, Any]:
    """The ``verify_fix.fixes`` entry of clipping that ran at ``steps`` optimizer steps, of which
    ``clipped_steps`` had a total norm above ``max_norm`` (the largest ``largest_norm``)."""
    note = ("clip_grad_norm_ on every optimizer's parameters right before step(), after the "
            "script's own gradient processing")
    if steps:
        note += (f"; the total gradient norm exceeded max_norm at {clipped_steps} of "
                 f"{steps} optimizer step(s) (largest {number_text(largest_norm)})")
    return {
        "rule": fix.rule,
        "component": fix.component,
        "kind": CLIP_GRAD.name,
        "lr_before": None,
        "lr_after": None,
        "max_norm": fix.max_norm,
        "steps": steps,
        "clipped_steps": clipped_steps,
        "largest_norm": encode(largest_norm),
        "note": note,
    }
