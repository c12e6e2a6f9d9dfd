"""What an unmeasured step costs in kernels (issue 15): the aten ops hfault adds to one step of a
real loop under every diagnosis probe, counted (not timed) against the same step without it.

On a CPU a foreach op loops over its tensors one kernel at a time, so it counts once per tensor.
Each gradient and weight view is normed once per step (the gradients not a second time after
backward, unless the loop changes them before the step), each distinct floating module output is
checked by one ``aminmax`` (the model returns its head's output: checked once), and each gradient
view's non-zero entries are counted once."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession
from hfault.probes.registry import diagnosis_probes
from tests.probes.test_host_syncs import Net  # the host-sync test's model


class KernelCount(TorchDispatchMode):
    """The aten ops run under it, by name; a foreach op once per tensor of its list."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        self.counts[name] += len(args[0]) if name.startswith("_foreach") else 1
        return func(*args, **(kwargs or {}))


def _step_kernels(clip: bool, session: CaptureSession | None) -> tuple[Counter[str], int]:
    """The kernels of step 5 of an SGD loop (under ``session`` if given; no step is measured),
    and the number of distinct floating tensors its forward's modules returned."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 5, 6), torch.randn(8, 1)
    seen: list[torch.Tensor] = []

    def count_outputs(module: nn.Module, args: Any, output: Any) -> None:
        items = output if isinstance(output, tuple) else (output,)
        seen.extend(t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()
                    and not any(t is s for s in seen))

    counted = KernelCount()
    for step in range(1, 7):
        with counted if step == 5 else contextlib.nullcontext():
            handle = (nn.modules.module.register_module_forward_hook(count_outputs)
                      if step == 5 and session is None else None)
            loss = nn.functional.mse_loss(model(x), y)
            if handle is not None:
                handle.remove()
            opt.zero_grad()
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    assert session is None or session.state.step == 6
    return counted.counts, len(seen)


@pytest.mark.parametrize("clip", [False, True])
def test_an_unmeasured_step_norms_each_gradient_and_weight_once(clip: bool):
    plain, outputs = _step_kernels(clip, None)
    session = CaptureSession(Schedule(auto=False))  # no step is measured
    session.add_all(diagnosis_probes(session))
    with session:
        watched, _ = _step_kernels(clip, session)
    extra = watched - plain
    parts = sum(len(c.parts) for c in session.state.components)
    assert parts == 14  # the attention's q/k/v weight and bias slices: 6
    norms = extra["_foreach_norm"] + extra["linalg_vector_norm"]
    # The step's gradients and weights; a loop that clips also has the gradients as backward
    # left them, before the clipping (where a NaN came from when clipping spreads it).
    assert norms == (3 if clip else 2) * parts, extra
    assert extra["count_nonzero"] == parts, extra
    assert outputs > 0 and extra["aminmax"] == outputs, extra
