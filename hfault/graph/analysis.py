"""Propagation questions asked of the coupling graph: which components spread curvature (hubs),
how a flagged component reaches the output (strongest path), and which components move together
(communities). Every answer is JSON-ready, deterministic, and tolerant of sparse or disconnected
graphs, because couplings are only measured among a subset of components."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import networkx as nx

from hfault.numbers import finite


def _kappa(attrs: Mapping[str, Any]) -> float:
    """An edge's usable κ: its ``weight``, or 0 when missing, non-finite or not positive."""
    w = finite(attrs.get("weight"))
    return w if w is not None and w > 0 else 0.0


def _kappa_graph(graph: nx.Graph, min_kappa: float = 0.0) -> nx.Graph:
    """The edges with κ > max(min_kappa, 0), rebuilt in sorted order so that algorithms whose
    tie-breaking follows insertion order give the same answer however the graph was built."""
    edges = []
    for a, b, attrs in graph.edges(data=True):
        k = _kappa(attrs)
        if k > 0 and k > min_kappa:
            u, v = sorted((a, b), key=str)
            edges.append((u, v, k))
    out = nx.Graph()
    out.add_nodes_from(sorted({n for u, v, _ in edges for n in (u, v)}, key=str))
    for u, v, k in sorted(edges, key=lambda e: (str(e[0]), str(e[1]))):
        out.add_edge(u, v, weight=k)
    return out


def _centrality(g: nx.Graph) -> dict[Any, float]:
    """Eigenvector centrality per connected component, each component's vector scaled by the
    square root of its share of the total κ. A whole-graph power iteration would give every
    component but the dominant one ~0; with this scaling the global vector still has unit norm and
    a connected graph gets exactly networkx's eigenvector centrality. A component whose iteration
    does not converge falls back to its nodes' weighted-degree share."""
    total = g.size(weight="weight")
    out: dict[Any, float] = {}
    if total <= 0:
        return out
    for nodes in nx.connected_components(g):
        sub = g.subgraph(sorted(nodes, key=str))
        share = sub.size(weight="weight") / total
        try:
            vec = nx.eigenvector_centrality(sub, max_iter=1000, tol=1e-10, weight="weight")
        except (nx.NetworkXException, ZeroDivisionError):
            deg = dict(sub.degree(weight="weight"))
            norm = math.sqrt(sum(d * d for d in deg.values())) or 1.0
            vec = {n: d / norm for n, d in deg.items()}
        for n, c in vec.items():
            out[n] = round(float(c) * math.sqrt(share), 9)
    return out


def hubs(graph: nx.Graph, top: int = 3) -> list[dict[str, Any]]:
    """The ``top`` components that propagate most: highest sum of κ over their couplings, with
    their (per-component) eigenvector centrality. Empty when no coupling has κ > 0."""
    g = _kappa_graph(graph)
    if g.number_of_edges() == 0:
        return []
    centrality = _centrality(g)
    rows = [
        {"name": n, "weighted_degree": float(d), "centrality": centrality.get(n, 0.0)}
        for n, d in g.degree(weight="weight")
    ]
    rows.sort(key=lambda r: (-r["weighted_degree"], str(r["name"])))
    return rows[: max(top, 0)]


def _layer(attrs: Mapping[str, Any]) -> int | None:
    layer = attrs.get("layer")
    return layer if isinstance(layer, int) and not isinstance(layer, bool) else None


def output_nodes(graph: nx.Graph) -> list[str]:
    """The output side for path questions: coupled nodes in the deepest measured layer, plus
    coupled nodes outside any layer and attention module (a classifier head)."""
    coupled = [n for n in graph.nodes if graph.degree(n) > 0]
    layers = [_layer(graph.nodes[n]) for n in coupled]
    deepest = max((la for la in layers if la is not None), default=None)
    out = set()
    for n, layer in zip(coupled, layers, strict=True):
        attrs = graph.nodes[n]
        deepest_layer = layer is not None and layer == deepest
        head = attrs.get("layer") is None and attrs.get("attention") is None
        if deepest_layer or head:
            out.add(n)
    return sorted(out, key=str)


def strongest_path(
    graph: nx.Graph, source: str, targets: Iterable[str]
) -> dict[str, Any] | None:
    """The path from ``source`` to one of ``targets`` whose product of κ is largest (Dijkstra on
    −log κ). A source that is itself a target gets its strongest path to another target; None when
    no target other than the source is reachable through edges with κ > 0."""
    g = _kappa_graph(graph)
    goals = {t for t in targets if t != source and t in g}
    if source not in g or not goals:
        return None
    for _, _, attrs in g.edges(data=True):
        attrs["cost"] = max(0.0, -math.log(attrs["weight"]))
    dist, paths = nx.single_source_dijkstra(g, source, weight="cost")
    reached = [t for t in goals if t in dist]
    if not reached:
        return None
    target = min(reached, key=lambda t: (dist[t], len(paths[t]), str(t)))
    path = paths[target]
    edges = []
    strength = 1.0
    for a, b in pairwise(path):
        k = g.edges[a, b]["weight"]
        strength *= k
        edges.append(
            {"source": a, "target": b, "kappa": k, "rho": finite(graph.edges[a, b].get("rho"))}
        )
    return {
        "source": source,
        "target": target,
        "path": list(path),
        "strength": strength,
        "edges": edges,
    }


def communities(graph: nx.Graph, min_kappa: float = 0.0) -> list[list[str]]:
    """Groups of tightly coupled components: greedy modularity communities (weighted by κ) over
    the couplings with κ > ``min_kappa`` (and always κ > 0); groups of one are dropped."""
    g = _kappa_graph(graph, min_kappa)
    if g.number_of_edges() == 0:
        return []
    groups = nx.community.greedy_modularity_communities(g, weight="weight")
    out = [sorted(c, key=str) for c in groups if len(c) >= 2]
    out.sort(key=lambda c: (-len(c), str(c[0])))
    return out


def propagation_summary(
    graph: nx.Graph, flagged: Sequence[str], top: int = 3
) -> dict[str, Any]:
    """Hubs, the strongest path from each flagged component (in the graph) to the output side,
    and communities: what the report shows under "how does this fault spread"."""
    outputs = output_nodes(graph)
    paths = []
    for name in dict.fromkeys(flagged):
        if name in graph:
            p = strongest_path(graph, name, outputs)
            if p is not None:
                paths.append(p)
    return {"hubs": hubs(graph, top), "paths": paths, "communities": communities(graph)}
