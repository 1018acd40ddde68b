"""The search-space registry: ``register_space(name, builder, description)``.

A builder is a function returning an :class:`~archdisc.graph.archgraph.ArchGraph` supernet; its
keyword arguments are the space's options (``space_options`` of a config). The built-in
spaces of the ``search_spaces`` package register themselves here the first time the
registry is read, so the engine never imports them at import time.
"""
from __future__ import annotations

from typing import Callable

from archdisc.graph.archgraph import ArchGraph, GraphError

_SPACES: dict[str, tuple[Callable[..., ArchGraph], str]] = {}
_builtins_loaded = False


def register_space(name: str, builder: Callable[..., ArchGraph], description: str = "",
                   *, replace: bool = False) -> None:
    """Make ``builder(**options) -> ArchGraph`` available as search space ``name``
    (``--space name`` on the command line, ``Config(space=name)``)."""
    if not isinstance(name, str) or not name:
        raise GraphError("register_space: name must be a non-empty string")
    if not callable(builder):
        raise GraphError(f"register_space({name!r}): builder must be callable, got "
                         f"{type(builder).__name__}")
    if name in spaces() and not replace:
        raise GraphError(f"search space {name!r} is registered already; pass replace=True "
                         f"to override it")
    _SPACES[name] = (builder, description)


def spaces() -> dict[str, tuple[Callable[..., ArchGraph], str]]:
    """Every registered space: name -> (builder, description)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import search_spaces  # noqa: F401  (registers the built-ins)
    return _SPACES


def build_space(name: str, **options) -> ArchGraph:
    """Build the registered search space ``name`` with ``options`` and validate it."""
    known = spaces()
    if name not in known:
        raise GraphError(f"unknown search space {name!r}; available: {', '.join(known)}")
    try:
        graph = known[name][0](**options)
    except (TypeError, ValueError) as e:
        raise GraphError(f"search space {name!r}: bad option ({e})") from None
    if not isinstance(graph, ArchGraph):
        raise GraphError(f"search space {name!r}: its builder returned "
                         f"{type(graph).__name__}, not an ArchGraph")
    return graph.validate()
