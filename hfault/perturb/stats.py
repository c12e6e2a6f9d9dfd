"""Statistics over perturbation draws: means with 95% Student-t intervals.

Draws are independent *units*, except with antithetic sampling, where draw ``2k`` uses ``δ_k`` and
draw ``2k+1`` uses ``−δ_k``: the two are dependent, so a pair's average is the unit. Averaging
a pair cancels every odd-order term of the loss change (the first-order ``g·δ`` above all), which
is what makes ``½α²RMS²Tr(H_bb)`` measurable with few draws.

No SciPy: the Student-t quantile comes from the closed-form CDF for integer degrees of freedom
(Abramowitz & Stegun 26.7.3-4) by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Stat", "mean_ci", "t_quantile", "units"]


def _t_central(t: float, df: int) -> float:
    """``P(|T| < t)`` for Student's t with ``df`` (integer ≥ 1) degrees of freedom."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, c
        for k in range(3, df, 2):  # c + (2/3)c³ + (2·4)/(3·5)c⁵ + ... up to c^(df-2)
            total += term
            term *= c * c * (k - 1) / k
        if df > 1:
            total += term
        return 2.0 / math.pi * (theta + (s * total if df > 1 else 0.0))
    total, term = 1.0, 1.0
    for k in range(2, df, 2):  # 1 + (1/2)c² + (1·3)/(2·4)c⁴ + ... up to c^(df-2)
        term *= c * c * (k - 1) / k
        total += term
    return s * total


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value: ``P(|T| < t) = level`` (e.g. 12.706 for df=1)."""
    if df < 1:
        raise ValueError("df must be ≥ 1")
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < level:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_central(mid, df) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Stat:
    """Mean over ``n`` units with a 95% t-interval (``lo``/``hi`` None when ``n < 2``).

    ``missing`` counts draws left out (non-finite value or no value: a diverged or crashed run).
    """

    mean: float | None
    lo: float | None
    hi: float | None
    sd: float | None
    n: int
    missing: int = 0

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None or self.hi is None else 0.5 * (self.hi - self.lo)

    def to_dict(self) -> dict[str, object]:
        return {
            "mean": self.mean,
            "ci95": None if self.lo is None else [self.lo, self.hi],
            "sd": self.sd,
            "n": self.n,
            "missing": self.missing,
        }


def units(values: Sequence[float | None], antithetic: bool) -> tuple[list[float], int]:
    """The independent units: each draw, or each antithetic pair's average (a pair with a
    missing or non-finite member is dropped whole). Returns the units and the draws dropped."""
    ok = [v if v is not None and math.isfinite(v) else None for v in values]
    if not antithetic:
        kept = [v for v in ok if v is not None]
        return kept, len(ok) - len(kept)
    out, dropped = [], 0
    for i in range(0, len(ok) - 1, 2):
        a, b = ok[i], ok[i + 1]
        if a is None or b is None:
            dropped += 2
        else:
            out.append(0.5 * (a + b))
    dropped += len(ok) % 2
    return out, dropped


def mean_ci(values: Sequence[float | None], antithetic: bool = False, level: float = 0.95) -> Stat:
    """Mean of the units with a two-sided ``level`` Student-t interval (t with n−1 dof)."""
    xs, missing = units(values, antithetic)
    n = len(xs)
    if n == 0:
        return Stat(None, None, None, None, 0, missing)
    mean = math.fsum(xs) / n
    if n < 2:
        return Stat(mean, None, None, None, n, missing)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    sd = math.sqrt(var)
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Stat(mean, mean - half, mean + half, sd, n, missing)
