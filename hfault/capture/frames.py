"""Whose code a file is: hfault's own, a library's, or the user's.

One answer for every place that asks: the line a crash report points at, whether an exception
came from hfault's hooks, the line that built an optimizer, the modules a rerun forgets. Library
code is torch, installed packages (``site-packages`` and Debian's ``dist-packages``), the standard
library, and code without a source file (``<frozen ...>``, ``<string>``). hfault counts as
hfault's, wherever it is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import torch

HFAULT_DIR = str(Path(__file__).resolve().parents[1])
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_STDLIB_DIR = os.path.dirname(os.path.abspath(os.__file__))
_INSTALLED = ("site-packages", "dist-packages")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


def is_hfault(filename: str) -> bool:
    """A file of the hfault package."""
    return not filename.startswith("<") and _under(os.path.abspath(filename), HFAULT_DIR)


def is_library(filename: str) -> bool:
    """torch, an installed package, the standard library, or code without a source file."""
    if filename.startswith("<"):
        return True
    path = os.path.abspath(filename)
    return (
        any(part in path for part in _INSTALLED)
        or _under(path, _TORCH_DIR)
        or _under(path, _STDLIB_DIR)
    )


def is_user(filename: str) -> bool:
    """Neither hfault's nor a library's: the script, its own modules, code it ships with it."""
    return not is_hfault(filename) and not is_library(filename)


def user_caller() -> dict[str, Any] | None:
    """``{"file", "line"}`` of the innermost frame of the current stack in user code: the line
    that called into torch or hfault (for a library such as a Trainer, the user's call into
    it); None when no frame is the user's."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if is_user(frame.f_code.co_filename):
            return {"file": frame.f_code.co_filename, "line": frame.f_lineno}
        frame = frame.f_back
    return None
