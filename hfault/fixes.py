"""Concrete fixes: numbers and ready-to-paste code built from what was measured."""

from __future__ import annotations

from hfault.components import Component
from hfault.report.model import Fix


def param_group_snippet(
    component: Component, optimizer_class: str, base_lr: float, new_lr: float
) -> str:
    """Optimizer construction with ``component``'s parameters in their own param group."""
    note = ""
    if any(p.start is not None for p in component.parts):
        note = (
            f"# {component.name} is a slice of a fused tensor: param groups cannot split it,\n"
            "# so the whole fused module gets the lower learning rate.\n"
        )
    return (
        f"{note}flagged = {component.access}\n"
        "flagged_ids = {id(p) for p in flagged}\n"
        "rest = [p for p in model.parameters() if id(p) not in flagged_ids]\n"
        f"optimizer = torch.optim.{optimizer_class}(\n"
        f'    [{{"params": rest}}, {{"params": flagged, "lr": {new_lr:.3g}}}],\n'
        f"    lr={base_lr:.3g},\n"
        ")"
    )


def lower_lr_fix(
    component: Component,
    optimizer_class: str,
    lr: float,
    factor: float,
    reason: str,
    base_lr: float | None = None,
) -> Fix:
    """``base_lr``: the optimizer's default learning rate, kept for every other parameter."""
    new_lr = lr * factor
    return Fix(
        summary=(
            f"Lower the learning rate of {component.name} from {lr:.3g} to {new_lr:.3g} "
            f"(×{factor:.3g}) with its own param group; {reason}"
        ),
        values={"component": component.name, "lr": lr, "new_lr": new_lr, "factor": factor},
        snippet=param_group_snippet(
            component, optimizer_class, base_lr if base_lr is not None else lr, new_lr
        ),
    )


CLIP_SNIPPET = (
    "loss.backward()\n"
    "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n"
    "optimizer.step()"
)

ANOMALY_SNIPPET = (
    "# re-run the failing step with autograd's anomaly mode to get the op's traceback\n"
    "with torch.autograd.detect_anomaly():\n"
    "    loss = criterion(model(x), y)\n"
    "    loss.backward()"
)
