"""Norms from float32 chunks summed in float64 stay within 5e-6 of the float64 norm, and an
overflow of finite entries shows as a non-finite screen that the exact norm corrects."""

from __future__ import annotations

import pytest
import torch

from hfault.probes.many_norms import CHUNK, exact_norms, fast_norms, sum_of_squares


def _reference(tensors: list[torch.Tensor]) -> list[float]:
    return [float(t.double().norm()) for t in tensors]


def test_chunked_norms_are_within_5e6_of_float64() -> None:
    torch.manual_seed(0)
    tensors = [torch.randn(3 * CHUNK + 17) * 1e-3, torch.randn(384, 1536), torch.randn(7),
               torch.zeros(0), torch.randn(CHUNK).half(), torch.randn(2 * CHUNK).bfloat16()]
    tensors[1][5:100] = 0.0
    norms, screened = fast_norms(tensors)
    assert screened and norms.dtype == torch.float64
    for got, want in zip(norms.tolist(), _reference(tensors), strict=True):
        assert got == pytest.approx(want, rel=5e-6, abs=0.0)


def test_float64_and_strided_tensors_take_the_exact_path() -> None:
    x = torch.randn(64, 64, dtype=torch.float64)
    norms, screened = fast_norms([x, torch.randn(4)])
    assert screened  # the float32 one
    assert norms[0].item() == pytest.approx(float(x.norm()), rel=1e-15)
    _, screened = fast_norms([x])
    assert not screened
    _, screened = fast_norms([torch.randn(64, 64).t()])  # not contiguous
    assert not screened


def test_an_overflow_of_finite_entries_is_only_a_screen() -> None:
    big = torch.full((CHUNK + 5,), 1e30)
    screen, _ = fast_norms([big])
    assert not torch.isfinite(screen).all()  # float32 squares overflow
    exact = exact_norms([big])
    assert torch.isfinite(exact).all()
    assert exact[0].item() == pytest.approx(_reference([big])[0], rel=1e-12)


def test_nan_and_inf_entries_give_non_finite_norms() -> None:
    for bad in (float("nan"), float("inf")):
        x = torch.randn(2 * CHUNK)
        x[CHUNK + 3] = bad
        norms, _ = fast_norms([torch.randn(5), x])
        assert torch.isfinite(norms[0]) and not torch.isfinite(norms[1])


def test_a_tensor_gets_the_same_norm_in_any_list() -> None:
    """grad_scale divides two norms of the same gradient: they must agree to the last bit."""
    torch.manual_seed(1)
    g = torch.randn(3 * CHUNK + 5)
    alone, _ = fast_norms([g])
    mixed, _ = fast_norms([torch.randn(8, 8).t(), g, torch.randn(4, dtype=torch.float64)])
    assert alone[0].item() == mixed[1].item()


def test_sum_of_squares_is_within_1e5_of_float64_and_exact_where_float32_overflows() -> None:
    """What update ratios read (‖Δθ‖²/‖θ‖²): a large table, a strided slice of a fused weight,
    entries whose float32 square overflows."""
    torch.manual_seed(0)
    table = torch.randn(40 * CHUNK) + 3.0
    fused = torch.randn(96, 32)
    parts = [table, fused[:, 8:16], torch.randn(5)]
    want = sum(float(t.double().pow(2).sum()) for t in parts)
    assert sum_of_squares(parts) == pytest.approx(want, rel=1e-5, abs=0.0)
    huge = [torch.full((CHUNK + 3,), 1e25)]
    assert sum_of_squares(huge) == pytest.approx((CHUNK + 3) * float(huge[0][0]) ** 2, rel=1e-9)
    assert sum_of_squares([]) == 0.0
