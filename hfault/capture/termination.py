"""Under torchrun, the launcher's SIGTERM ends the script's run, not the report.

When one rank exits non-zero (its script crashed), torchrun sends SIGTERM to the others and
SIGKILL 30 seconds later. By default SIGTERM kills a process on the spot, so rank 0 would leave no
report of a run in which another rank crashed. For the length of a diagnosis under torchrun
(:func:`held_sigterm`, installed by the command line), SIGTERM is held back; while the script
runs (:func:`sigterm_stops_script`, installed by the runner) the first one raises
:class:`Terminated` into it instead, which ends the run like Ctrl-C (status ``stopped``). The
report is then built and written within torchrun's 30 seconds. A single process keeps Python's
default (the runner only acts where the command line held SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(BaseException):
    """Raised into the script on SIGTERM (a BaseException, so ``except Exception`` in the
    script does not catch it)."""


def _hold(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside the script: ignored, the report is on its way (SIGKILL is the limit)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, _hold)
    raise Terminated


@contextmanager
def held_sigterm() -> Iterator[None]:
    """Hold SIGTERM back within the block (the main thread only: elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def sigterm_stops_script() -> Iterator[None]:
    """Within :func:`held_sigterm`: the first SIGTERM raises :class:`Terminated` in the block."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not _hold):
        yield
        return
    signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, _hold)
