"""The grammar of ``--at``, shared by ``diagnose`` (snapshot steps) and ``perturb`` (injection
steps): comma-separated tokens, each a step number (from 1), ``every:N`` (every N-th step),
``every`` (every step, ``every:1``) or ``auto`` (the command's default steps). Tokens mix:
``auto,500,every:100``. What the steps mean, the default and the limits are each command's own.

Before one grammar served both, ``diagnose`` refused ``every`` and ``perturb`` refused ``auto``;
both now accept every token.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS = "a step number, 'every:N', 'every' or 'auto'"


class StepListError(ValueError):
    """A malformed ``--at`` value; the message is one line."""


@dataclass(frozen=True)
class StepList:
    """A parsed ``--at``: listed steps, the last ``every`` given, whether ``auto`` was."""

    steps: frozenset[int] = frozenset()
    every: int | None = None
    auto: bool = False


def parse_step_list(text: str) -> StepList:
    """Parse ``text`` (not blank: a blank ``--at`` is each command's default)."""
    steps: set[int] = set()
    every = None
    auto = False
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token == "auto":
            auto = True
        elif token == "every":
            every = 1
        elif token.startswith("every:"):
            every = _positive(token[len("every:"):], token)
        else:
            steps.add(_positive(token, token))
    if not steps and every is None and not auto:
        raise StepListError(f"--at {text!r} names no step")
    return StepList(frozenset(steps), every, auto)


def _positive(value: str, token: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise StepListError(f"--at: {token!r} is not {TOKENS}") from None
    if n < 1:
        raise StepListError(f"--at: steps are numbered from 1, got {n}")
    return n
