"""The JSON report for CI (schema: docs/report.schema.json)."""

from __future__ import annotations

import json
from pathlib import Path

from hfault.report.model import Report


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
