"""Run the sample programs listed in expected.toml, one at a time, and report their RESULT lines.

    python sample_programs/measure_all.py                  # run all, print a table
    python sample_programs/measure_all.py gpt_ han_lr      # only programs whose name starts so
    python sample_programs/measure_all.py --update         # also rewrite the measured numbers
    python sample_programs/measure_all.py --check          # exit 1 unless every healthy program
                                                           # reaches eval acc >= 0.9 and every
                                                           # faulty one is measurably worse

Each program runs as a subprocess of this Python, from the repository root, with its default
arguments (pass --steps N to shorten all runs; the measured numbers are then not comparable).
--update rewrites, for each program run, its [programs.NAME.measured] table and its symptom line
(the numbers of the program against its healthy twin); everything else in the file is kept.
"""

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "expected.toml"
MIN_HEALTHY_EVAL_ACC = 0.9


def run(name: str, extra: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py"), *extra],
        cwd=HERE.parent, capture_output=True, text=True, check=False,
    )
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["seconds"] = round(seconds, 1)
    return result


def fmt_loss(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3g}"


def symptom(result: dict, twin: dict | None) -> str:
    if twin is None:
        return (f"trains cleanly: final loss {fmt_loss(result['final_loss'])}; "
                f"eval acc {result['eval_acc']:.2f}; train acc {result['train_acc']:.2f}")
    parts = [
        f"final loss {fmt_loss(result['final_loss'])} vs {fmt_loss(twin['final_loss'])} (healthy)",
        f"eval acc {result['eval_acc']:.2f} vs {twin['eval_acc']:.2f}",
        f"train acc {result['train_acc']:.2f} vs {twin['train_acc']:.2f}",
    ]
    if result.get("nan_step") is not None:
        parts.insert(0, f"non-finite loss from step {result['nan_step']}")
    return "; ".join(parts)


def hurts(result: dict, twin: dict) -> bool:
    """A measurable difference: NaN, an accuracy gap, or a loss gap. The gap counts either way: a
    loss far below the healthy run's floor means the model reads its targets (a leak)."""
    if result.get("nan_step") is not None:
        return True
    loss, base = result["final_loss"], twin["final_loss"]
    loss_gap = abs(loss - base) > 0.05
    return loss_gap or result["eval_acc"] < twin["eval_acc"] - 0.05


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(float(f"{value:.6g}"))
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def update_manifest(text: str, name: str, result: dict, symptom_line: str) -> str:
    measured = [f"[programs.{name}.measured]"]
    for key in ("final_loss", "train_acc", "eval_acc", "nan_step", "steps", "seconds"):
        if result.get(key) is not None:
            measured.append(f"{key} = {toml_value(result[key])}")
    block = "\n".join(measured) + "\n"
    header = re.escape(f"[programs.{name}.measured]")
    pattern = re.compile(rf"^{header}\n(?:(?!\[|#).*\n)*", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        table = re.compile(rf"^\[programs\.{re.escape(name)}\]\n(?:(?!\[).*\n)*", re.MULTILINE)
        match = table.search(text)
        if match is None:
            raise KeyError(f"[programs.{name}] not in {MANIFEST.name}")
        lines = match.group(0).splitlines(keepends=True)
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
            lines.pop()
        end = match.start() + sum(map(len, lines))
        text = text[:end] + block + "\n" + text[end:]
    line = re.compile(rf"(^\[programs\.{re.escape(name)}\]\n(?:(?!\[).*\n)*?)symptom = .*\n",
                      re.MULTILINE)
    text = line.sub(lambda m: m.group(1) + f"symptom = {json.dumps(symptom_line)}\n", text,
                    count=1)
    return re.sub(r"\n{3,}", "\n\n", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only programs whose name starts so")
    parser.add_argument("--update", action="store_true", help="rewrite expected.toml")
    parser.add_argument("--check", action="store_true", help="exit 1 on a failed expectation")
    parser.add_argument("--steps", type=int, default=None, help="pass --steps N to every program")
    args = parser.parse_args()
    if args.update and args.steps is not None:
        parser.error("--update records default-length runs only; drop --steps")

    programs = tomllib.loads(MANIFEST.read_text())["programs"]
    chosen = [n for n in programs if not args.names or any(n.startswith(p) for p in args.names)]
    extra = ["--steps", str(args.steps)] if args.steps is not None else []

    results: dict[str, dict] = {}
    for name in chosen:
        results[name] = run(name, extra)
        r = results[name]
        print(f"{name:26s} loss {fmt_loss(r['final_loss']):>9s}  train {r['train_acc']:.3f}  "
              f"eval {r['eval_acc']:.3f}  nan_step {r.get('nan_step')}  {r['seconds']:5.1f}s",
              flush=True)

    failures = []
    text = MANIFEST.read_text()
    for name, result in results.items():
        spec = programs[name]
        twin_name = spec.get("twin")
        twin = results.get(twin_name) or programs.get(twin_name, {}).get("measured")
        if spec["healthy"]:
            if result["eval_acc"] < MIN_HEALTHY_EVAL_ACC or result.get("nan_step") is not None:
                failures.append(f"{name}: healthy program reached eval acc {result['eval_acc']}")
        elif twin is None:
            failures.append(f"{name}: no measurement of its twin {twin_name}")
        elif not hurts(result, twin):
            failures.append(f"{name}: not measurably worse than {twin_name}")
        if args.update:
            line = symptom(result, None if spec["healthy"] else twin)
            text = update_manifest(text, name, result, line)
    if args.update:
        MANIFEST.write_text(text)
        print(f"updated {MANIFEST}")
    for failure in failures:
        print("FAIL", failure)
    if args.check and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
