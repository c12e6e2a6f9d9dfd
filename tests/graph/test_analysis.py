"""Propagation queries on small hand-built coupling graphs whose answers are known by hand."""

from __future__ import annotations

import json
import math
import random

import networkx as nx
import pytest

from hfault.graph import (
    communities,
    coupling_graph,
    hubs,
    output_nodes,
    propagation_summary,
    strongest_path,
    write_graphml,
)


def _graph(edges: list[tuple[str, str, float]], **nodes: dict) -> nx.Graph:
    """Edges as (a, b, κ); node attributes default to an unlayered "other" component."""
    comps = [
        {"name": n, "role": "other", "layer": None, "attention": None, **nodes.get(n, {})}
        for n in dict.fromkeys([*nodes, *(x for a, b, _ in edges for x in (a, b))])
    ]
    return coupling_graph(
        comps,
        {},
        [{"source": a, "target": b, "kappa": k, "rho": 0.5} for a, b, k in edges],
    )


def _chain() -> nx.Graph:
    return _graph(
        [("q0", "k0", 0.9), ("k0", "v1", 0.8), ("q0", "v1", 0.1)],
        q0={"role": "query", "layer": 0, "attention": "enc.0.attn"},
        k0={"role": "key", "layer": 0, "attention": "enc.0.attn"},
        v1={"role": "value", "layer": 1, "attention": "enc.1.attn"},
    )


# ------------------------------------------------------------------ strongest_path
def test_strongest_path_prefers_strong_indirect_route_over_weak_direct_edge() -> None:
    path = strongest_path(_chain(), "q0", ["v1"])
    assert path is not None
    assert path["source"] == "q0"
    assert path["target"] == "v1"
    assert path["path"] == ["q0", "k0", "v1"]
    assert path["strength"] == pytest.approx(0.72)
    assert [(e["source"], e["target"], e["kappa"]) for e in path["edges"]] == [
        ("q0", "k0", 0.9),
        ("k0", "v1", 0.8),
    ]
    assert all(e["rho"] == 0.5 for e in path["edges"])


def test_strongest_path_takes_the_direct_edge_when_it_is_stronger() -> None:
    g = _graph([("a", "b", 0.5), ("b", "c", 0.5), ("a", "c", 0.3)])
    path = strongest_path(g, "a", ["c"])
    assert path is not None
    assert path["path"] == ["a", "c"]
    assert path["strength"] == pytest.approx(0.3)


def test_strongest_path_picks_the_best_of_several_targets() -> None:
    g = _graph([("s", "x", 0.2), ("s", "m", 0.9), ("m", "y", 0.9)])
    path = strongest_path(g, "s", ["x", "y"])
    assert path is not None
    assert path["target"] == "y"
    assert path["strength"] == pytest.approx(0.81)


def test_source_that_is_a_target_goes_to_another_target_or_none() -> None:
    g = _chain()
    assert strongest_path(g, "v1", ["v1"]) is None
    path = strongest_path(g, "v1", ["v1", "q0"])
    assert path is not None
    assert path["path"] == ["v1", "k0", "q0"]
    assert path["strength"] == pytest.approx(0.72)


def test_strongest_path_skips_zero_and_non_finite_couplings() -> None:
    g = _graph([("a", "b", 0.9), ("b", "c", 0.0), ("b", "d", float("nan"))])
    assert strongest_path(g, "a", ["c"]) is None
    assert strongest_path(g, "a", ["d"]) is None
    assert strongest_path(g, "a", ["b"])["strength"] == pytest.approx(0.9)
    assert strongest_path(g, "missing", ["b"]) is None
    assert strongest_path(g, "a", ["missing"]) is None


def test_non_finite_rho_on_a_path_edge_becomes_none() -> None:
    g = nx.Graph()
    g.add_edge("a", "b", weight=0.7, kappa=0.7, rho=float("nan"))
    g.add_edge("b", "c", weight=0.6, kappa=0.6, rho=None)
    path = strongest_path(g, "a", ["c"])
    assert [e["rho"] for e in path["edges"]] == [None, None]
    json.dumps(path, allow_nan=False)


