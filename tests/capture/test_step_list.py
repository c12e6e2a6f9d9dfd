"""One ``--at`` grammar for diagnose's snapshots and perturb's injections."""

from __future__ import annotations

import pytest

from hfault.capture.schedule import ScheduleError, parse_schedule
from hfault.capture.step_list import StepList, StepListError, parse_step_list
from hfault.perturb.injection import InjectionError, parse_injection


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10,20", StepList(frozenset({10, 20}))),
        (" 3 , every:10 ", StepList(frozenset({3}), 10)),
        ("every", StepList(every=1)),
        ("every:4,every:6", StepList(every=6)),  # the last every wins
        ("auto,50", StepList(frozenset({50}), auto=True)),
        ("5,,", StepList(frozenset({5}))),
    ],
)
def test_tokens(text: str, parsed: StepList) -> None:
    assert parse_step_list(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "--at: 'x' is not a step number, 'every:N', 'every' or 'auto'"),
        ("every:", "--at: 'every:' is not a step number"),
        ("every5", "--at: 'every5' is not a step number"),
        ("0", "--at: steps are numbered from 1, got 0"),
        ("every:-2", "--at: steps are numbered from 1, got -2"),
        (",", "--at ',' names no step"),
    ],
)
def test_errors_are_one_line_for_both_commands(text: str, message: str) -> None:
    for parse, error in ((lambda t: parse_schedule(t, None), ScheduleError),
                         (lambda t: parse_injection(t, 100), InjectionError)):
        with pytest.raises(error) as info:
            parse(text)
        assert str(info.value).startswith(message)
        assert "\n" not in str(info.value)
        assert isinstance(info.value, StepListError)


def test_every_now_also_names_every_snapshot_step() -> None:
    schedule = parse_schedule("every", None)
    assert all(schedule.wants(s) for s in range(1, 30))
    assert schedule.describe() == "every 1"


def test_auto_keeps_each_commands_meaning() -> None:
    snapshots = parse_schedule("auto,7", 100)
    assert [s for s in range(1, 101) if snapshots.wants(s)] == [1, 7, 25, 50, 75, 100]
    injection = parse_injection("auto,7", 100)
    assert injection.steps == frozenset({7, 50}) and injection.every is None
    assert parse_injection(None, 9) == parse_injection("auto", 9) == parse_injection(" ", 9)
    with pytest.raises(InjectionError, match="needs --at STEPS or --max-steps N"):
        parse_injection("auto", None)


def test_each_command_keeps_its_limits() -> None:
    assert parse_schedule("500", 10).steps == frozenset({500})  # a snapshot never reached: fine
    with pytest.raises(InjectionError, match="after --max-steps 10"):
        parse_injection("500", 10)
