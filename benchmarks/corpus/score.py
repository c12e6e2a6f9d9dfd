"""How corpus runs are scored: killed mutants, detection, localization, warnings on healthy runs.

- **killed**: a mutant whose validation loss (training loss where the program has none) at the
  end is non-finite, or worse than its healthy twin's (same family, same seed) by at least
  ``KILL_SHARE`` of the twin's learning progress (first loss − final loss) and by ``KILL_ABS``;
  or whose mean training loss over the run is worse by as much (it learns measurably slower).
  Only killed mutants are scored: one that does no measurable harm is not a fault (DeepCrime's
  "killed" mutants). A mask mutant (``mask_drop``, ``mask_shift``) is killed the other way
  round too: a causal mask that leaks the future makes the loss *better* than its twin's by the
  same margin, which the program's own validation (run through the same leaky mask) cannot see.
  A mutant whose program crashed is *invalid* (the injection broke the program, not its
  training) and is listed apart.
- **detected**: the report has an error finding (``flagged``: a warning or an error).
- **top-k**: the mutated module (a part of it, or its direct parent) is among the first ``k``
  distinct components named by the ranked *warning and error* findings (infos do not count).
  Scored on killed mutants of module and loss operators; run operators (``label = run``) are
  scored on detection only.
- **diagnosis**: the first error finding names the cause: the mutated module for module and
  loss operators, a rule that ``diagnoses.toml`` lists for the run operator otherwise (what
  DEFault and DeepFD call diagnosis, against detection's "something is wrong").
- **healthy runs**: the share with an error finding, and warnings (and infos) per run.
- **rule precision**: of a rule's warning and error findings on healthy runs and killed
  mutants, the share that are right: on a killed mutant, naming its label (or, for a run
  operator or a run-level finding, any finding on it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import tomllib
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from samples import matches

DIAGNOSES: dict[str, list[str]] = tomllib.loads(
    (Path(__file__).with_name("diagnoses.toml")).read_text())["run"]

LEAK_OPS = ("mask_drop", "mask_shift")
KILL_SHARE = 0.1
KILL_ABS = 0.02
SPLIT_FILE = Path(__file__).resolve().parent / "split.toml"


def split_parts() -> tuple[str, ...]:
    """split.toml's parts in file order (the tables' column order): a part added there is scored
    without touching this module."""
    return tuple(tomllib.loads(SPLIT_FILE.read_text()))


@dataclass(frozen=True)
class Job:
    family: str
    split: str
    seed: int
    op: str | None
    target: str | None
    factor: float | None
    label: str
    steps: int
    index: int = -1

    @property
    def healthy(self) -> bool:
        return self.op is None

    @property
    def key(self) -> str:
        """File stem of the job's results; the mutant's hash keeps a saved run from being read
        as another mutant after a manifest changes."""
        if self.op is None:
            return f"{self.family}.s{self.seed}.healthy"
        digest = hashlib.sha1(f"{self.op}|{self.target}|{self.factor}".encode()).hexdigest()[:6]
        return f"{self.family}.s{self.seed}.m{self.index:02d}-{self.op}-{digest}"

    @property
    def twin_key(self) -> str:
        return f"{self.family}.s{self.seed}.healthy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def saved(path: Path) -> bool:
    """Whether a result file was saved, plain or gzipped (the committed results are gzipped)."""
    return path.exists() or path.with_name(path.name + ".gz").exists()


def load(path: Path) -> Any:
    if path.exists():
        return json.loads(path.read_text())
    return json.loads(gzip.decompress(path.with_name(path.name + ".gz").read_bytes()))


def _num(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x


def final_loss(result: dict | None) -> float | None:
    """The program's end-of-run loss (validation where it has one); NaN when non-finite."""
    if not result:
        return None
    for key in ("val_loss", "train_loss"):
        x = _num(result.get(key))
        if x is not None:
            return x
    return float("nan")


def _meta(out: Path, key: str, modes: list[str]) -> dict | None:
    for mode in ("first-order", *modes):
        path = out / f"{key}.{mode}.run.json"
        if saved(path):
            return load(path)
    return None


def mean_training_loss(out: Path, key: str) -> float | None:
    """Mean of the training losses the first-order report recorded (how fast it learned)."""
    path = out / f"{key}.first-order.json"
    if not saved(path):
        return None
    points = load(path).get("timeline", {}).get("loss", [])
    values = [_num(p.get("loss")) for p in points]
    values = [v for v in values if v is not None]
    if not values:
        return None
    return sum(values) / len(values) if all(math.isfinite(v) for v in values) else math.nan