# ------------------------------------------------------------------ hubs
def _star() -> nx.Graph:
    return _graph(
        [("h", "a", 0.9), ("h", "b", 0.8), ("h", "c", 0.7), ("a", "b", 0.1), ("d", "e", 0.5)]
    )


def test_hubs_rank_by_weighted_degree() -> None:
    top = hubs(_star(), top=3)
    assert [h["name"] for h in top] == ["h", "a", "b"]
    assert [h["weighted_degree"] for h in top] == pytest.approx([2.4, 1.0, 0.9])
    assert top[0]["centrality"] > top[1]["centrality"] > top[2]["centrality"] > 0
    assert len(hubs(_star(), top=10)) == 6


def test_hub_ties_break_by_name() -> None:
    g = _graph([("z", "y", 0.5), ("b", "a", 0.5)])
    assert [h["name"] for h in hubs(g, top=4)] == ["a", "b", "y", "z"]


def test_centrality_of_a_connected_graph_is_networkx_eigenvector_centrality() -> None:
    g = _graph([("h", "a", 0.9), ("h", "b", 0.8), ("h", "c", 0.7), ("a", "b", 0.1)])
    expected = nx.eigenvector_centrality(g, weight="weight", tol=1e-12, max_iter=5000)
    got = {h["name"]: h["centrality"] for h in hubs(g, top=10)}
    assert got == pytest.approx(expected, abs=1e-6)


def test_centrality_on_a_disconnected_graph_is_finite_and_unit_norm() -> None:
    top = hubs(_star(), top=10)
    values = [h["centrality"] for h in top]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert math.fsum(v * v for v in values) == pytest.approx(1.0, abs=1e-6)
    # The lone pair d–e carries 0.5 of 3.0 total κ: each node gets sqrt(1/2 · 0.5/3.0).
    by_name = {h["name"]: h["centrality"] for h in top}
    assert by_name["d"] == pytest.approx(math.sqrt(0.5 * 0.5 / 3.0), abs=1e-6)


def test_hubs_ignore_zero_coupling_edges() -> None:
    g = _graph([("a", "b", 0.0), ("c", "d", float("nan"))])
    assert hubs(g) == []


# ------------------------------------------------------------------ output_nodes
def test_output_nodes_are_the_deepest_coupled_layer_plus_the_head() -> None:
    g = _graph(
        [("q0", "k0", 0.5), ("k0", "v1", 0.5), ("v1", "o1", 0.5), ("o1", "head", 0.4),
         ("q0", "xattn", 0.3)],
        q0={"layer": 0, "attention": "enc.0.attn"},
        k0={"layer": 0, "attention": "enc.0.attn"},
        v1={"layer": 1, "attention": "enc.1.attn"},
        o1={"layer": 1, "attention": "enc.1.attn"},
        deep={"layer": 5, "attention": "enc.5.attn"},  # deeper, but never coupled
        xattn={"layer": None, "attention": "dec.cross"},  # no layer, but inside attention
        head={"layer": None, "attention": None},
    )
    assert output_nodes(g) == ["head", "o1", "v1"]
    path = strongest_path(g, "q0", output_nodes(g))
    assert path["target"] == "v1"
    assert path["path"] == ["q0", "k0", "v1"]


def test_output_nodes_of_an_edgeless_graph_is_empty() -> None:
    g = _graph([], a={"layer": 3})
    assert output_nodes(g) == []


# ------------------------------------------------------------------ communities
def test_two_tight_triangles_bridged_by_a_weak_edge_are_two_communities() -> None:
    edges = [
        ("a", "b", 0.9), ("b", "c", 0.9), ("a", "c", 0.9),
        ("d", "e", 0.9), ("e", "f", 0.9), ("d", "f", 0.9), ("e", "g", 0.8), ("d", "g", 0.8),
        ("c", "d", 0.05),
    ]
    g = _graph(edges)
    assert communities(g) == [["d", "e", "f", "g"], ["a", "b", "c"]]
    # Dropping the bridge (κ ≤ 0.1) gives the same groups; a high threshold leaves none of size ≥ 2
    assert communities(g, min_kappa=0.1) == [["d", "e", "f", "g"], ["a", "b", "c"]]
    assert communities(g, min_kappa=0.95) == []


