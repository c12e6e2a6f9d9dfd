"""Run the user's script as ``__main__``: its own argv, its folder on ``sys.path``, cwd unchanged.

Whatever happens inside the script (normal end, ``sys.exit``, ``os._exit``, an exception, Ctrl-C,
our own ``--max-steps`` stop) is turned into a :class:`RunOutcome`, so the report is always
written.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hfault.capture import frames
from hfault.capture.delegates import DELEGATES
from hfault.capture.hard_exit import ScriptExited, exit_guard
from hfault.capture.session import CaptureSession, StopTraining
from hfault.capture.sharded import ShardedTraining
from hfault.capture.termination import Terminated, sigterm_stops_script


@dataclass
class RunOutcome:
    """How the script ended: ``status`` is completed, stopped, crashed or exited (``os._exit``)."""

    status: str
    error: dict[str, object] | None = None
    interrupted: bool = False
    """Ctrl-C, or (under torchrun) the launcher's SIGTERM: ``terminated``."""
    terminated: bool = False
    exit_code: int | None = None
    """The code the script passed to ``os._exit`` (status exited)."""
    unsupported: str | None = None
    """Why hfault stopped the script before it trained (a usage error, exit 2)."""


def _user_frame(tb: TracebackType | None, script: Path) -> traceback.FrameSummary | None:
    """The last traceback frame in user code: the script's folder first, else any code that is
    neither hfault's nor a library's (``capture.frames``)."""
    summary = traceback.extract_tb(tb)
    folder = str(script.resolve().parent)
    for frame in reversed(summary):
        if os.path.abspath(frame.filename).startswith(folder):
            return frame
    for frame in reversed(summary):
        if frames.is_user(frame.filename):
            return frame
    return summary[-1] if summary else None


def raised_in_hfault(tb: TracebackType | None) -> bool:
    """Whether an exception came from hfault's own code run inside the script (a hook), not from
    the script: the deepest frame outside library code is hfault's, and is not a hook that only
    passes the call on to torch (``delegates.DELEGATES``: an exception there came from torch)."""
    for frame in reversed(traceback.extract_tb(tb)):
        if frames.is_hfault(frame.filename):
            if os.path.abspath(frame.filename) == os.path.abspath(__file__):
                return False
            return (os.path.basename(frame.filename), frame.name) not in DELEGATES
        if not frames.is_library(frame.filename):
            return False
    return False


def _error(exc: BaseException, script: Path, said: str | None = None) -> dict[str, object]:
    """The exception's type, message and place in user code; ``said`` replaces the exception
    line of the traceback (hfault's own exception standing for something the script did)."""
    frame = _user_frame(exc.__traceback__, script)
    outside = [
        f for f in traceback.extract_tb(exc.__traceback__) if not frames.is_hfault(f.filename)
    ]
    where: dict[str, object] = {
        "file": frame.filename if frame else None,
        "line": frame.lineno if frame else None,
        "function": frame.name if frame else None,
        "code": frame.line if frame else None,
    }
    if isinstance(exc, SyntaxError) and exc.filename:
        # Raised while compiling: the traceback ends in runpy, the place is on the exception.
        where = {"file": exc.filename, "line": exc.lineno, "function": None,
                 "code": (exc.text or "").strip() or None}
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        **where,
        "traceback": "".join(traceback.format_list(outside))
        + (f"{said}\n" if said else "".join(traceback.format_exception_only(type(exc), exc))),
    }


def _handling_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a Ctrl-C: Lightning's ``Trainer.fit`` turns
    the ``KeyboardInterrupt`` into ``sys.exit(1)`` after its graceful shutdown, but the run was
    still interrupted, not crashed."""
    seen: set[int] = set()
    context = exc.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, KeyboardInterrupt):
            return True
        seen.add(id(context))
        context = context.__context__
    return False


def outcome_of(exc: BaseException | None, script: Path) -> RunOutcome:
    """How a run ended, from the exception that ended it (None: it returned). ``script`` is
    the file whose folder counts as the user's when locating the error."""
    if exc is None:
        return RunOutcome("completed")
    if isinstance(exc, StopTraining):
        return RunOutcome("stopped")
    if isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, SystemExit) and _handling_interrupt(exc)):
        return RunOutcome("stopped", interrupted=True)
    if isinstance(exc, Terminated):
        return RunOutcome("stopped", interrupted=True, terminated=True)
    if isinstance(exc, ShardedTraining):
        return RunOutcome("stopped", unsupported=str(exc))
    if isinstance(exc, ScriptExited):
        err = _error(exc, script, said=f"os._exit({exc.code!r})")
        err.update(type="os._exit", message=f"the script called os._exit({exc.code!r})")
        return RunOutcome("exited", err, exit_code=exc.code)
    if isinstance(exc, SystemExit):
        if exc.code in (None, 0):
            return RunOutcome("completed")
        err = _error(exc, script)
        err["message"] = f"the script called sys.exit({exc.code!r})"
        return RunOutcome("crashed", err)
    err = _error(exc, script)
    if raised_in_hfault(exc.__traceback__):
        err["internal"] = True
        err["traceback"] = "".join(traceback.format_exception(exc))
    return RunOutcome("crashed", err)


def run_script(script: Path, argv: list[str], session: CaptureSession) -> RunOutcome:
    """Execute ``script`` under ``session``'s hooks and report how it ended."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        with session, exit_guard(), sigterm_stops_script():
            runpy.run_path(str(script), run_name="__main__")
        return outcome_of(None, script)
    except BaseException as exc:
        return outcome_of(exc, script)
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
