"""Code snippets for fixes that rules cannot write as plain templates: a param-group split
needs the component's access expression and the script's optimizer class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def param_group_snippet(
    component: Mapping[str, Any], optimizer_class: str, base_lr: float, new_lr: float
) -> str:
    """Optimizer construction with the component's parameters in their own param group.

    ``component`` is a report component (``Component.to_dict()``): fixes are built from report
    data so that a saved report can be re-judged."""
    note = ""
    if any("[" in p for p in component.get("parameters", [])):
        note = (
            f"# {component['name']} is a slice of a fused tensor: param groups cannot split it,\n"
            "# so the whole fused module gets the lower learning rate.\n"
        )
    access = component.get("access") or (
        f'list(model.get_submodule("{component["name"]}").parameters())'
    )
    return (
        f"{note}flagged = {access}\n"
        "flagged_ids = {id(p) for p in flagged}\n"
        "rest = [p for p in model.parameters() if id(p) not in flagged_ids]\n"
        f"optimizer = torch.optim.{optimizer_class}(\n"
        f'    [{{"params": rest}}, {{"params": flagged, "lr": {new_lr:.3g}}}],\n'
        f"    lr={base_lr:.3g},\n"
        ")"
    )
