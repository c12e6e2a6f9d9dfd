"""The --at schedule."""

import pytest

from hfault.capture.schedule import ScheduleError, parse_schedule


def test_auto_with_known_length_spreads_five_points():
    schedule = parse_schedule(None, 100)
    assert [s for s in range(1, 101) if schedule.wants(s)] == [1, 25, 50, 75, 100]


def test_auto_without_length_uses_powers_of_two():
    schedule = parse_schedule("auto", None)
    assert [s for s in range(1, 40) if schedule.wants(s)] == [1, 2, 4, 8, 16, 32]


def test_explicit_steps_and_every():
    schedule = parse_schedule("3, every:10", None)
    assert [s for s in range(1, 31) if schedule.wants(s)] == [3, 10, 20, 30]


@pytest.mark.parametrize("text", ["x", "0", "every:0", "every:-2", ","])
def test_bad_values_are_usage_errors(text):
    with pytest.raises(ScheduleError):
        parse_schedule(text, None)
