"""GraphML export of a coupling graph (Gephi, Cytoscape, yEd): GraphML holds one scalar type per
attribute key, so values are made single-typed first."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import networkx as nx

_KIND_ORDER = ("bool", "int", "float", "str")


def _graphml_value(value: Any) -> Any:
    """A value GraphML can hold: None dropped (returns None), containers as JSON text."""
    if value is None:
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, dict, set)):
        data = sorted(value, key=str) if isinstance(value, set) else value
        return json.dumps(data, default=str, sort_keys=True)
    return str(value)


def _kind(value: Any) -> str:
    return "bool" if isinstance(value, bool) else type(value).__name__


def _clean_attrs(rows: list[dict[str, Any]]) -> None:
    """Make every attribute key single-typed across ``rows`` (GraphML declares one type per key):
    None dropped, int widened to float when mixed with float, anything else mixed to str."""
    kinds: dict[str, set[str]] = {}
    for attrs in rows:
        for key in list(attrs):
            value = _graphml_value(attrs[key])
            if value is None:
                del attrs[key]
            else:
                attrs[key] = value
                kinds.setdefault(key, set()).add(_kind(value))
    for key, ks in kinds.items():
        if len(ks) <= 1:
            continue
        cast = float if ks == {"int", "float"} else str
        for attrs in rows:
            if key in attrs:
                attrs[key] = cast(attrs[key])


def write_graphml(graph: nx.Graph, path: str | Path) -> None:
    """Write the graph as GraphML (Gephi, Cytoscape, yEd). The graph is copied, never mutated;
    None attributes are dropped and lists/dicts written as JSON text, since GraphML holds only
    scalars; NaN floats are kept and read back as NaN."""
    g = graph.copy()
    _clean_attrs([attrs for _, attrs in g.nodes(data=True)])
    _clean_attrs([attrs for _, _, attrs in g.edges(data=True)])
    _clean_attrs([g.graph])
    nx.write_graphml(g, str(path))
