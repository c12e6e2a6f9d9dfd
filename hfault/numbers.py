"""Numbers in report data: the one way hfault reads, encodes and prints them.

JSON has no NaN or infinity, so hfault writes them as the strings ``"nan"``, ``"inf"``,
``"-inf"`` everywhere (diagnose, perturb, verify, SARIF) and reads them back as floats. What a
non-finite value means is the caller's to decide, so reading keeps it: a NaN gradient norm is
the finding, not a missing value. Callers that need a usable magnitude (a JSON-safe edge weight,
a loss difference) read with :func:`finite`; a rule's *score* that is NaN stays NaN and is ranked
explicitly (:func:`hfault.findings.ranking_score`), never silently read as 0.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

NON_FINITE = ("nan", "inf", "-inf")
"""How JSON spells the non-finite floats."""


def decode(value: Any) -> Any:
    """Undo :func:`encode`: ``"nan"``/``"inf"``/``"-inf"`` as floats; anything else unchanged."""
    if isinstance(value, str) and value in NON_FINITE:
        return float(value)
    return value


def is_number(x: Any) -> bool:
    """A real int or float, NaN and infinities included; not a bool (``True`` is no number)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def as_float(value: Any) -> float | None:
    """A number from report data as a float, non-finite kept; None when it is not a number.

    Accepts ints, floats, their JSON spellings ``"nan"``/``"inf"``/``"-inf"`` and one-element
    tensors or numpy scalars (a learning rate may be a tensor); rejects bools, other strings,
    None and anything else."""
    value = decode(_scalar(value))
    return float(value) if is_number(value) else None


def finite(value: Any) -> float | None:
    """:func:`as_float`, but None for NaN and infinities too: for values that must be usable
    magnitudes (a non-finite loss difference is recorded as missing, with its reason elsewhere)."""
    x = as_float(value)
    return x if x is not None and math.isfinite(x) else None


def _scalar(value: Any) -> Any:
    """A one-element tensor or numpy scalar as its Python number; anything else unchanged. Looks
    torch and numpy up only if the program already imported them (no import cost here)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.generic, numpy.ndarray)):
        return value.item() if value.size == 1 else None
    return value


def encode(x: Any) -> Any:
    """A non-finite float as its string; anything else unchanged."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return x


def clean(obj: Any) -> Any:
    """``obj`` with every non-finite float in its mappings, lists and tuples encoded (tuples
    become lists; a key JSON cannot write, such as a tuple, becomes its str())."""
    if isinstance(obj, Mapping):
        return {k if _json_key(k) else str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return encode(obj)


def _json_key(k: Any) -> bool:
    return k is None or isinstance(k, (str, int, float, bool))


def fmt(x: Any, digits: int = 3, missing: str = "–") -> str:
    """The short human form of a report value, for every renderer: ``missing`` for None, yes/no
    for bools, ints whole, floats to ``digits`` significant digits (never "-0"), non-finite
    floats (or their JSON strings) as "nan"/"inf"/"-inf", anything else as str()."""
    if x is None:
        return missing
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return encode(x)
        text = f"{x:.{digits}g}"
        return "0" if text == "-0" else text
    return str(x)
