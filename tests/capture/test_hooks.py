"""The listener interface: events reach listeners in their declared order, on a real loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hfault.capture.hooks import (
    CORE,
    EARLY,
    FIX,
    MEASURE,
    PROBE,
    BackwardEvent,
    Hooks,
    Listener,
)
from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession, StopTraining
from hfault.probes.gradients import GradientStats


class Recorder(Listener):
    """Appends (name, event, what the session had counted) to a shared log."""

    def __init__(self, name: str, priority: int, log: list[tuple[str, str, int]],
                 session: CaptureSession) -> None:
        self.name = name
        self.priority = priority  # type: ignore[misc]
        self.log = log
        self.session = session

    def _note(self, event: str) -> None:
        self.log.append((self.name, event, self.session.state.step))

    def before_backward(self, event: BackwardEvent) -> None:
        self._note("before_backward")

    def after_backward(self, event: BackwardEvent) -> None:
        self._note("after_backward")

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        self._note("before_step")

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        self._note("after_step")

    def forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.Sequential):
            self._note("forward")


def _train(steps: int, lr: float = 0.1) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_listeners_run_in_priority_order_not_the_order_added() -> None:
    log: list[tuple[str, str, int]] = []
    session = CaptureSession(Schedule(auto=False))
    session.add(Recorder("late", PROBE, log, session))
    session.add(Recorder("early", EARLY, log, session))
    session.add(Recorder("also_late", PROBE, log, session))  # a tie: after "late", added first
    with session:
        _train(2)
    events = ["forward", "before_backward", "after_backward", "before_step", "after_step"]
    assert [e for n, e, _ in log if n == "early"] == events * 2
    for i in range(0, len(log), 3):
        assert [n for n, _, _ in log[i:i + 3]] == ["early", "late", "also_late"], log[i:i + 3]
    # The session (CORE) counts the step between the listeners before it and those after it.
    after = {name: step for name, event, step in log[-3:] if event == "after_step"}
    assert after == {"early": 1, "late": 2, "also_late": 2}


def test_a_listener_may_take_another_place_for_one_event() -> None:
    """Before the session, a listener sees the backward that ``--max-steps`` refuses."""

    class EarlyLoss(Recorder):
        def order(self, event: str) -> int:
            return EARLY if event == "before_backward" else self.priority

    log: list[tuple[str, str, int]] = []
    session = CaptureSession(Schedule(auto=False), max_steps=2)
    session.add(EarlyLoss("early_loss", PROBE, log, session))
    session.add(Recorder("probe", PROBE, log, session))
    with pytest.raises(StopTraining), session:
        _train(5)
    backwards = [(n, s) for n, e, s in log if e == "before_backward"]
    assert backwards == [("early_loss", 0), ("probe", 0), ("early_loss", 1), ("probe", 1),
                         ("early_loss", 2)]
    steps = [(n, s) for n, e, s in log if e == "after_step"]
    assert steps == [("early_loss", 1), ("probe", 1), ("early_loss", 2), ("probe", 2)]
    assert session.state.step == 2 and session.state.backward_calls == 2


class HalveLr(Listener):
    """What a fix does at the optimizer's construction: rewrite its arguments."""

    def optimizer_args(self, opt: torch.optim.Optimizer, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        params, defaults = args
        return (params, {**defaults, "lr": defaults["lr"] / 2}), kwargs


class Clip(Listener):
    """What a fix does at every step, before any probe reads the gradients."""

    priority = FIX

    def before_step(self, opt: torch.optim.Optimizer) -> None:
        params = [p for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1e-3)


@pytest.mark.parametrize("clip", [False, True])
def test_fixes_rewrite_the_optimizer_and_clip_before_probes_read(clip: bool) -> None:
    session = CaptureSession(Schedule(auto=False))
    stats = session.add(GradientStats(session))
    session.add(HalveLr())
    if clip:
        session.add(Clip())  # added last, runs first: FIX < CORE < MEASURE
    with session:
        opt = _train(3, lr=0.4)
    assert opt.defaults["lr"] == pytest.approx(0.2)
    assert stats.last is not None and stats.last.step == 3
    total = sum(m["grad_norm"] ** 2 for m in stats.last.metrics.values()) ** 0.5
    assert (total <= 1e-3 + 1e-9) == clip, total
    assert all(m["lr"] == pytest.approx(0.2) for m in stats.last.metrics.values())


def test_hooks_are_removed_and_open_close_bracket_the_run() -> None:
    calls: list[str] = []

    class Bracket(Listener):
        priority = MEASURE

        def open(self) -> None:
            calls.append(f"open {torch.autograd.backward.__module__}")

        def close(self) -> None:
            calls.append(f"close {torch.autograd.backward.__module__}")

    backward, init = torch.autograd.backward, torch.optim.Optimizer.__init__
    with Hooks([Bracket()]):
        assert torch.autograd.backward is not backward
        assert torch.optim.Optimizer.__init__ is not init
    assert torch.autograd.backward is backward and torch.optim.Optimizer.__init__ is init
    assert calls == ["open hfault.capture.hooks", "close torch.autograd"]


def test_the_session_is_the_core_and_unknown_events_are_refused() -> None:
    session = CaptureSession(Schedule(auto=False))
    assert session.order("before_step") == CORE
    with pytest.raises(ValueError, match="no listener event"):
        session.hooks.dispatch("before_stpe")
