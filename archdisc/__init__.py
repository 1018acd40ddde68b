"""archdisc: neural architecture discovery with sparse Bregman iterations."""
from archdisc.errors import ArchdiscError, ConfigError, RunError, TrainingError
from archdisc.graph.archgraph import ArchGraph, GraphError, count_macs, count_params
from archdisc.graph.compile import ArchNet, compile_graph
from archdisc.sparsity.groups import alive, param_groups, sparse_init
from archdisc.extract import extract
from archdisc.deploy.formats import load
from archdisc.spaces import build_space, register_space, spaces
from archdisc.recipe.config import Config, load_config
from archdisc.recipe.discover import run_discover
from archdisc.graph.fx import from_module

__all__ = ["ArchdiscError", "ConfigError", "RunError", "TrainingError", "ArchGraph",
           "GraphError", "ArchNet", "compile_graph", "count_params", "count_macs",
           "build_space", "register_space", "spaces", "param_groups", "sparse_init", "alive",
           "extract", "load", "Config", "load_config", "run_discover", "from_module"]
