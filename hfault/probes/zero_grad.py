"""Whether each optimizer's gradients are reset between its steps (``zero_grad`` forgotten).

``backward`` adds into ``.grad``. A loop that never calls ``zero_grad`` (nor sets ``.grad`` to
None) applies at step t the sum of every gradient since the start: the effective step grows
with t and points at the past. Nothing about a single step's statistics says so; the state of
``.grad`` between steps does. For the first ``CHECKED_STEPS`` steps of each optimizer, the watch
looks, before every ``backward`` since that optimizer's last step, at one of its parameters (the
first that had a gradient at its first step): a ``None`` or all-zero ``.grad`` is a reset. A
step reached after at least one ``backward`` without a reset is stale. Gradient accumulation
(several backward calls, one reset per step) and GAN loops (the generator's backward adds into
the discriminator's stale ``.grad``, which the discriminator resets before its own backward)
both reset. A closure step (LBFGS, Lightning) is judged like any other: ``before_step`` comes
when its closure first returns (``capture.step_events``), so the closure's own reset counts.
At most one host sync per backward, for the first few steps only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import BackwardEvent, Listener

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession

CHECKED_STEPS = 3


@dataclass
class _State:
    param: torch.Tensor | None = None
    steps: int = 0
    checked: int = 0
    stale: int = 0
    backwards: int = 0
    reset: bool = True
    begun: int = -1
    """The optimizer's step count at its last ``before_step``."""


class StaleGradientWatch(Listener):
    """Per optimizer: steps judged and stale ones (``run.optimizers[i].gradient_reset``)."""

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self._state: dict[int, _State] = {}

    def before_backward(self, event: BackwardEvent) -> None:
        for opt in self.session.state.optimizers:
            st = self._state.setdefault(id(opt), _State())
            if st.steps == 0 or st.steps > CHECKED_STEPS:
                continue
            st.backwards += 1
            if st.reset or st.param is None:
                continue
            grad = st.param.grad
            st.reset = grad is None or bool((grad == 0).all())

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        st = self._state.setdefault(id(opt), _State())
        count = self.session.optimizer_steps(opt)
        if count == st.begun:
            return  # the same step again: a hand-written update's next accumulated backward
        st.begun = count
        if st.steps > CHECKED_STEPS:
            return
        if st.steps == 0:
            st.param = next((p for g in opt.param_groups for p in g["params"]
                             if p.grad is not None), None)
        elif st.backwards > 0 and st.param is not None:
            st.checked += 1
            st.stale += not st.reset
        st.steps += 1
        st.backwards, st.reset = 0, False

    def summary(self, opt: torch.optim.Optimizer) -> dict[str, int]:
        """``checked``: steps judged; ``stale``: of those, steps whose gradient had not been
        reset since the previous step."""
        st = self._state.get(id(opt), _State())
        return {"checked": st.checked, "stale": st.stale}

    def contribute(self, draft: ReportDraft) -> None:
        for opt, entry in zip(self.session.state.optimizers, draft.optimizers, strict=True):
            entry["gradient_reset"] = self.summary(opt)
