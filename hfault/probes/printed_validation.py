"""The validation loss the script prints, read from its output as it goes by.

A fix is judged by what it does to the outcome, and the outcome a user trusts is the held-out
loss: a change can lower the training loss and raise the validation loss (a learning rate that
makes the model memorize). hfault cannot evaluate a model it does not own, but training scripts
print their validation loss (nanoGPT's ``step N: train loss X, val loss Y``, pytorch/examples'
``| valid loss X |``, the transformers Trainer's ``{'eval_loss': X}``). While the session is
open, ``sys.stdout`` and ``sys.stderr`` are wrapped by a pass-through that writes every byte on
unchanged and reads each complete line for such a value; the step is the optimizer step the line
was printed after.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import Listener

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
PATTERN = re.compile(
    r"(?<![a-z])(?:val|valid|validation|eval|dev|held[-_ ]?out)[-_ ]?loss['\"]?\s*[:=]?\s*"
    + _NUMBER, re.IGNORECASE)
"""``val loss 1.9``, ``valid loss: 5.21``, ``val_loss=0.3``, ``'eval_loss': 2.1``,
``validation loss 0.88``: the name, an optional ``:`` or ``=``, the number."""
MAX_VALUES = 10_000
"""Values kept (the first ones): a script that prints every step still has a bounded record."""


def validation_loss(line: str) -> float | None:
    """The validation loss a printed line reports, or None."""
    match = PATTERN.search(line)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


class _Tee:
    """Writes through to ``target`` and hands each complete line to ``seen``. Not an
    ``io.TextIOBase``: its ``fileno``, ``isatty`` and ``encoding`` would answer for themselves
    (raise, False, None) where the script must see its real stream's."""

    def __init__(self, target: TextIO, seen: Any) -> None:
        self._target = target
        self._seen = seen
        self._partial = ""

    def write(self, text: str) -> int:
        written = self._target.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-4096:]  # an unfinished line, bounded
        for line in lines:
            self._seen(line)
        return written if isinstance(written, int) else len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer...
        return getattr(self._target, name)


class PrintedValidation(Listener):
    """Records ``[step, loss]`` for every validation loss the script prints."""

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self.values: list[list[float]] = []
        self._saved: tuple[TextIO, TextIO] | None = None

    def open(self) -> None:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self._line)
        sys.stderr = _Tee(sys.stderr, self._line)

    def close(self) -> None:
        if self._saved is None:
            return
        out, err = self._saved
        # A script that replaced sys.stdout itself keeps its own; only ours is taken back.
        if isinstance(sys.stdout, _Tee):
            sys.stdout = out
        if isinstance(sys.stderr, _Tee):
            sys.stderr = err
        self._saved = None

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["validation"] = [list(v) for v in self.values]

    def _line(self, line: str) -> None:
        if len(self.values) >= MAX_VALUES:
            return
        value = validation_loss(line)
        if value is not None:
            self.values.append([self.session.state.step, value])
