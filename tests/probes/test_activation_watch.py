"""The NaN watch of module outputs names the first module whose output had a NaN or an Inf of
either sign, and no module whose output was finite, however large (its probes are exact)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfault.probes.numerics import ActivationWatch

INF = float("inf")


def _first_bad(outputs: list[object]) -> int | None:
    """Index of the module the watch names after recording one output per module."""
    modules = [nn.Identity() for _ in outputs]
    watch = ActivationWatch()
    for module, output in zip(modules, outputs, strict=True):
        watch.record(module, output)
    bad = watch.take().first_bad()
    return None if bad is None else modules.index(bad)


def _with(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.ones(4, 3, dtype=dtype)
    t[2, 1] = value
    return t


@pytest.mark.parametrize("value", [float("nan"), INF, -INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_the_first_non_finite_output_is_named(value: float, dtype: torch.dtype):
    assert _first_bad([_with(1.0, dtype), _with(value, dtype), _with(value, dtype)]) == 1


def test_large_finite_outputs_and_what_is_not_a_float_are_not_named():
    huge = torch.full((1000,), 3e38)  # its float32 sum would overflow
    half = torch.full((1000,), 65504.0, dtype=torch.float16)
    assert _first_bad([huge, -huge, half, torch.empty(0), torch.arange(3), None]) is None


def test_every_tensor_of_a_tuple_or_dict_output_is_checked():
    ok = torch.ones(3)
    assert _first_bad([(ok, None), (ok, _with(-INF)), {"a": _with(INF)}]) == 1
    assert _first_bad([{"a": ok, "b": _with(float("nan"), torch.float64)}]) == 0
    assert _first_bad([torch.tensor([1 + 1j, complex(INF, 0)])]) == 0


def test_an_output_is_checked_once_per_forward_unless_written_in_place():
    """A container returns its last child's output: one check. An in-place write since (an
    ``inplace=True`` module) makes it a new output, checked and named."""
    x = torch.ones(3)
    inner, outer, inplace = nn.Linear(3, 3), nn.Sequential(), nn.ReLU(inplace=True)
    watch = ActivationWatch()
    watch.record(inner, x)
    watch.record(outer, x)
    assert len(watch.pending) == 1
    x[1] = float("nan")
    watch.record(inplace, x)
    assert len(watch.pending) == 2
    assert watch.take().first_bad() is inplace
    watch.record(outer, x)  # a new forward checks it again
    assert watch.take().first_bad() is outer



def test_a_dropout_after_a_functional_softmax_is_named():
    """The NaN of a softmax computed in a parent's forward first shows in its dropout's output:
    the closest module to name (a zero-probability dropout returns its input: the same)."""
    for drop in (nn.Dropout(0.1), nn.Dropout(0.0)):
        after = nn.Linear(3, 3)
        watch = ActivationWatch()
        watch.record(drop, _with(float("nan")))
        watch.record(after, _with(float("nan")))
        assert watch.take().first_bad() is drop
