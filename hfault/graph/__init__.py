"""The coupling graph: built from a snapshot's couplings (:mod:`.build`), asked propagation
questions (:mod:`.analysis`), exported as GraphML (:mod:`.graphml`)."""

from hfault.graph.analysis import (
    communities,
    hubs,
    output_nodes,
    propagation_summary,
    strongest_path,
)
from hfault.graph.build import coupling_graph, graph_from_json, graph_to_json
from hfault.graph.graphml import write_graphml

__all__ = [
    "communities",
    "coupling_graph",
    "graph_from_json",
    "graph_to_json",
    "hubs",
    "output_nodes",
    "propagation_summary",
    "strongest_path",
    "write_graphml",
]
