"""Numbers crossing the JSON boundary. JSON has no NaN or infinity: hfault writes them as the
strings ``"nan"``, ``"inf"``, ``"-inf"`` everywhere, and reads them back as floats."""

from __future__ import annotations

import math
from typing import Any


def encode(x: Any) -> Any:
    """A non-finite float as its string; anything else unchanged."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return x


def clean(obj: Any) -> Any:
    """``obj`` with every non-finite float in its dicts, lists and tuples encoded (tuples become
    lists)."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return encode(obj)
