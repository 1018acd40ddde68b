"""The graph: ops (the registry), ArchGraph, the compiler to nn.Module, the fx importer."""
from archdisc.errors import GraphError
from archdisc.graph import tokens  # registers the token and attention ops
from archdisc.graph.archgraph import ArchGraph, count_macs, count_params
from archdisc.graph.compile import ArchNet, compile_graph, gate_name
from archdisc.graph.ops import OPS

__all__ = ["ArchGraph", "GraphError", "ArchNet", "OPS", "compile_graph", "count_macs",
           "count_params", "gate_name", "tokens"]
