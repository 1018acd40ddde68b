"""archdisc: neural architecture discovery with sparse Bregman iterations."""
from .graph import ArchGraph, GraphError, count_macs, count_params
from .compile import ArchNet, compile_graph
from .groups import alive, param_groups, sparse_init
from .extract import extract
from .export import load

__all__ = ["ArchGraph", "GraphError", "ArchNet", "compile_graph", "count_params",
           "count_macs", "build_space", "param_groups", "sparse_init", "alive", "extract",
           "load"]


def build_space(name: str, **options) -> ArchGraph:
    """Build a built-in search space (see ``archdisc spaces``)."""
    from search_spaces import build_space as _build
    return _build(name, **options)
