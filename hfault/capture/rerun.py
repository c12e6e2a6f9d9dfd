"""Run the script again in this process, as if for the first time: the ``--verify-fix`` rerun
and every run of ``hfault perturb``.

Before the run and again after it (in ``finally``, whatever the script did): forget the modules
the script imported from its own folder, then restore the process state saved before the first
run (RNG streams, default dtype, grad mode). Forgetting comes first and the restore last, because
dropping a module can drop the last reference to the script's objects, whose finalizers then run
user code: whatever it does to the global generators or torch's settings, the restore undoes.
Forgetting before the run too matters when the previous run was not a rerun (``diagnose``'s
first run keeps its modules); after a rerun there is nothing left to forget. The two former
copies of this code agree with this order (``verify.flow`` forgot then restored before and
after; ``perturb.driver`` only restored before, every run but the first following a rerun).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from hfault.capture.process_state import ProcessState
from hfault.capture.runner import RunOutcome, run_script
from hfault.capture.session import CaptureSession


def rerun(
    script: Path,
    argv: Sequence[str],
    session: CaptureSession,
    process: ProcessState,
    *,
    show_output: bool = False,
) -> RunOutcome:
    """Run ``script`` under ``session`` (with whatever listeners it holds) from ``process``'s
    saved state; its stdout and stderr are silenced unless ``show_output``."""
    _reset(process, script)
    try:
        with _silenced(not show_output):
            return run_script(script, list(argv), session)
    finally:
        _reset(process, script)


def _reset(process: ProcessState, script: Path) -> None:
    process.forget_user_modules(script.parent)
    process.restore()


@contextlib.contextmanager
def _silenced(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        yield
