"""Run the fault-injection corpus under hfault and score it, calibration and held-out parts apart.

    .venv/bin/python benchmarks/corpus/run.py --out benchmarks/results/corpus      # run (resumes)
    .venv/bin/python benchmarks/corpus/run.py --rescore benchmarks/results/corpus  # re-judge
    .venv/bin/python benchmarks/corpus/run.py --families hf_bert,gpt_sdpa --seeds 0 --out /tmp/c
    .venv/bin/python benchmarks/corpus/run.py --zoo benchmarks/corpus/architectures/zoo ...  # sweep

Every job is one (family, seed, mutant or healthy) run of ``launch.py`` under ``hfault diagnose``
with ``--no-curvature`` (first-order, hfault's default), and in full mode too with ``--mode full``
or ``both``, with ``--max-steps`` = the family's steps. Each report
is kept as ``OUT/JOB.MODE.json`` beside ``OUT/JOB.MODE.run.json`` (exit code, seconds, the
program's ``CORPUS_RESULT``), so an interrupted run resumes and ``--rescore`` re-judges the saved
reports with the current rule files without running anything (rules read only report data).

Scoring (``score.py``): a mutant counts only when it is *killed* against its healthy twin at the
same seed; families are split once, in ``split.toml``, into a calibration part (rules may be
tuned on it) and held-out parts (scored, never looked at while changing rules): ``held-out``,
``held-out-2`` to ``held-out-14`` (families written later, by someone who never saw hfault's
results on them), each a column of its own (every part split.toml lists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from score import Job, kill_status, print_tables, saved, score_jobs  # noqa: E402

MODES = {"full": [], "first-order": ["--no-curvature"]}


@dataclass(frozen=True)
class Family:
    name: str
    program: Path
    steps: int
    seeds: tuple[int, ...]
    head: str
    split: str
    mutants: tuple[dict, ...] = field(default=())
    healthy_seeds: tuple[int, ...] = field(default=())


def load_families(only: set[str] | None = None, zoo: Path = HERE / "zoo") -> list[Family]:
    """The families of ``zoo`` (its own ``split.toml`` when it has one, else the corpus's)."""
    split_file = zoo / "split.toml" if (zoo / "split.toml").is_file() else HERE / "split.toml"
    split = tomllib.loads(split_file.read_text())
    where = {name: part for part, names in split.items() for name in names}
    out = []
    for manifest in sorted(zoo.glob("*.toml")):
        if manifest.name == "split.toml":
            continue
        data = tomllib.loads(manifest.read_text())
        name = manifest.stem
        if only and name not in only:
            continue
        out.append(Family(
            name=name, program=manifest.with_suffix(".py"), steps=int(data["steps"]),
            seeds=tuple(data.get("seeds", (0, 1))), head="|".join(_names(data.get("head", ""))),
            split=where.get(name, "unassigned"), mutants=tuple(data.get("mutant", ())),
            healthy_seeds=tuple(data.get("healthy_seeds", ())),
        ))
    return out


def _names(value: str | list[str]) -> list[str]:
    """A manifest's ``head``: one module name, or several (a head tied to the embedding owns no
    parameters of its own, so the embedding's component names it too)."""
    return [value] if isinstance(value, str) else list(value)


def jobs_of(family: Family, seeds: tuple[int, ...] | None = None) -> list[Job]:
    out = []
    # seeds that run the healthy program only (a manifest's ``healthy_seeds``): more healthy
    # runs, where warnings on healthy code are counted, without their mutants' cost
    for seed in sorted(set(family.healthy_seeds) - set(family.seeds)) if not seeds else ():
        out.append(Job(family.name, family.split, seed, None, None, None, "", family.steps))
    for seed in seeds or family.seeds:
        out.append(Job(family.name, family.split, seed, None, None, None, "", family.steps))
        for i, m in enumerate(family.mutants):
            op = m["op"]
            target = m.get("target") or None
            label = "|".join(_names(m["label"])) if m.get("label") else (
                target or (family.head if op == "probs_into_loss" else "run"))
            out.append(Job(family.name, family.split, seed, op, target, m.get("factor"),
                           label, family.steps, index=i))
    return out


def command(job: Job, family: Family, mode: str, report: Path) -> list[str]:
    launch = [str(family.program)]
    if job.op:
        launch += ["--op", job.op]
        if job.target:
            launch += ["--target", job.target]
        if job.factor is not None:
            launch += ["--factor", str(job.factor)]
        launch += ["--mutation-seed", str(job.seed)]
    return [sys.executable, "-m", "hfault", "diagnose", str(HERE / "launch.py"), "-q",
            "--json", str(report), "--max-steps", str(job.steps), "--fail-on", "never",
            *MODES[mode], "--", *launch, "--", "--seed", str(job.seed)]


def run_one(job: Job, family: Family, mode: str, out: Path) -> None:
    report = out / f"{job.key}.{mode}.json"
    meta = out / f"{job.key}.{mode}.run.json"
    if saved(meta):
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(command(job, family, mode, report), cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=900)
    seconds = time.perf_counter() - start
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("CORPUS_RESULT "):
            try:
                result = json.loads(line[len("CORPUS_RESULT "):])
            except json.JSONDecodeError:
                result = None
    meta.write_text(json.dumps({
        "job": job.to_dict(), "mode": mode, "exit": proc.returncode,
        "seconds": round(seconds, 2), "result": result,
        "stderr_tail": proc.stderr[-1500:], "report": report.name if report.exists() else None,
    }, indent=1))
    status = "ok" if report.exists() else f"NO REPORT (exit {proc.returncode})"
    print(f"{job.key:55} {mode:12} {seconds:6.1f}s exit {proc.returncode} {status}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/corpus")
    parser.add_argument("--rescore", type=Path, metavar="DIR",
                        help="no runs: re-judge the reports saved in DIR with the current rules")
    parser.add_argument("--families", help="comma-separated family names (default: all)")
    parser.add_argument("--zoo", type=Path, default=HERE / "zoo",
                        help="the manifests' folder (default: the corpus's zoo; "
                             "architectures/zoo is the architecture sweep)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: each family's)")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="first-order",
                        help="first-order (default, as hfault diagnoses by default), full "
                             "(curvature) or both (full mode on healthy runs and killed mutants)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--all-mutants", action="store_true",
                        help="full mode on every mutant, not only the killed ones")
    parser.add_argument("--json", type=Path, help="write every scored row and the tables here")
    parser.add_argument("--verbose", action="store_true", help="print every scored row")
    args = parser.parse_args()
    only = set(args.families.split(",")) if args.families else None
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    families = load_families(only, args.zoo)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    jobs = [(j, f) for f in families for j in jobs_of(f, seeds)]
    out = args.rescore or args.out
    if not args.rescore:
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        count = 0
        # First-order first: it decides which mutants are killed, and full mode (several times
        # the cost) is then spent only on healthy runs and killed mutants.
        for mode in sorted(modes, key=lambda m: m != "first-order"):
            tasks = [(j, f) for j, f in jobs
                     if mode == "first-order" or args.all_mutants or j.healthy
                     or kill_status(j, out, ["first-order"])[0] in ("killed", "missing")]
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(lambda t, mode=mode: run_one(t[0], t[1], mode, out), tasks))
            count += len(tasks)
        print(f"\n{count} runs in {time.perf_counter() - start:.0f} s "
              f"({args.workers} workers)\n")
    rows, tables = score_jobs([j for j, _ in jobs], modes, out, bool(args.rescore))
    print_tables(rows, tables, verbose=args.verbose)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "tables": tables}, indent=1))


if __name__ == "__main__":
    main()
