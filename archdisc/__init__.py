"""archdisc: neural architecture discovery with sparse Bregman iterations."""
from .graph import ArchGraph, GraphError, count_macs, count_params
from .compile import ArchNet, compile_graph

__all__ = ["ArchGraph", "GraphError", "ArchNet", "compile_graph", "count_params",
           "count_macs", "build_space", "param_groups", "sparse_init", "load"]


def build_space(name: str, **options) -> ArchGraph:
    """Build a built-in search space (see ``archdisc spaces``)."""
    from search_spaces import build_space as _build
    return _build(name, **options)


def __getattr__(name):  # lazy: groups needs the optimizers
    if name in ("param_groups", "sparse_init", "alive", "unit_members"):
        from . import groups
        return getattr(groups, name)
    if name == "load":  # lazy: the eval-mode ArchNet of a .safetensors + .json pair
        from .train import load
        return load
    raise AttributeError(name)
