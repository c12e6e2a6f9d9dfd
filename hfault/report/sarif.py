"""SARIF 2.1.0 output, shaped for GitHub code scanning, so hfault findings show up as alerts on
the training script in pull requests. Built from the JSON report dict (not the typed objects) so
that it can also convert a report file written earlier."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hfault.fixes.dedupe import relation_text
from hfault.numbers import encode

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
INFORMATION_URI = "https://github.com/hfault/hfault"
FINGERPRINT_KEY = "hfault/v1"
SRCROOT = "%SRCROOT%"

LEVELS = {"error": "error", "warning": "warning", "info": "note"}
"""hfault severity → SARIF level (SARIF has no "info"; "note" is its lowest problem level)."""

RANK_BANDS = {"error": 70.0, "warning": 40.0, "info": 10.0}
"""Lower bound of each severity's SARIF rank band, each 30 wide (see :func:`sarif_rank`)."""
RANK_SPAN = 30.0


def sarif_rank(severity: str, position: int, count: int) -> float:
    """SARIF ``rank`` (0–100, higher = more important) of the ``position``-th (0-based) of
    ``count`` findings of one severity, in report order:

        rank = band[severity] + 30 · (1 − position / count)

    with band = 70 (error), 40 (warning), 10 (info). Bands are disjoint, so every error outranks
    every warning, and within a band the report's order is kept: the first error is 100, the last
    of n errors is 70 + 30/n. Unknown severities rank as warnings."""
    base = RANK_BANDS.get(severity, RANK_BANDS["warning"])
    count = max(count, 1)
    position = min(max(position, 0), count - 1)
    return round(base + RANK_SPAN * (1.0 - position / count), 2)


def _json_safe(obj: Any) -> Any:
    """Plain JSON: non-finite floats as "nan"/"inf"/"-inf", tuples/sets as lists, keys as str,
    anything else unknown as its str()."""
    if isinstance(obj, float):
        return encode(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_json_safe(v) for v in obj), key=str)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def _level(severity: Any) -> str:
    return LEVELS.get(str(severity), "warning")


