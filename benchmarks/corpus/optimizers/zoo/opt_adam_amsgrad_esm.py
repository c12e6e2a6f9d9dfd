"""adam_amsgrad on transformers esm: the optimizer sweep (see generate.py)."""

import runpy
import sys
from pathlib import Path

sys.argv[1:1] = ["--model", "esm", "--optimizer", "adam_amsgrad", "--lr", "0.003"]
runpy.run_path(str(Path(__file__).resolve().parents[1] / "program.py"), run_name="__main__")
