"""A rerun starts from the state saved before the first run: RNG streams and fresh modules."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from hfault.capture.process_state import ProcessState
from hfault.capture.rerun import rerun
from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession

pytestmark = pytest.mark.e2e  # runs real training scripts

SCRIPT = """
import json, sys
import torch
import helper
helper.RUNS.append(1)
print("noise on stdout")
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"runs": len(helper.RUNS), "draw": torch.rand(1).item()}) + "\\n")
"""


def test_each_rerun_sees_fresh_modules_and_the_same_random_stream(tmp_path: Path,
                                                                   capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "helper.py").write_text("RUNS = []\n")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.jsonl"
    torch.manual_seed(1)
    process = ProcessState()
    for _ in range(3):
        outcome = rerun(script, [str(out)], CaptureSession(Schedule(auto=False)), process)
        assert outcome.status == "completed", outcome.error
        torch.rand(5)  # whatever happens between runs is undone
        random.random()
    assert "helper" not in sys.modules
    lines = out.read_text().splitlines()
    assert len(set(lines)) == 1 and '"runs": 1' in lines[0], lines
    assert "noise on stdout" not in capsys.readouterr().out
    rerun(script, [str(out)], CaptureSession(Schedule(auto=False)), process, show_output=True)
    assert "noise on stdout" in capsys.readouterr().out
