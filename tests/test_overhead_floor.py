"""``benchmarks/overhead_floor.py``: every configuration it prices still trains under
``hfault.watch`` with its parts switched off, and switching them off is undone after the run (the
script replaces hfault internals by name: a rename must fail here, not in a benchmark)."""

from __future__ import annotations

import math

import pytest
from torch import nn

import hfault
from benchmarks import overhead_floor
from hfault.probes import gradients


@pytest.mark.parametrize("name", list(overhead_floor.CONFIGS))
def test_each_configuration_trains_and_is_undone(name: str) -> None:
    watch, changes = overhead_floor.CONFIGS[name]
    originals = [getattr(owner, attr) for owner, attr, _ in changes]
    with overhead_floor._replaced(*changes):
        for owner, attr, value in changes:
            assert getattr(owner, attr) is value
        ms = overhead_floor._train(8, overhead_floor.WARM + 3, watch)
    assert math.isfinite(ms) and ms > 0
    assert [getattr(owner, attr) for owner, attr, _ in changes] == originals


def test_the_replaced_parts_are_what_hfault_calls() -> None:
    # GradientStats.before_step is the listener method hfault dispatches at each step, and the
    # capture registers its module hooks through torch's two global registration functions.
    assert gradients.GradientStats.before_step is not gradients.Listener.before_step
    for _, attr, _ in overhead_floor._NO_MODULE_HOOKS:
        assert callable(getattr(nn.modules.module, attr))


def _global_module_hooks() -> int:
    module = nn.modules.module
    return len(module._global_forward_hooks) + len(module._global_forward_pre_hooks)


@pytest.mark.parametrize("name", list(overhead_floor.CONFIGS)[1:])
def test_module_hooks_are_off_exactly_where_the_configuration_says(name: str) -> None:
    watch, changes = overhead_floor.CONFIGS[name]
    assert watch is not None
    off = any(change in overhead_floor._NO_MODULE_HOOKS for change in changes)
    with overhead_floor._replaced(*changes), hfault.watch(at="100000", **watch):
        assert (_global_module_hooks() == 0) == off
