"""Metrics derived from the measured ones, computed once and stored in the report data, so the
rules that judge a report and the renderers that draw it read the same number (the HTML once
drew r = 0.62 under HF201's 1.5 line while the finding said 3.1).

:func:`derive` is idempotent and is applied wherever report data is judged or rendered: on the
live report before it is judged (``hfault.diagnose.judge``), on a saved report before it is
re-rendered (``hfault report``), and by the rule features themselves, so that a report saved
before a derived field existed judges exactly as it did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

from hfault.numbers import as_float, encode

__all__ = ["derive", "derive_metrics", "effective_ratio"]


def effective_ratio(ratio: Any, scale: Any, preconditioned: Any = None) -> float | None:
    """r of the step the optimizer took: under SGD a gradient clipped to c/N of its size moves
    the weights by lr·c/N, so the linear stability limit applies to that step, not to lr. Adam's
    m̂/√v̂ divides a steady gradient scale out again, so there clipping changes nothing. A NaN r
    stays NaN; an unmeasured or non-finite grad_scale leaves r as it is."""
    r, g = as_float(ratio), as_float(scale)
    if r is None or preconditioned is True:
        return r
    return r * g if g is not None and math.isfinite(g) else r


def derive_metrics(metrics: Mapping[str, Any]) -> None:
    """Store the derived metrics of one snapshot in its per-component ``metrics`` (in place):
    ``effective_ratio`` wherever ``stability_ratio`` was measured, JSON-encoded like the rest."""
    for m in metrics.values():
        if isinstance(m, MutableMapping) and "stability_ratio" in m:
            m["effective_ratio"] = encode(effective_ratio(
                m["stability_ratio"], m.get("grad_scale"), m.get("preconditioned")))


def derive(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """Store every snapshot's derived metrics in a report's JSON form (in place; recomputed from
    the measured values each time, so applying it twice changes nothing). Returns the report."""
    for snapshot in report.get("snapshots") or []:
        metrics = snapshot.get("metrics") if isinstance(snapshot, Mapping) else None
        if isinstance(metrics, Mapping):
            derive_metrics(metrics)
    return report