# ------------------------------------------------------------------ robustness & determinism
def test_no_edge_graph_does_not_raise() -> None:
    g = _graph([], a={"layer": 0}, b={"layer": 1})
    assert hubs(g) == []
    assert communities(g) == []
    assert strongest_path(g, "a", ["b"]) is None
    assert propagation_summary(g, ["a", "b"]) == {"hubs": [], "paths": [], "communities": []}
    assert propagation_summary(nx.Graph(), []) == {"hubs": [], "paths": [], "communities": []}


def test_answers_do_not_depend_on_insertion_order() -> None:
    edges = [
        ("a", "b", 0.9), ("b", "c", 0.9), ("a", "c", 0.9), ("c", "d", 0.3), ("d", "e", 0.9),
        ("e", "f", 0.9), ("d", "f", 0.9), ("x", "y", 0.4),
    ]
    base = propagation_summary(_graph(edges), ["a", "x"], top=10)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = [(b, a, k) if rng.random() < 0.5 else (a, b, k) for a, b, k in edges]
        rng.shuffle(shuffled)
        assert propagation_summary(_graph(shuffled), ["a", "x"], top=10) == base


def test_summary_is_json_ready_and_skips_unknown_or_unreachable_flags() -> None:
    g = _chain()
    g.add_node("lonely", role="other", layer=0, attention=None)
    g.add_edge("k0", "v1", weight=0.8, kappa=0.8, rho=float("nan"))
    summary = propagation_summary(g, ["q0", "q0", "nope", "lonely"], top=2)
    json.dumps(summary, allow_nan=False)
    assert [p["source"] for p in summary["paths"]] == ["q0"]
    assert summary["paths"][0]["path"] == ["q0", "k0", "v1"]
    assert summary["paths"][0]["edges"][1]["rho"] is None
    assert [h["name"] for h in summary["hubs"]] == ["k0", "q0"]
    assert summary["communities"] == [["k0", "q0", "v1"]]


# ------------------------------------------------------------------ GraphML
def test_graphml_round_trip_with_none_nan_and_list_attributes(tmp_path) -> None:
    g = nx.Graph()
    g.add_node("q0", role="query", layer=0, attention="enc.0.attn", trace=float("nan"),
               stability_ratio=None, tags=["a", "b"], extra={"k": 1})
    g.add_node("head", role="other", layer=None, attention=None, trace=2.5)
    g.add_node("k0", role="key", layer=1, attention="enc.0.attn", trace=3)  # int among floats
    g.add_edge("q0", "head", weight=0.7, kappa=0.7, kappa_se=None, rho=float("nan"))
    g.add_edge("q0", "k0", weight=0.0, kappa=float("nan"), kappa_se=0.01, rho=-0.3)
    path = tmp_path / "graph.graphml"

    write_graphml(g, path)
    back = nx.read_graphml(path)

    assert g.nodes["q0"]["stability_ratio"] is None  # the input graph is left alone
    assert g.nodes["q0"]["tags"] == ["a", "b"]
    assert set(back.nodes) == {"q0", "head", "k0"}
    q0 = back.nodes["q0"]
    assert q0["role"] == "query"
    assert q0["layer"] == 0 and isinstance(q0["layer"], int)
    assert math.isnan(q0["trace"])
    assert "stability_ratio" not in q0
    assert json.loads(q0["tags"]) == ["a", "b"]
    assert json.loads(q0["extra"]) == {"k": 1}
    assert "layer" not in back.nodes["head"] and "attention" not in back.nodes["head"]
    assert back.nodes["k0"]["trace"] == 3.0
    e = back.edges["q0", "head"]
    assert e["weight"] == pytest.approx(0.7)
    assert math.isnan(e["rho"])
    assert "kappa_se" not in e
    e2 = back.edges["q0", "k0"]
    assert math.isnan(e2["kappa"]) and e2["rho"] == pytest.approx(-0.3)
    # The exported graph answers the same questions as the original.
    assert strongest_path(back, "k0", ["head"]) is None
    assert strongest_path(back, "q0", ["head"])["strength"] == pytest.approx(0.7)
