"""Build a report-shaped dict from a compact rule fixture (tests/rules/fixtures/HFxxx.toml).

A fixture names only what a rule reads; everything else gets a neutral default. Scalars are
broadcast over the snapshot steps, lists give one value per step (``"-"``: not measured at that
step; TOML has no null). ``base = "fires"`` makes a
fixture a variant of another one: its components' metrics, attention and edges override the base
ones by name, so a must-not-fire fixture can be the near miss of the must-fire one.
"""

from __future__ import annotations

import copy
from typing import Any


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key == "base":
            continue
        if key == "components":
            by_name = {c["name"]: c for c in out.get("components", [])}
            for comp in value:
                if comp["name"] in by_name:
                    target = by_name[comp["name"]]
                    target.update({k: v for k, v in comp.items() if k != "metrics"})
                    target.setdefault("metrics", {}).update(comp.get("metrics", {}))
                else:
                    out.setdefault("components", []).append(copy.deepcopy(comp))
        elif key == "edges":
            by_pair = {(e["source"], e["target"]): e for e in out.get("edges", [])}
            for edge in value:
                pair = (edge["source"], edge["target"])
                if pair in by_pair:
                    by_pair[pair].update(edge)
                else:
                    out.setdefault("edges", []).append(copy.deepcopy(edge))
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(fixtures: dict[str, Any], name: str) -> dict[str, Any]:
    spec = fixtures[name]
    if "base" in spec:
        return _merge(resolve(fixtures, spec["base"]), spec)
    return spec


def _at(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, list) else value


def build(spec: dict[str, Any]) -> dict[str, Any]:
    steps = list(spec.get("steps", [1]))
    components = []
    for comp in spec.get("components", []):
        components.append({
            "name": comp["name"],
            "role": comp.get("role", "other"),
            "numel": comp.get("numel", 1000),
            "source": {"file": "model.py", "line": comp.get("line", 10)},
            "module_type": comp.get("module_type", "Linear"),
            "attention": comp.get("attention"),
            "attention_kind": "self" if comp.get("attention") else None,
            "layer": comp.get("layer"),
            "optimizer": 0,
            "parameters": comp.get("parameters", ["weight"]),
            "access": f'list(model.get_submodule("{comp["name"]}").parameters())',
            "init": comp.get("init"),
            "table": comp.get("table", False),
        })
    snapshots = []
    curvature_error = spec.get("curvature_error")
    for i, step in enumerate(steps):
        metrics = {
            c["name"]: {k: _at(v, i) for k, v in c.get("metrics", {}).items()
                        if _at(v, i) is not None}
            for c in spec.get("components", [])
        }
        snap: dict[str, Any] = {"step": step, "loss": None, "metrics": metrics}
        attention = {m: {k: _at(v, i) for k, v in stats.items() if _at(v, i) != "-"}
                     for m, stats in spec.get("attention", {}).items()}
        if attention:
            snap["attention"] = attention
        edges = [
            {"source": e["source"], "target": e["target"],
             **{k: _at(v, i) for k, v in e.items() if k not in ("source", "target")}}
            for e in spec.get("edges", [])
        ]
        if edges:
            snap["graph"] = {"nodes": [{"name": c["name"]} for c in components], "edges": edges}
        if curvature_error and curvature_error["step"] == step:
            snap["curvature"] = {"seconds": 0.1, "error": curvature_error["error"],
                                 "blocked": curvature_error.get("blocked", [])}
        snapshots.append(snap)
    losses = spec.get("loss", [])
    optimizer = spec.get("optimizer", {"class": "AdamW", "lr": 0.001})
    return {
        "run": {
            "script": "train.py",
            "status": spec.get("status", "completed"),
            "steps": max([*steps, len(losses)]),
            "optimizers": [{"index": 0, "param_groups": 1, "source": {"file": "train.py",
                                                                        "line": 42},
                            **optimizer}],
        },
        "components": components,
        "snapshots": snapshots,
        "timeline": {"loss": [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]},
        "numerics": spec.get("numerics", []),
        "loss_inputs": spec.get("loss_inputs", []),
        "frozen": spec.get("frozen", []),
        "label_fit": spec.get("label_fit", []),
        "next_token": spec.get("next_token", []),
        "sample_mixing": spec.get("sample_mixing"),
        "param_reach": spec.get("param_reach"),
    }
