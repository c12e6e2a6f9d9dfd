"""Device values wanted on the host, read together: one transfer (one host sync) per step.

On a GPU every read of a device value (``float(t)``, ``.item()``, ``.tolist()``) waits for the
stream to drain. Listeners that need a few numbers of every step (the loss, whether gradients
and weights are finite) :meth:`HostReads.put` them as device tensors and keep the
:class:`Reading`; the first reading asked for reads every value put so far in one transfer per
device, so a step whose listeners all read after the session puts its last value pays one sync.
"""

from __future__ import annotations

import torch

MAX_PENDING = 4096
"""Values put and never read (a script that runs backward without stepping) are read in one
batch every this many, so they do not pile up."""


class Reading:
    """A value put on :class:`HostReads`: read (with every other pending one) when asked."""

    __slots__ = ("_reads", "_tensor", "_values")

    def __init__(self, reads: HostReads, tensor: torch.Tensor) -> None:
        self._reads = reads
        self._tensor: torch.Tensor | None = tensor
        self._values: list[float] | None = None

    def values(self) -> list[float]:
        """The tensor's entries (flattened) as floats."""
        if self._values is None:
            self._reads.read_all()
        assert self._values is not None
        return self._values

    def value(self) -> float:
        """The single entry of a one-element tensor."""
        return self.values()[0]


class HostReads:
    """The pending device values of a capture (the session owns one)."""

    def __init__(self) -> None:
        self._pending: list[Reading] = []

    def put(self, tensor: torch.Tensor) -> Reading:
        """Keep ``tensor`` (detached; any real dtype) for the next batched read."""
        reading = Reading(self, tensor.detach())
        self._pending.append(reading)
        if len(self._pending) >= MAX_PENDING:
            self.read_all()
        return reading

    def read_all(self) -> None:
        """Read every pending value: one transfer per device."""
        pending, self._pending = self._pending, []
        by_device: dict[torch.device, list[Reading]] = {}
        for reading in pending:
            assert reading._tensor is not None
            by_device.setdefault(reading._tensor.device, []).append(reading)
        for readings in by_device.values():
            flat = [r._tensor.reshape(-1).to(torch.float64) for r in readings]  # type: ignore[union-attr]
            values = (flat[0] if len(flat) == 1 else torch.cat(flat)).tolist()
            at = 0
            for reading, tensor in zip(readings, flat, strict=True):
                n = tensor.numel()
                reading._values, reading._tensor = values[at:at + n], None
                at += n
