"""``os._exit(n)`` in the script: the report is finished first, then the process ends.

``os._exit`` ends the process at once, without unwinding: run as is, a script that calls it (a
common way to skip a hanging interpreter shutdown, often at the end of DDP scripts) left no
report, and hfault's exit code was the script's ``n`` (0 passed a CI gate). For the length of the
run, ``os._exit`` in the script's process and main thread raises :class:`ScriptExited` instead:
the stack unwinds to the runner like ``sys.exit`` (the script's ``finally`` blocks run, which
``os._exit`` would have skipped), the run's status is ``exited``, and the command line ends the
process with the real ``os._exit`` once the report is written (``ExitCode.SCRIPT_EXITED``).

Elsewhere the original runs: a forked child (a ``DataLoader`` worker ends with ``os._exit``)
is not the process being diagnosed. From another thread the stack of the training cannot be
unwound; hfault then says so in one line and ends the process with ``SCRIPT_EXITED``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from hfault.exitcodes import ExitCode


class ScriptExited(BaseException):
    """Raised in place of ``os._exit(code)`` (a BaseException, as ``SystemExit``, so the
    script's ``except Exception`` does not catch it)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


REAL_EXIT: Callable[[int], NoReturn] = os._exit
"""``os._exit`` as it was when hfault was imported: what ends the process after the report."""


@contextmanager
def exit_guard() -> Iterator[None]:
    """Turn ``os._exit`` of this process's main thread into :class:`ScriptExited` within the
    block."""
    original = os._exit
    pid = os.getpid()

    def guarded_exit(status: int) -> NoReturn:
        if os.getpid() != pid:
            original(status)
        if threading.current_thread() is not threading.main_thread():
            sys.stdout.flush()
            print(f"hfault: the script called os._exit({status}) outside the main thread: no "
                  f"report (exit {int(ExitCode.SCRIPT_EXITED)})", file=sys.stderr, flush=True)
            original(ExitCode.SCRIPT_EXITED)
        raise ScriptExited(status)

    os._exit = guarded_exit
    try:
        yield
    finally:
        os._exit = original
