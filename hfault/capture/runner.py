"""Run the user's script as ``__main__``: its own argv, its folder on ``sys.path``, cwd unchanged.

Whatever happens inside the script (normal end, ``sys.exit``, an exception, Ctrl-C, our own
``--max-steps`` stop) is turned into a :class:`RunOutcome`, so the report is always written.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hfault.capture.session import CaptureSession, StopTraining

_HFAULT_DIR = str(Path(__file__).resolve().parents[1])


@dataclass
class RunOutcome:
    """How the script ended: ``status`` is completed, stopped or crashed."""

    status: str
    error: dict[str, object] | None = None
    interrupted: bool = False


def _user_frame(tb: TracebackType | None, script: Path) -> traceback.FrameSummary | None:
    """The last traceback frame in user code: the script's folder first, else outside torch,
    site-packages, the standard library and hfault."""
    frames = traceback.extract_tb(tb)
    folder = str(script.resolve().parent)
    for frame in reversed(frames):
        if os.path.abspath(frame.filename).startswith(folder):
            return frame
    stdlib = os.path.dirname(os.__file__)
    for frame in reversed(frames):
        name = os.path.abspath(frame.filename)
        if not (
            name.startswith(_HFAULT_DIR)
            or "site-packages" in name
            or name.startswith(stdlib)
            or name.startswith("<")
        ):
            return frame
    return frames[-1] if frames else None


# Hook functions that only delegate to torch: an exception passing through them is the script's.
_DELEGATES = {("session.py", "backward"), ("session.py", "init"), ("session.py", "scale"),
              ("loss_input.py", "wrapped")}


def raised_in_hfault(tb: TracebackType | None) -> bool:
    """Whether an exception came from hfault's own code run inside the script (a hook), not from
    the script: the deepest frame outside torch, the standard library and site-packages is
    hfault's, and is not a hook that merely delegates to torch."""
    stdlib = os.path.dirname(os.__file__)
    for frame in reversed(traceback.extract_tb(tb)):
        name = os.path.abspath(frame.filename)
        if name.startswith(_HFAULT_DIR):
            if name == os.path.abspath(__file__):
                return False
            return (os.path.basename(name), frame.name) not in _DELEGATES
        if not ("site-packages" in name or name.startswith(stdlib) or name.startswith("<")):
            return False
    return False


def _error(exc: BaseException, script: Path) -> dict[str, object]:
    frame = _user_frame(exc.__traceback__, script)
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(f.filename).startswith(_HFAULT_DIR)
    ]
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "file": frame.filename if frame else None,
        "line": frame.lineno if frame else None,
        "function": frame.name if frame else None,
        "code": frame.line if frame else None,
        "traceback": "".join(traceback.format_list(frames))
        + "".join(traceback.format_exception_only(type(exc), exc)),
    }


def run_script(script: Path, argv: list[str], session: CaptureSession) -> RunOutcome:
    """Execute ``script`` under ``session``'s hooks and report how it ended."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        with session:
            runpy.run_path(str(script), run_name="__main__")
        return RunOutcome("completed")
    except StopTraining:
        return RunOutcome("stopped")
    except KeyboardInterrupt:
        return RunOutcome("stopped", interrupted=True)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return RunOutcome("completed")
        err = _error(exc, script)
        err["message"] = f"the script called sys.exit({exc.code!r})"
        return RunOutcome("crashed", err)
    except BaseException as exc:
        err = _error(exc, script)
        if raised_in_hfault(exc.__traceback__):
            err["internal"] = True
            err["traceback"] = "".join(traceback.format_exception(exc))
        return RunOutcome("crashed", err)
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
