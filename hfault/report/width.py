"""How wide the terminal report is: ``COLUMNS`` when set, else the terminal's own width, else
120 (a pipe or a CI log, where nothing says how wide the reader is)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

PIPED_WIDTH = 120


def terminal_width(stream: TextIO | None = None, *, piped: int = PIPED_WIDTH) -> int:
    """Columns to render for: a positive integer ``COLUMNS`` wins (a user or CI asking for a
    width, also when piped), then the width of the terminal ``stream`` (stdout) is on, then
    ``piped``."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    out = sys.stdout if stream is None else stream
    try:
        if out.isatty() and (size := os.get_terminal_size(out.fileno()).columns) > 0:
            return size
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO, a notebook)
        pass
    return piped
