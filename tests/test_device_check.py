"""``benchmarks/device_check.py --cpu-smoke``: the GPU device check runs end to end on the CPU at
tiny sizes, so the script is known to work the day a GPU machine is lent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e  # trains real models (in a subprocess)


def test_device_check_smoke_passes_every_check_and_prints_every_measurement() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--cpu-smoke"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "FAIL" not in out and "device check: 9 passed, 0 failed" in out, out
    # the kernel really switched: math on the two measured steps only
    assert "1:fused 2:math 3:fused 4:fused 5:math 6:fused" in out, out
    assert "ratio" in out  # the overhead measurement
    for model in ("GPT-2 124M", "DistilBERT-base"):
        line = next(x for x in out.splitlines() if x.strip().startswith(model))
        assert " steps" in line and "ERROR" not in line, line