def kill_status(job: Job, out: Path, modes: list[str]) -> tuple[str, float | None]:
    """('killed' | 'survived' | 'invalid' | 'missing', harm as a share of the twin's progress).

    Harm is the larger of two shares of the healthy twin's learning progress (first loss − its
    final loss): how much worse the final loss is, and how much worse the mean training loss over
    the run is (a fault that only slows learning down on a task the model solves anyway)."""
    mine, twin = _meta(out, job.key, modes), _meta(out, job.twin_key, modes)
    if mine is None or twin is None:
        return "missing", None
    if mine["result"] is None:
        return "invalid", None
    loss, ref = final_loss(mine["result"]), final_loss(twin["result"])
    first = _num((twin["result"] or {}).get("first_loss"))
    if ref is None or first is None or not math.isfinite(ref):
        return "invalid", None
    if loss is None or not math.isfinite(loss):
        return "killed", math.inf
    progress = max(first - ref, 1e-9)
    harm = (loss - ref) / progress
    killed = harm >= KILL_SHARE and loss - ref >= KILL_ABS
    auc, auc_ref = mean_training_loss(out, job.key), mean_training_loss(out, job.twin_key)
    if auc is not None and auc_ref is not None and math.isfinite(auc_ref):
        if not math.isfinite(auc):
            return "killed", math.inf
        auc_harm = (auc - auc_ref) / progress
        if abs(auc_harm) > abs(harm):
            harm = auc_harm
        killed = killed or (auc_harm >= KILL_SHARE and auc - auc_ref >= KILL_ABS)
    if job.op in LEAK_OPS:  # a leak that lets tokens see the future makes the loss too good
        killed = killed or (harm <= -KILL_SHARE and ref - loss >= KILL_ABS)
    return ("killed" if killed else "survived"), harm


_JUDGE: Any = None


def rejudge(report: dict) -> dict:
    """The report's findings recomputed with the current rule files (rules are loaded once)."""
    global _JUDGE
    from hfault.report.model import rank
    from hfault.rules import evaluate, load_rules

    if _JUDGE is None:
        _JUDGE = load_rules()
    findings = [f.to_dict() for f in rank(evaluate(report, _JUDGE).findings)]
    return {**report, "findings": findings}


def _ranked(report: dict) -> list[str]:
    seen: list[str] = []
    for f in report.get("findings", []):
        name = f.get("component")
        if f.get("severity") in ("error", "warning") and name and name not in seen:
            seen.append(name)
    return seen


def score_jobs(jobs: list[Job], modes: list[str], out: Path,
               rejudge_reports: bool = False) -> tuple[list[dict], dict]:
    rows = []
    for job in jobs:
        status, harm = ("healthy", None) if job.healthy else kill_status(job, out, modes)
        for mode in modes:
            path = out / f"{job.key}.{mode}.json"
            meta_path = out / f"{job.key}.{mode}.run.json"
            if not saved(path):
                rows.append({**job.to_dict(), "key": job.key, "mode": mode,
                             "status": "no-report" if saved(meta_path) else "missing"})
                continue
            report = load(path)
            if rejudge_reports:
                report = rejudge(report)
            findings = report.get("findings", [])
            sev = [f["severity"] for f in findings]
            comps = _ranked(report)
            rank = None
            if job.label and job.label != "run":
                rank = next((i + 1 for i, c in enumerate(comps)
                             if names_label(c, job.label)), None)
            meta = load(meta_path) if saved(meta_path) else {}
            first_error = next((f for f in findings if f["severity"] == "error"), None)
            rows.append({
                **job.to_dict(), "key": job.key, "mode": mode, "status": status,
                "harm": harm, "errors": sev.count("error"), "warnings": sev.count("warning"),
                "infos": sev.count("info"), "rank": rank, "first": comps[0] if comps else None,
                "diagnosed": _diagnoses(job, first_error),
                "seconds": meta.get("seconds"),
                "findings": [(f["rule"], f["severity"], f.get("component")) for f in findings],
            })
    tables = {}
    # split.toml's parts first, then any other part the jobs carry (another zoo's split file)
    for split in dict.fromkeys([*split_parts(), *(j.split for j in jobs)]):
        for mode in modes:
            tables[f"{split}/{mode}"] = summarize(
                [r for r in rows if r["split"] == split and r["mode"] == mode])
    return rows, tables


