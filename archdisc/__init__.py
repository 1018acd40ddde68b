"""archdisc: neural architecture discovery with sparse Bregman iterations."""
from .errors import ArchdiscError, ConfigError, RunError, TrainingError
from .graph import ArchGraph, GraphError, count_macs, count_params
from .compile import ArchNet, compile_graph
from .groups import alive, param_groups, sparse_init
from .extract import extract
from .export import load
from .spaces import build_space, register_space, spaces
from .config import Config, load_config
from .discover import run_discover
from .fx import from_module

__all__ = ["ArchdiscError", "ConfigError", "RunError", "TrainingError", "ArchGraph",
           "GraphError", "ArchNet", "compile_graph", "count_params", "count_macs",
           "build_space", "register_space", "spaces", "param_groups", "sparse_init", "alive",
           "extract", "load", "Config", "load_config", "run_discover", "from_module"]