# ------------------------------------------------------------------ rules
def _descriptor(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A reportingDescriptor for one catalogue rule: GitHub shows shortDescription in the alert
    list, help (markdown) on the alert page, and uses the level for the default severity."""
    rule_id = str(rule["id"])
    name = str(rule.get("name") or rule_id)
    summary = str(rule.get("summary") or name)
    rationale = str(rule.get("rationale") or summary)
    help_uri = rule.get("help_uri")
    markdown = f"**{summary}**\n\n{rationale}"
    if help_uri:
        markdown += f"\n\n[Documentation]({help_uri})"
    tags = ["ml", "training"]
    category = rule.get("category")
    if category:
        tags.append(str(category))
    out: dict[str, Any] = {
        "id": rule_id,
        "name": name,
        "shortDescription": {"text": summary},
        "fullDescription": {"text": rationale},
        "help": {"text": f"{summary}\n\n{rationale}", "markdown": markdown},
        "defaultConfiguration": {"level": _level(rule.get("severity"))},
        "properties": {"tags": tags},
    }
    if help_uri:
        out["helpUri"] = str(help_uri)
    return out


def _minimal_descriptor(finding: Mapping[str, Any]) -> dict[str, Any]:
    """A descriptor for a rule that fired but is not in the catalogue (a user rule file that was
    edited after the run, say): results must still point at a rule."""
    rule_id = str(finding["rule"])
    name = str(finding.get("name") or rule_id)
    return {
        "id": rule_id,
        "name": name,
        "shortDescription": {"text": name},
        "defaultConfiguration": {"level": _level(finding.get("severity"))},
        "properties": {"tags": ["ml", "training"]},
    }


# ------------------------------------------------------------------ locations
def _artifact(path: str | os.PathLike[str], cwd: Path) -> dict[str, Any]:
    """An artifactLocation: relative to %SRCROOT% (the working directory) when the file is under
    it, so GitHub can map it onto the repository; otherwise an absolute file:// URI."""
    p = Path(path)
    absolute = Path(os.path.normpath(p if p.is_absolute() else cwd / p))
    for candidate, root in ((absolute, cwd), (absolute.resolve(), cwd.resolve())):
        try:
            rel = candidate.relative_to(root)
        except ValueError:
            continue
        if rel.parts:
            return {"uri": quote(rel.as_posix(), safe="/"), "uriBaseId": SRCROOT}
    return {"uri": absolute.as_uri()}


def _location(finding: Mapping[str, Any], script: str, cwd: Path) -> dict[str, Any]:
    """Exactly one location (GitHub rejects results without one): the finding's source line, or
    line 1 of the training script when the finding has no place in the code."""
    loc = finding.get("location") or {}
    path = loc.get("path") or script
    line = loc.get("line")
    start = line if isinstance(line, int) and not isinstance(line, bool) and line >= 1 else 1
    out: dict[str, Any] = {
        "physicalLocation": {
            "artifactLocation": _artifact(path, cwd),
            "region": {"startLine": start},
        }
    }
    component = finding.get("component")
    if component:
        out["logicalLocations"] = [{"fullyQualifiedName": str(component), "kind": "member"}]
    return out


def _fingerprint(finding: Mapping[str, Any]) -> str:
    """The report's fingerprint; for an older report without one, a hash of what identifies the
    finding (rule, component) so that alerts still track across runs."""
    fp = finding.get("fingerprint")
    if isinstance(fp, str) and fp:
        return fp
    key = f"{finding.get('rule')}|{finding.get('component') or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# ------------------------------------------------------------------ results
def _message(finding: Mapping[str, Any]) -> str:
    text = str(finding.get("message") or finding.get("name") or finding.get("rule"))
    fix, relation = finding.get("fix"), relation_text(finding)
    if relation:
        text = f"{text} {relation[0].upper()}{relation[1:]}."
    elif isinstance(fix, Mapping) and fix.get("summary"):
        text = f"{text} Fix: {fix['summary']}"
    return text


def _result(
    finding: Mapping[str, Any], rule_index: int, rank: float, script: str, cwd: Path
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "component": finding.get("component"),
        "step": finding.get("step"),
        "score": _json_safe(finding.get("score")),
        "evidence": _json_safe(finding.get("evidence") or {}),
    }
    if finding.get("related"):
        props["related"] = _json_safe(finding["related"])
    if finding.get("fix"):
        props["fix"] = _json_safe(finding["fix"])
    for key, name in (("consequence_of", "consequenceOf"), ("fix_of", "fixOf"),
                      ("relation", "relation")):
        if finding.get(key) is not None:
            props[name] = _json_safe(finding[key])
    return {
        "ruleId": str(finding["rule"]),
        "ruleIndex": rule_index,
        "level": _level(finding.get("severity")),
        "message": {"text": _message(finding)},
        "rank": rank,
        "locations": [_location(finding, script, cwd)],
        "partialFingerprints": {FINGERPRINT_KEY: _fingerprint(finding)},
        "properties": props,
    }


def _ranks(findings: Sequence[Mapping[str, Any]]) -> list[float]:
    """The SARIF rank of each finding, by its position among findings of its severity ordered by
    the report's rank (then list order, for unranked findings)."""
    order = sorted(
        range(len(findings)),
        key=lambda i: (
            r if isinstance(r := findings[i].get("rank"), int) and r > 0 else math.inf,
            i,
        ),
    )
    counts: dict[str, int] = {}
    for f in findings:
        counts[str(f.get("severity"))] = counts.get(str(f.get("severity")), 0) + 1
    seen: dict[str, int] = {}
    ranks = [0.0] * len(findings)
    for i in order:
        sev = str(findings[i].get("severity"))
        ranks[i] = sarif_rank(sev, seen.get(sev, 0), counts[sev])
        seen[sev] = seen.get(sev, 0) + 1
    return ranks


def _invocation(run: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the training script ran to the end; a crash (or an ``os._exit``) is a tool
    execution notification so that code scanning shows the analysis as incomplete rather than
    clean."""
    status = run.get("status")
    properties = {"status": status, "script": run.get("script"), "argv": run.get("argv") or []}
    if run.get("world_size"):
        properties.update(world_size=run["world_size"], rank=run.get("rank"))
    out: dict[str, Any] = {
        "executionSuccessful": status not in ("crashed", "exited"),
        "properties": _json_safe(properties),
    }
    if status in ("crashed", "exited"):
        error = run.get("error") or {}
        kind = error.get("type") or "Error"
        detail = error.get("message") or "the training script crashed"
        out["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": f"{kind}: {detail}"}}
        ]
    return out


def to_sarif(report: Mapping[str, Any], rules: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The SARIF 2.1.0 log of one hfault report: one run, every catalogue rule as a descriptor,
    one result per finding. Relative URIs are against the current working directory."""
    cwd = Path.cwd()
    run_info = report.get("run") or {}
    script = str(run_info.get("script") or "")
    tool = report.get("tool") or {}
    findings = list(report.get("findings") or [])

    descriptors: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for rule in rules:
        if str(rule["id"]) not in index:
            index[str(rule["id"])] = len(descriptors)
            descriptors.append(_descriptor(rule))
    for f in findings:
        if str(f["rule"]) not in index:
            index[str(f["rule"])] = len(descriptors)
            descriptors.append(_minimal_descriptor(f))

    ranks = _ranks(findings)
    results = [
        _result(f, index[str(f["rule"])], ranks[i], script, cwd) for i, f in enumerate(findings)
    ]
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "hfault",
                "version": str(tool.get("version") or "0"),
                "informationUri": INFORMATION_URI,
                "rules": descriptors,
            }
        },
        "invocations": [_invocation(run_info)],
        "results": results,
    }
    uses_srcroot = any(
        loc["physicalLocation"]["artifactLocation"].get("uriBaseId") == SRCROOT
        for r in results
        for loc in r["locations"]
    )
    if uses_srcroot:
        root = cwd.as_uri()
        run["originalUriBaseIds"] = {SRCROOT: {"uri": root if root.endswith("/") else root + "/"}}
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def write_sarif(
    report: Mapping[str, Any], rules: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> None:
    """Write :func:`to_sarif` as indented JSON (strict: a NaN would be rejected by GitHub)."""
    text = json.dumps(to_sarif(report, rules), indent=2, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
