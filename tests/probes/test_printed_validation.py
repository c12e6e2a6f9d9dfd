"""Validation losses read from what training scripts print, in the formats real scripts use."""

from __future__ import annotations

import io
import sys

import pytest

from hfault.probes.printed_validation import _Tee, validation_loss


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("step 2000: train loss 1.0421, val loss 1.4733", 1.4733),  # nanoGPT
        ("| end of epoch   3 | time: 12.3s | valid loss  5.21 | valid ppl   183.12", 5.21),
        ("{'eval_loss': 2.103, 'eval_runtime': 0.5, 'epoch': 1.0}", 2.103),  # transformers
        ("Epoch 4: val_loss=0.3187 acc=0.91", 0.3187),  # Lightning-style
        ("validation loss: 8.5e-02", 0.085),
        ("dev-loss 3", 3.0),
        ("held-out loss 0.75", 0.75),
    ],
)
def test_validation_losses_are_read(line: str, value: float) -> None:
    assert validation_loss(line) == pytest.approx(value)


@pytest.mark.parametrize(
    "line",
    [
        "step 10: train loss 1.25",
        "validation accuracy 0.91",
        "interval loss 0.5",  # 'val' inside a word
        "val loss nan",  # not a number: nothing to compare
        "",
    ],
)
def test_other_lines_are_not(line: str) -> None:
    assert validation_loss(line) is None


def test_the_wrapped_stream_answers_as_the_real_one() -> None:
    """A script that hands ``sys.stdout`` to a subprocess, or asks whether it is a terminal or
    its encoding, sees its real stream; every byte is written on."""
    seen: list[str] = []
    real = sys.__stdout__
    assert real is not None
    tee = _Tee(real, seen.append)
    assert tee.fileno() == real.fileno() and tee.isatty() == real.isatty()
    assert tee.encoding == real.encoding
    buffer = io.StringIO()
    tee = _Tee(buffer, seen.append)  # type: ignore[arg-type]
    tee.write("step 1: val loss 2.5\npartial ")
    tee.writelines(["line\n", "val_loss=0.5\n"])
    assert buffer.getvalue() == "step 1: val loss 2.5\npartial line\nval_loss=0.5\n"
    assert seen == ["step 1: val loss 2.5", "partial line", "val_loss=0.5"]
