"""Localization accuracy of hfault on the sample programs: full (Hessian) vs first-order only.

    .venv/bin/python benchmarks/accuracy.py                 # every program, both modes
    .venv/bin/python benchmarks/accuracy.py han_ video_     # programs whose name starts so
    .venv/bin/python benchmarks/accuracy.py --mode full     # one mode
    .venv/bin/python benchmarks/accuracy.py --json out.json # also write every row

Each program is diagnosed in a subprocess, one at a time, with the ``--max-steps`` of its
``[programs.NAME.diagnose]`` table in ``sample_programs/expected.toml``; ``--no-curvature`` is the
first-order baseline (gradient, update and weight statistics, NaN localization, attention
entropy: what DeepLocalize/AutoTrainer-style tools see). Scoring is ``benchmarks/samples.py``.
Not a test: it prints numbers (``docs/accuracy.md`` reports them).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from samples import ROOT, Program, Score, load_programs, score

MODES = {"full": [], "first-order": ["--no-curvature"]}


def diagnose(program: Program, mode: str, budget: str,
             keep: Path | None = None) -> tuple[dict, float, int]:
    """Run ``hfault diagnose`` on one program; the report, wall seconds and exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep or Path(tmp)) / f"{program.name}.{mode}.json"
        cmd = [sys.executable, "-m", "hfault", "diagnose", str(program.path), "-q",
               "--json", str(out), "--max-steps", str(program.max_steps), "--fail-on", "never",
               *MODES[mode], *_options(program, mode)]
        if mode == "full":
            cmd += ["--budget", budget]
        if program.args:
            cmd += ["--", *program.args]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if not out.exists():
            raise RuntimeError(f"{program.name} ({mode}): no report, exit {proc.returncode}\n"
                               f"{proc.stderr[-2000:]}")
        return json.loads(out.read_text()), seconds, proc.returncode


def rejudge(report: dict) -> dict:
    """The report with its findings and verdict recomputed by the current rule files (rules read
    only the report's data, so a saved run can be re-scored after a threshold change)."""
    from hfault.report.model import rank
    from hfault.rules import evaluate, load_rules

    findings = [f.to_dict() for f in rank(evaluate(report, load_rules()).findings)]
    severities = {f["severity"] for f in findings}
    if report["run"].get("status") == "crashed":
        verdict = "crashed"
    elif "error" in severities:
        verdict = "faulty"
    elif "warning" in severities:
        verdict = "suspicious"
    else:
        verdict = "healthy"
    return {**report, "findings": findings, "summary": {**report["summary"], "verdict": verdict}}


def _options(program: Program, mode: str) -> list[str]:
    """The manifest's options; ``--no-curvature`` there is the tests' shortcut, not a mode."""
    return [o for o in program.options if o != "--no-curvature"]


def pct(hits: list[bool]) -> str:
    return f"{sum(hits)}/{len(hits)} ({100 * sum(hits) / len(hits):.0f}%)" if hits else "-"


def summarize(rows: list[dict], mode: str) -> dict[str, str]:
    mine = [r for r in rows if r["mode"] == mode]
    faulty = [r for r in mine if not r["healthy"]]
    localized = [r for r in faulty if r["top1"] is not None]
    healthy = [r for r in mine if r["healthy"]]
    return {
        "detection (faulty flagged)": pct([r["detected"] for r in faulty]),
        "top-1 localization": pct([r["top1"] for r in localized]),
        "top-3 localization": pct([r["top3"] for r in localized]),
        "false alarms (error on healthy)": pct([r["false_alarm"] for r in healthy]),
        "warnings on healthy": pct([r["detected"] for r in healthy]),
        "suite passes (test criterion)": pct([r["passed"] for r in mine]),
        "seconds (total)": f"{sum(r['seconds'] for r in mine):.0f}",
        "HVPs (total)": str(sum(r["hvps"] for r in mine)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="only programs whose name starts so")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--budget", default="economy")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--keep", type=Path, help="keep every report in this folder")
    parser.add_argument("--rescore", type=Path, metavar="DIR",
                        help="no runs: re-score the reports a --keep run saved in DIR with the "
                        "current rules (seconds and HVPs are those of that run)")
    args = parser.parse_args()
    programs = [p for p in load_programs()
                if not args.prefixes or any(p.name.startswith(x) for x in args.prefixes)]
    modes = list(MODES) if args.mode == "both" else [args.mode]
    rows = []
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    print(f"{'program':26} {'mode':12} {'verdict':10} {'ok':3} {'rank':>4} {'s':>5}  "
          "first component (expected)")
    for program in programs:
        for mode in modes:
            if args.rescore:
                report = rejudge(json.loads(
                    (args.rescore / f"{program.name}.{mode}.json").read_text()))
                seconds = float(report["run"].get("seconds") or 0.0)
            else:
                report, seconds, _ = diagnose(program, mode, args.budget, args.keep)
            s: Score = score(program, report)
            rows.append({
                "program": program.name, "family": program.family, "mode": mode,
                "healthy": program.healthy, "verdict": s.verdict, "detected": s.detected,
                "top1": s.top1, "top3": s.top3, "false_alarm": s.false_alarm,
                "passed": s.passed, "rank": s.rank, "first": s.first,
                "rules": [f["rule"] for f in report["findings"][:5]],
                "seconds": round(seconds, 1), "hvps": report["run"].get("hvps") or 0,
            })
            want = ", ".join(program.targets) or ("-" if program.healthy else "data")
            print(f"{program.name:26} {mode:12} {s.verdict:10} {'yes' if s.passed else 'NO':3} "
                  f"{s.rank or '-':>4} {seconds:5.0f}  {s.first or '-'} ({want}) "
                  f"{' '.join(rows[-1]['rules'])}", flush=True)
    print()
    table = {mode: summarize(rows, mode) for mode in modes}
    print(f"{'':34}" + "".join(f"{m:>20}" for m in modes))
    for key in table[modes[0]]:
        print(f"{key:34}" + "".join(f"{table[m][key]:>20}" for m in modes))
    print(f"\nmachine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": table}, indent=1))


if __name__ == "__main__":
    main()
