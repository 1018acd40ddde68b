"""The search-space registry: ``register_space(name, builder, description)``.

A builder is a function returning an :class:`~archdisc.graph.ArchGraph` supernet; its
keyword arguments are the space's options (``space_options`` of a config). Installed
packages add spaces through the ``archdisc.spaces`` entry point group: each entry names a
dict ``name -> (builder, description)``, read the first time the registry is. The built-in
spaces (the ``search_spaces`` package) arrive that way; the engine never imports them.
"""
from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Callable

from archdisc.errors import GraphError
from archdisc.graph.archgraph import ArchGraph

_SPACES: dict[str, tuple[Callable[..., ArchGraph], str]] = {}
_entry_points_read = False


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
    global _entry_points_read
    if not _entry_points_read:
        _entry_points_read = True
        for ep in sorted(entry_points(group="archdisc.spaces"), key=lambda ep: ep.name):
            try:
                found = {name: (builder, str(description))
                         for name, (builder, description) in ep.load().items()}
            except Exception as e:  # noqa: BLE001 - another package's problem: say, go on
                warnings.warn(f"archdisc: search spaces of entry point {ep.name!r} "
                              f"({ep.value}) not loaded: {e}", stacklevel=2)
                continue
            for name, space in found.items():
                _SPACES.setdefault(name, space)
    return _SPACES


def build_space(name: str, **options) -> ArchGraph:
    """Build the registered search space ``name`` with ``options`` and validate it."""
    known = spaces()
    if name not in known:
        raise GraphError(f"unknown search space {name!r}; available: {', '.join(known)}"
                         if known else f"unknown search space {name!r}: no search space is "
                         f"registered; install archdisc (pip install -e .), whose entry "
                         f"point brings the built-ins")
    try:
        graph = known[name][0](**options)
    except (TypeError, ValueError) as e:
        raise GraphError(f"search space {name!r}: bad option ({e})") from None
    if not isinstance(graph, ArchGraph):
        raise GraphError(f"search space {name!r}: its builder returned "
                         f"{type(graph).__name__}, not an ArchGraph")
    return graph.validate()
