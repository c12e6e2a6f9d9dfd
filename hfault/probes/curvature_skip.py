"""Whether a measured step's curvature can mean anything: not once a weight or the loss is NaN/Inf.

Hessian-vector products of a model with non-finite weights are non-finite, and Lanczos then fails
in ``linalg.eigh``: reported as HF020 ("curvature unavailable", a warning about hfault's own
measurement) it would stand beside HF001, which already names the real fault. So the step is
skipped with a note instead. One fused norm over the weights and the loss, read once per measured
step (curvature costs far more).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hfault.components import Component
from hfault.probes.numerics import describe_value


def nonfinite_reason(components: Sequence[Component], loss: torch.Tensor) -> str | None:
    """Why curvature cannot be measured now (the first non-finite weight, else the loss), or
    None when the weights and the loss are finite."""
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    seen: set[int] = set()
    for comp in components:
        for part in comp.parts:
            if id(part.param) not in seen:
                seen.add(id(part.param))
                names.append(comp.name)
                tensors.append(part.param.detach())
    with torch.no_grad():
        norms = torch._foreach_norm(tensors, 2, dtype=torch.float64) if tensors else []
        values = torch.stack([*(n.to(loss.device) for n in norms),
                              loss.detach().to(torch.float64).reshape(())]).tolist()
    for name, value in zip(names, values, strict=False):
        if value != value or value in (float("inf"), float("-inf")):
            return f"the weights of {name} are {describe_value(value)}"
    loss_value = values[-1]
    if loss_value != loss_value or loss_value in (float("inf"), float("-inf")):
        return f"the loss is {describe_value(loss_value)}"
    return None
