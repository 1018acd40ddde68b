"""``extract(net)``: a trained supernet -> the discovered ArchGraph and the compact model.

The pruned graph and the model that the same :func:`compile_graph` builds from it, holding
the surviving slices of the weights (:mod:`archdisc.extract.analysis` decides what
survives). It computes exactly the supernet's eval-mode function (BatchNorm with running
statistics) and is checked to, on random inputs, node by node.
"""
from __future__ import annotations

import torch

from archdisc.errors import ConfigError, ExtractionError, GraphError
from archdisc.extract.analysis import Extractor
from archdisc.extract.verify import verify_equivalent
from archdisc.graph.archgraph import ArchGraph
from archdisc.graph.compile import ArchNet, compile_graph, gate_name
from archdisc.graph.ops import OPS


@torch.no_grad()
def extract(net: ArchNet, *, verify: bool = True, fold_bn: bool = False, inputs=None,
            atol: float = 1e-5, round_to: int = 1,
            min_units: dict | None = None) -> tuple[ArchGraph, ArchNet]:
    """The discovered architecture of ``net`` and the compact model computing its function.

    ``net`` is read, never changed. ``fold_bn`` folds every BatchNorm that follows a conv
    into that conv (a new bias) and removes the BatchNorm nodes. ``verify`` runs both models
    in eval mode on ``inputs`` (a tensor or a tuple, one per input node; default: 4 random
    samples) and raises :class:`ExtractionError` naming the first node where they differ by
    more than ``atol * max(1, max |activation|)``. ``round_to`` rounds the kept width of
    every searchable linear / conv node and every add up to a multiple of it (capped at
    the supernet width) by keeping more supernet units: hardware-friendly widths, same
    function. ``min_units`` ({node: n}) keeps at least n units of those nodes the same
    way. Returns ``(graph, model)``, the model in eval mode on ``net``'s device.
    """
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    ex = Extractor(net, round_to, min_units)
    graph, state, mapping = ex.build()
    if fold_bn:
        _fold_batchnorm(graph, state, mapping)
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    try:
        compact = compile_graph(graph).to(dtype=dtype)
        compact.load_state_dict(state, strict=True)
    except (GraphError, RuntimeError) as e:  # a bug in extraction, never the user's fault
        raise ExtractionError(f"could not build the compact model: {e}") from e
    compact = compact.to(device).eval()
    if verify:
        verify_equivalent(net, compact, inputs=inputs, atol=atol, mapping=mapping)
    return graph, compact


@torch.no_grad()
def extract_graph(net: ArchNet, round_to: int = 1,
                  min_units: dict | None = None) -> tuple[ArchGraph, dict]:
    """The discovered graph and the compact model's state dict, without building the model
    (what a size controller needs: ``count_params(graph)``, the kept weights' shapes)."""
    graph, state, _ = Extractor(net, round_to, min_units).build()
    return graph, state


def _fold_batchnorm(g: ArchGraph, state: dict, mapping: dict):
    """Fold every BatchNorm (an op with ``folds_into``) whose only input is a conv read by
    nothing else into that conv."""
    for n in list(g.order()):
        into = OPS[g.nodes[n]["op"]].folds_into
        if not into:
            continue
        (c,) = g.inputs(n)
        if g.nodes[c]["op"] not in into or g.edges[c, n]["gate"] or g.out_degree(c) != 1:
            continue
        p = lambda node, key: state.pop(f"layers.{node}.{key}", None)  # noqa: E731
        w, b = p(c, "weight"), p(c, "bias")
        gamma, beta, mean, var = (p(n, k).double() for k in
                                  ("weight", "bias", "running_mean", "running_var"))
        p(n, "num_batches_tracked")
        scale = gamma / torch.sqrt(var + g.nodes[n]["eps"])
        bias = (b.double() if b is not None else torch.zeros_like(mean)) - mean
        state[f"layers.{c}.weight"] = (w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype)
        state[f"layers.{c}.bias"] = (bias * scale + beta).to(w.dtype)
        g.nodes[c]["bias"] = True
        for t in list(g.successors(n)):
            g.add_edge(c, t, **g.edges[n, t])
            if g.edges[n, t]["gate"] is not None:
                state[f"gates.{gate_name(c, t)}"] = state.pop(f"gates.{gate_name(n, t)}")
        g.remove_node(n)
        mapping[c] = mapping.pop(n)