def names_label(component: str, label: str) -> bool:
    """Whether a finding's component names a mutant's label: one of its ``|``-separated
    modules, a part of one, or the module directly enclosing one (``samples.matches``)."""
    return matches(component, tuple(label.split("|")))


def _diagnoses(job: Job, finding: dict | None) -> bool:
    """Whether ``finding`` (a report's first error) names the mutant's cause."""
    if finding is None or job.healthy:
        return False
    if job.label == "run":
        return finding["rule"] in DIAGNOSES.get(job.op or "", ())
    component = finding.get("component")
    return bool(component) and names_label(component, job.label)


def _pct(hits: list[bool]) -> str:
    if not hits:
        return "-"
    return f"{sum(hits)}/{len(hits)} ({100 * sum(hits) / len(hits):.0f}%)"


def _finding_right(row: dict, finding: tuple) -> bool | None:
    """Whether a warning/error finding is right (None: the run is not scored)."""
    _rule, severity, component = finding
    if severity not in ("error", "warning"):
        return None
    if row["status"] == "healthy":
        return False
    if row["status"] != "killed":
        return None
    if row["label"] == "run" or not component:
        return True
    return names_label(component, row["label"])


def summarize(rows: list[dict]) -> dict[str, Any]:
    healthy = [r for r in rows if r["status"] == "healthy"]
    killed = [r for r in rows if r["status"] == "killed"]
    local = [r for r in killed if r["label"] not in ("run", "")]
    per_rule: dict[str, list[bool]] = defaultdict(list)
    for r in healthy + killed:
        for f in r["findings"]:
            right = _finding_right(r, f)
            if right is not None:
                per_rule[f[0]].append(right)
    return {
        "runs": len([r for r in rows if r["status"] not in ("missing",)]),
        "healthy runs": len(healthy),
        "killed mutants": len(killed),
        "survived (not counted)": len([r for r in rows if r["status"] == "survived"]),
        "invalid (crashed)": len([r for r in rows if r["status"] in ("invalid", "no-report")]),
        "detection (error)": _pct([r["errors"] > 0 for r in killed]),
        "flagged (warning+)": _pct([r["errors"] + r["warnings"] > 0 for r in killed]),
        "diagnosis (1st error right)": _pct([bool(r.get("diagnosed")) for r in killed]),
        "top-1": _pct([r["rank"] == 1 for r in local]),
        "top-3": _pct([r["rank"] is not None and r["rank"] <= 3 for r in local]),
        "error on healthy": _pct([r["errors"] > 0 for r in healthy]),
        "warnings per healthy run": (f"{sum(r['warnings'] for r in healthy) / len(healthy):.2f}"
                                     if healthy else "-"),
        "infos per healthy run": (f"{sum(r['infos'] for r in healthy) / len(healthy):.2f}"
                                  if healthy else "-"),
        "seconds (total)": f"{sum(r.get('seconds') or 0 for r in rows):.0f}",
        "rule precision": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(per_rule.items())},
    }


def print_tables(rows: list[dict], tables: dict, verbose: bool = False) -> None:
    if verbose:
        for r in rows:
            if r["status"] in ("missing",):
                continue
            rules = " ".join(f"{f[0]}{f[1][0].upper()}:{f[2] or '-'}" for f in r["findings"]
                             if f[1] != "info")
            harm = "" if r.get("harm") is None else f"{r['harm']:.2f}"
            print(f"{r['key']:50} {r['mode']:11} {r['status']:8} {harm:>6} "
                  f"rank={r.get('rank') or '-'} label={r['label'] or '-'} | {rules}")
        print()
    keys = [k for k in tables if tables[k]["runs"]]
    if not keys:
        print("nothing scored")
        return
    print(f"{'':28}" + "".join(f"{k:>26}" for k in keys))
    for field_name in tables[keys[0]]:
        if field_name == "rule precision":
            continue
        print(f"{field_name:28}" + "".join(f"{tables[k][field_name]!s:>26}" for k in keys))
    print("\nrule precision (right / warning+error findings on healthy and killed runs)")
    rules = sorted({r for k in keys for r in tables[k]["rule precision"]})
    for rule in rules:
        print(f"  {rule:26}" + "".join(
            f"{tables[k]['rule precision'].get(rule, '-'):>26}" for k in keys))
