"""Training phases: which optimizer takes which steps, and whose loss each step is.

A script that trains, then fine-tunes with a new optimizer, or a GAN whose two optimizers step in
turn, has several loss series that must not be added up: the losses of a fine-tune summed into
the first phase's last step read as divergence, and a GAN's falling discriminator loss plus its
rising generator loss reads as a loss that does not decrease.

Steps stay one global count (the snapshot schedule, ``--max-steps`` and every probe read it): an
optimizer's step is the next after its own last step, never earlier than the global step, and an
optimizer built after training began starts after the steps taken so far (its offset). So
optimizers stepping in the same iteration share a step, an optimizer that steps less often
(a GAN's generator under ``n_critic``) shares the current one, and a fine-tune's optimizer
continues the count where the first phase ended.

A *phase* is the optimizers of one class over the same parameters: an optimizer built again each
epoch continues its predecessor's phase. Each phase keeps its steps and the losses backpropagated
before its optimizers stepped (:class:`~hfault.capture.loss_record.LossRecord`), so the loss
rules judge each phase's series on its own (``hfault.rules.features``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from hfault.capture.loss_record import LossRecord
from hfault.numbers import as_float, encode


@dataclass
class Phase:
    """One phase: its optimizers (indices), the steps they took, their losses."""

    number: int
    """1-based, in the order the phases first stepped (0 until then)."""
    optimizer_class: str
    signature: tuple[int, ...]
    optimizers: list[int] = field(default_factory=list)
    first_step: int | None = None
    last_step: int | None = None
    steps: int = 0
    losses: LossRecord = field(default_factory=LossRecord)
    loss_min: float | None = None
    loss_max: float | None = None
    loss_first: float | None = None

    def to_dict(self, lrs: list[float | None], series: bool) -> dict[str, Any]:
        """The report's ``phases[]`` entry; ``series``: with the loss of every kept step."""
        out: dict[str, Any] = {
            "phase": self.number,
            "optimizers": list(self.optimizers),
            "class": self.optimizer_class,
            "lr": max((x for x in lrs if x is not None), default=None),
            "first_step": self.first_step,
            "last_step": self.last_step,
            "steps": self.steps,
            "loss": self._summary(),
        }
        if series:
            out["losses"] = [[s, encode(v)] for s, v in self.losses.items()]
        return out

    def _summary(self) -> dict[str, Any] | None:
        if not self.losses.steps_seen:
            return None
        items = self.losses.items()
        return {
            "steps": self.losses.steps_seen,
            "first": encode(self.loss_first),
            "last": encode(items[-1][1]),
            "min": encode(self.loss_min),
            "max": encode(self.loss_max),
            "nonfinite": self.losses.nonfinite,
        }


class PhaseTracker:
    """Step numbers per optimizer and losses per phase; the session asks and tells it."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._of: dict[int, Phase] = {}  # id(optimizer) -> its phase
        self._offset: dict[int, int] = {}
        self._count: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._index: dict[int, int] = {}

    def created(self, opt: torch.optim.Optimizer, index: int, global_step: int) -> None:
        """An optimizer was built while ``global_step`` steps had been taken."""
        key = id(opt)
        self._offset[key] = global_step
        self._index[key] = index
        signature = tuple(sorted(id(p) for g in opt.param_groups for p in g["params"]))
        name = type(opt).__name__
        phase = next((p for p in self.phases
                      if p.signature == signature and p.optimizer_class == name), None)
        if phase is None:
            phase = Phase(0, name, signature)
            self.phases.append(phase)
        phase.optimizers.append(index)
        self._of[key] = phase

    def count(self, opt: torch.optim.Optimizer) -> int:
        """How many times ``opt`` has stepped."""
        return self._count.get(id(opt), 0)

    def step_of(self, opt: torch.optim.Optimizer, global_step: int) -> int:
        """The step ``opt.step()`` takes now: after its own last step and its offset's count,
        never before the global step (optimizers stepping in one iteration share it)."""
        key = id(opt)
        own = self._offset.get(key, 0) + self.count(opt) + 1
        return max(global_step, own, self._last.get(key, 0) + 1)

    def stepped(self, opt: torch.optim.Optimizer, step: int) -> None:
        key = id(opt)
        self._count[key] = self.count(opt) + 1
        self._last[key] = step
        phase = self._of.get(key)
        if phase is None:  # an optimizer the session did not see built (adopted late)
            return
        if phase.number == 0:
            phase.number = 1 + sum(p.number > 0 for p in self.phases)
        if phase.last_step != step:
            phase.steps += 1
        if phase.first_step is None:
            phase.first_step = step
        phase.last_step = step

    def add_loss(self, opt: torch.optim.Optimizer, step: int, loss: float, *, keep: bool) -> None:
        """The losses backpropagated since the last step, taken by ``opt``'s step ``step``."""
        phase = self._of.get(id(opt))
        if phase is None:
            return
        phase.losses.add(step, loss, keep=keep)
        value = phase.losses.get(step)
        if phase.loss_first is None:
            phase.loss_first = value
        if value is not None and math.isfinite(value):
            phase.loss_min = value if phase.loss_min is None else min(phase.loss_min, value)
            phase.loss_max = value if phase.loss_max is None else max(phase.loss_max, value)

    def report(self, optimizers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The report's ``phases``, in the order they first stepped; each phase's loss series
        only when more than one phase has losses (with one, ``timeline.loss`` is its series)."""
        stepped = sorted((p for p in self.phases if p.number), key=lambda p: p.number)
        several = sum(bool(p.losses.steps_seen) for p in stepped) > 1
        out = []
        for phase in stepped:
            lrs = [as_float(optimizers[i].get("lr")) for i in phase.optimizers
                   if i < len(optimizers)]
            out.append(phase.to_dict(lrs, several and bool(phase.losses.steps_seen)))
        return out
