"""When listeners hear ``before_step``: at ``optimizer.step()``, or when a step's closure returns.

``optimizer.step(closure)`` (LBFGS, SAM, Lightning's default loop) computes its gradients inside
``step``: torch's step pre-hooks run before the closure, when ``.grad`` still holds the previous
step's gradients (or none) and, at the first step, no module of the model has run yet. Heard
there, every gradient statistic would be one step late and the components could not be named.
``before_step`` promises that the gradients the step applies are final, so for a closure step it
is dispatched when the closure's first call returns. LBFGS calls the closure again for its line
search; those evaluations belong to the same step and dispatch nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from hfault.capture.delegates import delegate

StepMethod = Callable[[torch.optim.Optimizer], None]


class StepEvents:
    """The global optimizer step pre/post hooks that dispatch ``before_step``/``after_step``."""

    def __init__(self, before: Sequence[StepMethod], after: Sequence[StepMethod]) -> None:
        self._before = before
        self._after = after
        self._pending: set[int] = set()
        """Optimizers in a closure step whose ``before_step`` has not been dispatched yet."""

    def pre_hook(self, opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Torch's step pre-hook (``args`` starts with the optimizer): dispatch now, or hand
        ``step`` a closure that dispatches after its first call."""
        closure = kwargs["closure"] if "closure" in kwargs else args[1] if len(args) > 1 else None
        if not callable(closure):
            self._pending.discard(id(opt))
            self._dispatch(self._before, opt)
            return None
        self._pending.add(id(opt))
        wrapped = self._closure(opt, closure)
        if "closure" in kwargs:
            return args, {**kwargs, "closure": wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def post_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._before_if_pending(opt)  # a step that never called its closure
        self._dispatch(self._after, opt)

    def _closure(self, opt: torch.optim.Optimizer, closure: Callable[..., Any]
                 ) -> Callable[..., Any]:
        events = self

        @delegate
        def closure_then_step(*args: Any, **kwargs: Any) -> Any:
            result = closure(*args, **kwargs)
            events._before_if_pending(opt)
            return result

        return closure_then_step

    def _before_if_pending(self, opt: torch.optim.Optimizer) -> None:
        if id(opt) in self._pending:
            self._pending.discard(id(opt))
            self._dispatch(self._before, opt)

    @staticmethod
    def _dispatch(methods: Sequence[StepMethod], opt: torch.optim.Optimizer) -> None:
        for method in methods:
            method(opt)
