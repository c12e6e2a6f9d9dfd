"""The coupling graph of one snapshot: nodes are components (role, layer, metrics), edges are the
measured Hessian couplings κ (the weight) with their sign ρ. Kept as a networkx graph so that
propagation questions (hubs, paths, communities) are graph algorithms, not bespoke loops."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

NODE_METRICS = (
    "trace", "trace_se", "lambda_max", "lambda_min", "stability_ratio", "grad_norm",
)


def coupling_graph(
    components: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, Mapping[str, Any]],
    edges: Iterable[Mapping[str, Any]],
) -> nx.Graph:
    """Build the graph from report-level data (component dicts, one snapshot's metrics, edges)."""
    graph = nx.Graph()
    for comp in components:
        name = comp["name"]
        m = metrics.get(name, {})
        graph.add_node(
            name,
            role=comp["role"],
            layer=comp.get("layer"),
            attention=comp.get("attention"),
            **{k: m[k] for k in NODE_METRICS if k in m},
        )
    for e in edges:
        kappa = e["kappa"]
        graph.add_edge(
            e["source"],
            e["target"],
            weight=kappa if isinstance(kappa, float) and math.isfinite(kappa) else 0.0,
            **{k: e[k] for k in ("kappa", "kappa_se", "hfro", "hfro_se", "rho") if k in e},
        )
    return graph


def graph_to_json(graph: nx.Graph) -> dict[str, Any]:
    """``{"nodes": [{"name", ...}], "edges": [{"source", "target", "kappa", ...}]}``."""
    return {
        "nodes": [{"name": n, **attrs} for n, attrs in graph.nodes(data=True)],
        "edges": [
            {"source": a, "target": b, **{k: v for k, v in attrs.items() if k != "weight"}}
            for a, b, attrs in graph.edges(data=True)
        ],
    }


def graph_from_json(data: Mapping[str, Any]) -> nx.Graph:
    """Rebuild a snapshot's graph from its JSON form (for ``hfault report`` and exports)."""
    graph = nx.Graph()
    for node in data.get("nodes", []):
        graph.add_node(node["name"], **{k: v for k, v in node.items() if k != "name"})
    for e in data.get("edges", []):
        kappa = e.get("kappa")
        weight = kappa if isinstance(kappa, (int, float)) and math.isfinite(kappa) else 0.0
        attrs = {k: v for k, v in e.items() if k not in ("source", "target")}
        graph.add_edge(e["source"], e["target"], weight=weight, **attrs)
    return graph
