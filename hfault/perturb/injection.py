"""When ``hfault perturb`` injects, and what: the ``--at`` injection steps and the noise δ.

δ comes from hfault's own ``torch.Generator``, drawn in float64 on the CPU, so the script's random
stream is untouched and δ is the same on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hfault.capture.step_list import StepListError, parse_step_list

__all__ = ["Injection", "InjectionError", "draw_deltas", "parse_injection", "unit_generator"]


@dataclass(frozen=True)
class Injection:
    """When to inject: listed steps and/or every ``every``-th step (steps count from 1)."""

    steps: frozenset[int] = frozenset()
    every: int | None = None

    def at(self, step: int) -> bool:
        return step in self.steps or bool(self.every and step % self.every == 0)

    @property
    def first(self) -> int:
        return min([*self.steps, *([self.every] if self.every else [])])

    def describe(self) -> str:
        parts = [", ".join(map(str, sorted(self.steps)))] if self.steps else []
        if self.every == 1:
            parts.append("every step")
        elif self.every:
            parts.append(f"every {self.every} steps")
        return "; ".join(parts)


class InjectionError(StepListError):
    """A malformed ``--at`` value."""


def parse_injection(text: str | None, max_steps: int | None) -> Injection:
    """``--at`` (grammar: ``capture.step_list``): a list ``10,20``, ``every:N``, ``every`` (every
    step) or a mix; ``auto``, the default: one injection at the middle of ``--max-steps``
    (``max(1, N // 2)``)."""
    if text is None or not text.strip():
        text = "auto"
    try:
        parsed = parse_step_list(text)
    except StepListError as exc:
        raise InjectionError(str(exc)) from None
    steps = set(parsed.steps)
    if parsed.auto:
        if max_steps is None:
            raise InjectionError(
                "perturb needs --at STEPS or --max-steps N (default injection: step N/2)"
            )
        steps.add(max(1, max_steps // 2))
    injection = Injection(frozenset(steps), parsed.every)
    if max_steps is not None and injection.first > max_steps:
        raise InjectionError(
            f"--at: the first injection (step {injection.first}) is after --max-steps {max_steps}"
        )
    return injection


def draw_deltas(numels: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """One δ ~ N(0, I) per component, in order, float64 on the CPU (flat, block layout)."""
    return [torch.randn(n, generator=generator, dtype=torch.float64) for n in numels]


def unit_generator(seed: int) -> torch.Generator:
    """hfault's private generator for one draw unit (never the global RNG)."""
    return torch.Generator().manual_seed(seed)
