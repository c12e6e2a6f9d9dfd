"""An unmeasured step costs at most one host sync (issue 15): on a GPU each device-to-host read
drains the stream, so the probes keep their per-step values on the device and read them together.

Without a GPU a sync is counted where Python asks torch for a host value: ``item``, ``tolist``,
``float``/``int``/``bool`` of a tensor, ``cpu``/``numpy``, and ``to`` a CPU device."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession
from hfault.probes.registry import diagnosis_probes

_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


def _names_cpu(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    targets = [*args[:1], kwargs.get("device")]
    return any(str(t) == "cpu" or (isinstance(t, torch.device) and t.type == "cpu")
               for t in targets if isinstance(t, (str, torch.device)))


@contextmanager
def counted_host_reads() -> Iterator[list[str]]:
    """Patches ``torch.Tensor``'s host reads to append their name to the yielded list."""
    log: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in (*_READS, "to")}

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if name != "to" or _names_cpu(args, kwargs):
                log.append(name)
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield log
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


class Net(nn.Module):
    """Whole parameters, the fused q/k/v slices of nn.MultiheadAttention, a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        return self.head(h.mean(1))


def _train(warmup: int, counted: int, accumulate: int, log: list[str] | None = None,
           session: CaptureSession | None = None) -> int:
    """Trains with SGD (which reads nothing on the host) and returns the host reads counted
    during the last ``counted`` steps."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 5, 6), torch.randn(8, 1)
    start = 0
    for step in range(warmup + counted):
        if step == warmup:
            start = len(log) if log is not None else 0
        opt.zero_grad(set_to_none=step % 2 == 0)
        for _ in range(accumulate):
            loss = nn.functional.mse_loss(model(x), y) / accumulate
            loss.backward()
        opt.step()
    assert session is None or session.state.step == warmup + counted
    return len(log) - start if log is not None else 0


@pytest.mark.parametrize("accumulate", [1, 3])
def test_an_unmeasured_step_reads_the_device_at_most_once(accumulate: int):
    warmup, counted = 8, 10  # warm-up: components, the first steps' zero_grad and loss checks
    with counted_host_reads() as log:
        plain = _train(warmup, counted, accumulate, log)
    assert plain == 0, f"the loop itself reads {log}"
    session = CaptureSession(Schedule(auto=False))  # no step is measured
    session.add_all(diagnosis_probes(session))
    with counted_host_reads() as log, session:
        reads = _train(warmup, counted, accumulate, log, session)
    assert reads <= counted, f"{reads} host reads in {counted} steps: {Counter(log[-reads:])}"
    assert reads > 0  # the count sees the reads that remain (the loss and the NaN checks)
