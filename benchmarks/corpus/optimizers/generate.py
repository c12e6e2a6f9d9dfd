"""Write the optimizer sweep's manifests: one family per (optimizer, model type).

    .venv/bin/python benchmarks/corpus/optimizers/generate.py
    .venv/bin/python benchmarks/corpus/optimizers/generate.py --optimizers adadelta,muon

For each optimizer of ``program.OPTIMIZERS`` and each model type of ``MODELS``, this runs the
plain program (no hfault) at each of the optimizer's candidate learning rates, keeps the one with
the lowest validation loss, and keeps the pair only when it learns (validation loss below
``LEARNS`` × the first loss), as a user tunes a learning rate before training for real. It then
writes ``zoo/opt_OPTIMIZER_MODEL.{py,toml}`` with the architecture sweep's 11 mutants, aimed by
its structural rules (``architectures/generate.py``: ``aim`` and ``MUTANTS``), fixed before any
run under hfault. The models are two types the architecture sweep kept (a decoder and an
encoder); the optimizer is what is new: hfault's rules were tuned on programs using SGD, Adam(W),
RMSprop, RAdam and Adamax, never on Adadelta, Adagrad, ASGD, Rprop, Adafactor, L-BFGS or Muon.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = ("biogpt", "esm")
LEARNS = 0.7
STEPS = 100


def _load(name: str, path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


program = _load("optimizer_program", HERE / "program.py")
arch_generate = _load("arch_generate_for_optimizers",
                      HERE.parent / "architectures" / "generate.py")

WRAPPER = '''"""{optimizer} on transformers {model_type}: the optimizer sweep (see generate.py)."""

import runpy
import sys
from pathlib import Path

sys.argv[1:1] = ["--model", "{model_type}", "--optimizer", "{optimizer}", "--lr", "{lr}"]
runpy.run_path(str(Path(__file__).resolve().parents[1] / "program.py"), run_name="__main__")
'''


def plain_run(model_type: str, optimizer: str, lr: float) -> tuple[dict | None, float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "program.py"), "--model", model_type,
                           "--optimizer", optimizer, "--lr", repr(lr), "--steps", str(STEPS)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    seconds = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith("CORPUS_RESULT "):
            return json.loads(line[len("CORPUS_RESULT "):]), seconds, ""
    return None, seconds, (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", help="comma-separated names (default: all)")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoo = HERE / "zoo"
    zoo.mkdir(exist_ok=True)
    chosen = args.optimizers.split(",") if args.optimizers else list(program.OPTIMIZERS)
    for model_type in args.models.split(","):
        torch.manual_seed(0)
        model = program.arch.AutoModelForSequenceClassification.from_config(
            program.arch.tiny_config(model_type))
        aims = arch_generate.aim(model, program.arch.CLASSES)
        for optimizer in chosen:
            tried = []
            for lr in program.OPTIMIZERS[optimizer][1]:
                result, seconds, why = plain_run(model_type, optimizer, lr)
                val = result["val_loss"] if result else None
                tried.append((val if isinstance(val, float) else float("inf"), lr, seconds))
                print(f"  {optimizer:16} {model_type:8} lr {lr:<8g} {seconds:5.1f} s  "
                      f"{f'val {val:.3f}' if isinstance(val, float) else why or 'non-finite'}",
                      flush=True)
            best, lr, seconds = min(tried)
            name = f"opt_{optimizer}_{model_type.replace('-', '_')}"
            if best > LEARNS * result["first_loss"] if result else True:
                print(f"{name:32} dropped: best val {best:.3f}")
                continue
            description = (f"transformers {type(model).__name__} from a tiny config trained with "
                           f"{optimizer} at lr {lr:g} (the optimizer sweep's recipe)")
            (zoo / f"{name}.toml").write_text(arch_generate.manifest(
                model_type, aims, description, family=name,
                generator="optimizers/generate.py"))
            (zoo / f"{name}.py").write_text(WRAPPER.format(
                model_type=model_type, optimizer=optimizer, lr=repr(lr)))
            print(f"{name:32} kept: lr {lr:g}, val {best:.3f}, {seconds:.1f} s", flush=True)
    kept = sorted(p.stem for p in zoo.glob("opt_*.toml"))
    (zoo / "split.toml").write_text(
        "# Generated by optimizers/generate.py: every kept (optimizer, model), scored only.\n"
        f"optimizers = {json.dumps(kept)}\n")
    print(f"\n{len(kept)} families kept")


if __name__ == "__main__":
    main()
