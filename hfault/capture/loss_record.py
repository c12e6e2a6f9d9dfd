"""A per-step loss record whose size is bounded, so a report of a long run stays small.

Every step is kept up to ``cap`` points; past it the record keeps a stride sample (every
``stride``-th step counted from the first, the stride doubling each time the sample outgrows the
cap), plus the steps it is told to keep (measured steps, whose snapshots show their loss), the
first non-finite loss and the last step. A uniform stride keeps what the loss rules read
meaningful (the first loss, the mean of the last tenth, medians of consecutive points): a
500,000-step run keeps between ``cap / 2`` and ``cap`` points of the same shape, where keeping
every step made 37.5 MB of JSON. Runs under the cap keep every step, so they are judged exactly
as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

CAP = 2000
"""Points kept before the record is sampled."""


class LossRecord:
    """step -> loss, added in step order (a step may be added to again: its losses sum)."""

    def __init__(self, cap: int = CAP) -> None:
        self.cap = cap
        self.stride = 1
        self.steps_seen = 0
        """Distinct steps added, sampled or not."""
        self.nonfinite = 0
        """Steps whose loss was NaN or Inf."""
        self._points: dict[int, float] = {}
        self._pinned: set[int] = set()
        self._first: int | None = None
        self._last: int | None = None

    # ------------------------------------------------------------------ reading (dict-like)
    def get(self, step: int, default: float | None = None) -> float | None:
        return self._points.get(step, default)

    def items(self) -> list[tuple[int, float]]:
        return sorted(self._points.items())

    def __len__(self) -> int:
        return len(self._points)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._points))

    def __contains__(self, step: object) -> bool:
        return step in self._points

    @property
    def sampled(self) -> bool:
        """Whether steps were left out."""
        return len(self._points) < self.steps_seen

    def describe(self) -> dict[str, int]:
        """The report's ``loss_record``: steps seen, points kept, the stride, the cap."""
        return {"steps": self.steps_seen, "kept": len(self._points), "stride": self.stride,
                "cap": self.cap}

    # ------------------------------------------------------------------ writing
    def add(self, step: int, value: float, *, keep: bool = False) -> None:
        """Add ``value`` to ``step``'s loss; ``keep``: never sample this step out."""
        if step == self._last:
            was_finite = math.isfinite(self._points[step])
            self._points[step] += value
            if was_finite and not math.isfinite(self._points[step]):
                self._count_nonfinite(step)
            if keep:
                self._pinned.add(step)
            return
        previous = self._last
        if self._first is None:
            self._first = step
        self._last = step
        self.steps_seen += 1
        self._points[step] = value
        if keep:
            self._pinned.add(step)
        if not math.isfinite(value):
            self._count_nonfinite(step)
        if previous is not None and not self._kept(previous):
            del self._points[previous]  # it stayed only as the last step
        if len(self._points) - len(self._pinned) > self.cap:
            self._thin()

    def _count_nonfinite(self, step: int) -> None:
        if self.nonfinite == 0:
            self._pinned.add(step)  # HF001 and loss_all_finite see the first one
        self.nonfinite += 1

    def _kept(self, step: int) -> bool:
        first = self._first if self._first is not None else step
        return (step - first) % self.stride == 0 or step in self._pinned or step == self._last

    def _thin(self) -> None:
        while len(self._points) - len(self._pinned) > self.cap:
            self.stride *= 2
            self._points = {s: v for s, v in self._points.items() if self._kept(s)}
