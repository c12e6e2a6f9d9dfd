"""Which optimizer steps get a snapshot.

Cheap first-order statistics are taken at every step; the schedule decides which steps are kept
as snapshots in the report (and, with curvature, which steps pay for Hessian-vector products).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hfault.capture.step_list import StepListError, parse_step_list


class ScheduleError(StepListError):
    """A malformed ``--at`` value (a usage error)."""


@dataclass(frozen=True)
class Schedule:
    """Steps are numbered from 1 (the first ``optimizer.step()``)."""

    steps: frozenset[int] = field(default_factory=frozenset)
    every: int | None = None
    auto: bool = True
    max_steps: int | None = None

    def wants(self, step: int) -> bool:
        if step in self.steps:
            return True
        if self.every and step % self.every == 0:
            return True
        if not self.auto:
            return False
        if self.max_steps:
            return step in _spread(self.max_steps)
        return step & (step - 1) == 0  # powers of two: 1, 2, 4, 8, ...

    def describe(self) -> str:
        parts = []
        if self.auto:
            parts.append(
                f"auto ({', '.join(map(str, sorted(_spread(self.max_steps))))})"
                if self.max_steps
                else "auto (1, 2, 4, 8, ... and the last step)"
            )
        if self.steps:
            parts.append(", ".join(map(str, sorted(self.steps))))
        if self.every:
            parts.append(f"every {self.every}")
        return "; ".join(parts)


def _spread(n: int) -> set[int]:
    """Five points over a run of known length: first, quartiles, last."""
    return {1, n} | {max(1, round(n * f)) for f in (0.25, 0.5, 0.75)}


def parse_schedule(text: str | None, max_steps: int | None) -> Schedule:
    """Parse ``--at`` (grammar: ``capture.step_list``): ``auto`` (default), a list such as
    ``1,10,50``, ``every:20``, ``every`` (each step), or a mix."""
    if text is None or text.strip() in ("", "auto"):
        return Schedule(auto=True, max_steps=max_steps)
    try:
        parsed = parse_step_list(text)
    except StepListError as exc:
        raise ScheduleError(str(exc)) from None
    return Schedule(parsed.steps, parsed.every, parsed.auto, max_steps)
