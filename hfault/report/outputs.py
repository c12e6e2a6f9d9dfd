"""Writing a report's files (JSON, SARIF, GraphML, HTML), shared by the CLI and the Python API.

Every path is checked before training starts (an hour of training must not end in "cannot
write"), and every file is written through a temporary file beside it and renamed: a killed or
failed write never leaves a truncated report, nor the previous run's report under this run's
name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output path that cannot be written (the message names the option and the path)."""


@dataclass(frozen=True)
class Outputs:
    """Where a report goes; None: not written."""

    json: Path | None = None
    sarif: Path | None = None
    graph: Path | None = None
    html: Path | None = None

    def named(self) -> dict[str, Path | None]:
        """Each path under the option that sets it."""
        return {"--json": self.json, "--sarif": self.sarif, "--graph": self.graph,
                "--html": self.html}


def check_outputs(outputs: Outputs) -> None:
    """Raise :class:`OutputError` for the first path that cannot be written; creates missing
    parent folders (as the writers would)."""
    for option, path in outputs.named().items():
        if path is None:
            continue
        if path.is_dir():
            raise OutputError(f"{option} {path}: is a folder, not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".hfault-check-"):
                pass
        except OSError as exc:
            raise OutputError(f"{option} {path}: cannot write there "
                              f"({exc.strerror or exc})") from None


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.hfault-tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_outputs(data: Mapping[str, Any], catalog: list[dict[str, Any]],
                  outputs: Outputs) -> list[str]:
    """Write every requested file of the report ``data``; returns one line per output."""
    written = []
    if outputs.json is not None:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
        atomic_write(outputs.json, lambda p: p.write_text(text))
        written.append(f"JSON report written to {outputs.json}")
    if outputs.sarif is not None:
        from hfault.report.sarif import write_sarif

        atomic_write(outputs.sarif, lambda p: write_sarif(data, catalog, p))
        written.append(f"SARIF written to {outputs.sarif}")
    if outputs.graph is not None:
        from hfault.graph import graph_from_json, write_graphml

        last = next((s for s in reversed(data["snapshots"]) if s.get("graph")), None)
        if last is None:
            written.append("no coupling graph to export (curvature was not measured)")
        else:
            graph = graph_from_json(last["graph"])
            atomic_write(outputs.graph, lambda p: write_graphml(graph, p))
            written.append(f"GraphML of step {last['step']} written to {outputs.graph}")
    if outputs.html is not None:
        from hfault.report.html import write_html

        atomic_write(outputs.html, lambda p: write_html(data, p))
        written.append(f"HTML report written to {outputs.html}")
    return written
