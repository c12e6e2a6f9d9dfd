"""What a default ``hfault diagnose`` costs over the plain script, measured in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py            # about 3 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py --repeats 5
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py --unmeasured-only --widths 384

Prints three tables, every ratio from runs alternated in this one process (the machine's noise
hits both sides alike; the minimum of the repeats is kept). ``--baseline OLD_TREE`` also times an
older copy of the tree in the same rounds (a before/after measured in one run).

1. **Unmeasured steps**: a generated pre-norm encoder trained for a fixed number of AdamW steps,
   at two widths (about 5 ms and 30 ms a step on one CPU thread) and at nanoGPT's
   Shakespeare-character size (6 layers, width 384). The loop is timed from its third step (the
   first two build the optimizer's state, and hfault's components: a cost per run, not per
   step), scaled back to the whole loop. The script times its own
   training loop, so start-up is excluded; under hfault it runs with ``--at`` past its last step,
   so every step is an unmeasured one (plus the last step, which is always reported). Wall and
   CPU time of the loop (on a shared box the CPU-time ratio is the steadier one).
2. **Default runs**: three sample programs, wall time of ``hfault diagnose`` (first-order, the
   default) against the plain script, start-up included.
3. **Start-up**: ``hfault diagnose`` on a script that only imports torch, against that script.
Not a test: machines are noisy, so it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

ENCODER = '''
import json, sys, time
import torch
from torch import nn
width, steps = int(sys.argv[1]), int(sys.argv[2])
layers, heads, seq, batch = (int(a) for a in (sys.argv[3:] or [2, 4, 32, 16]))
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                   norm_first=True)
model = nn.Sequential(nn.TransformerEncoder(layer, layers, enable_nested_tensor=False),
                      nn.Linear(width, 4))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(batch, seq, width), torch.randint(0, 4, (batch,))
WARM = 2
for step in range(steps):
    if step == WARM:  # the first steps build the optimizer state (and hfault its components)
        start, cpu = time.perf_counter(), time.process_time()
    loss = nn.functional.cross_entropy(model(x).mean(1), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("LOOP_SECONDS", (time.perf_counter() - start) * steps / (steps - WARM))
print("LOOP_CPU_SECONDS", (time.process_time() - cpu) * steps / (steps - WARM))
'''

CONFIGS = [(32, 300, (2, 4, 32, 16)), (128, 100, (2, 4, 32, 16)), (384, 15, (6, 6, 64, 8))]
"""(width, steps, (layers, heads, positions, batch)): the small encoder at two widths (about 5 and
30 ms a step), then one of nanoGPT's Shakespeare-character size (6 layers of width 384 with 6
heads, 10.7M parameters) at 64 positions, batch 8."""

SAMPLES = [("encoder_healthy.py", 200), ("han_healthy.py", 200), ("gpt_healthy.py", 200)]


def _run(cmd: list[str], pythonpath: Path | None = None) -> tuple[float, str]:
    # ``python -m hfault`` imports from its working folder first: run in the tree it times.
    env = ENV if pythonpath is None else {**ENV, "PYTHONPATH": str(pythonpath)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=pythonpath or ROOT, env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1, 2):  # 2: "nothing to diagnose" (the start-up script)
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return wall, proc.stdout


def _loop_seconds(stdout: str, key: str = "LOOP_SECONDS") -> float:
    line = next(x for x in stdout.splitlines() if x.split()[:1] == [key])
    return float(line.split()[1])


def _hfault(script: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "hfault", "diagnose", script, "-q", "--fail-on", "never",
            *options, "--"]


def unmeasured(repeats: int, folder: Path, widths: set[int] | None = None,
               baseline: Path | None = None) -> list[dict[str, float]]:
    """Per configuration: the ratios of the loop's wall and CPU time (minima over the repeats),
    and with ``baseline`` (a copy of an older tree, put first on ``PYTHONPATH``) the same for
    its ``hfault``, alternated in the same rounds."""
    script = folder / "encoder.py"
    script.write_text(ENCODER)
    rows = []
    for width, steps, shape in CONFIGS:
        if widths is not None and width not in widths:
            continue
        runs: dict[str, list[str]] = {"plain": [], "hfault": [], "baseline": []}
        args = [str(width), str(steps), *(str(n) for n in shape)]
        watched = [*_hfault(str(script), "--at", "100000"), *args]
        for _ in range(repeats):
            runs["plain"].append(_run([sys.executable, str(script), *args])[1])
            runs["hfault"].append(_run(watched, ROOT)[1])
            if baseline is not None:
                runs["baseline"].append(_run(watched, baseline)[1])

        def best(name: str, key: str, runs: dict[str, list[str]] = runs) -> float:
            return min(_loop_seconds(out, key) for out in runs[name])

        row = {"width": width, "steps": steps, "layers": shape[0],
               "ms_per_step": 1e3 * best("plain", "LOOP_SECONDS") / steps,
               "ratio": best("hfault", "LOOP_SECONDS") / best("plain", "LOOP_SECONDS"),
               "cpu_ratio": best("hfault", "LOOP_CPU_SECONDS") / best("plain", "LOOP_CPU_SECONDS")}
        if baseline is not None:
            row["baseline_ratio"] = (best("baseline", "LOOP_SECONDS")
                                     / best("plain", "LOOP_SECONDS"))
            row["baseline_cpu_ratio"] = (best("baseline", "LOOP_CPU_SECONDS")
                                         / best("plain", "LOOP_CPU_SECONDS"))
        rows.append(row)
    return rows


def default_runs(repeats: int) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    for name, steps in SAMPLES:
        path = str(ROOT / "sample_programs" / name)
        plain, watched = [], []
        for _ in range(repeats):
            plain.append(_run([sys.executable, path, "--steps", str(steps)])[0])
            watched.append(_run([*_hfault(path), "--steps", str(steps)])[0])
        rows.append({"program": name, "plain_s": min(plain), "hfault_s": min(watched),
                     "ratio": min(watched) / min(plain)})
    return rows


def startup(repeats: int, folder: Path) -> dict[str, float]:
    script = folder / "noop.py"
    script.write_text("import torch\n")
    plain = min(_run([sys.executable, str(script)])[0] for _ in range(repeats))
    watched = min(_run(_hfault(str(script)))[0] for _ in range(repeats))
    return {"plain_s": plain, "hfault_s": watched, "added_s": watched - plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--widths", default=None,
                        help="comma-separated widths of the unmeasured-step table (32,128,384)")
    parser.add_argument("--unmeasured-only", action="store_true",
                        help="only the unmeasured-step table")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a copy of an older tree (its hfault/ folder inside): its unmeasured "
                             "steps are timed in the same rounds, for a before/after in one run")
    args = parser.parse_args()
    widths = {int(w) for w in args.widths.split(",")} if args.widths else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        steps = unmeasured(args.repeats, folder, widths, args.baseline)
        runs = [] if args.unmeasured_only else default_runs(args.repeats)
        start = None if args.unmeasured_only else startup(args.repeats, folder)
    print("Unmeasured steps (the script's own training-loop time, hfault / plain; wall, CPU):")
    for r in steps:
        before = (f"; baseline {r['baseline_ratio']:.2f}x, {r['baseline_cpu_ratio']:.2f}x"
                  if "baseline_ratio" in r else "")
        print(f"  {r['layers']} layers, width {r['width']:>3}, {r['steps']} steps, "
              f"{r['ms_per_step']:.1f} ms/step: {r['ratio']:.2f}x, {r['cpu_ratio']:.2f}x{before}")
    if runs:
        print("Default runs (wall time, start-up included, hfault diagnose / plain):")
    for run in runs:
        print(f"  {run['program']:22} {run['plain_s']:6.1f} s -> {run['hfault_s']:6.1f} s: "
              f"{run['ratio']:.2f}x")
    if start is not None:
        print(f"Start-up: a script that imports torch {start['plain_s']:.2f} s, under hfault "
              f"{start['hfault_s']:.2f} s (+{start['added_s']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps({"unmeasured": steps, "default_runs": runs,
                                         "startup": start}, indent=2) + "\n")


if __name__ == "__main__":
    main()
