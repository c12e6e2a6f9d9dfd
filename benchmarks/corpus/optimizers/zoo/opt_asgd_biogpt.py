"""asgd on transformers biogpt: the optimizer sweep (see generate.py)."""

import runpy
import sys
from pathlib import Path

sys.argv[1:1] = ["--model", "biogpt", "--optimizer", "asgd", "--lr", "1.0"]
runpy.run_path(str(Path(__file__).resolve().parents[1] / "program.py"), run_name="__main__")
