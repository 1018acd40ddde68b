"""Compile an ArchGraph into a PyTorch module.

The module computes the graph's nodes in a fixed topological order. Parameter names are
stable and derived from node names: ``layers.<node>.weight``, ``layers.<node>.bias``
(and BatchNorm buffers), ``gates.<src>__<dst>`` for the gate of a candidate edge.
Supernets and discovered models come out of this same function.
"""
from __future__ import annotations

import torch
from torch import nn

from archdisc.graph.archgraph import ArchGraph
from archdisc.graph.ops import OPS


def gate_name(src: str, dst: str) -> str:
    return f"{src}__{dst}"


class ArchNet(nn.Module):
    """The module compiled from an :class:`ArchGraph` (kept as ``self.graph``)."""

    def __init__(self, graph: ArchGraph):
        super().__init__()
        graph.validate()
        self.graph = graph
        shapes = graph.shapes()
        self.layers = nn.ModuleDict()
        self.gates = nn.ParameterDict()
        self._plan = []  # (node, op, [(src, gate key or None, index buffer name or None)])
        for n in graph.order():
            a, ins = graph.nodes[n], graph.inputs(n)
            op = a["op"]
            cin = shapes[ins[0]][0] if ins else None
            if OPS[op].module is not None:
                self.layers[n] = OPS[op].module(a, cin)
            sources = []
            for src in ins:
                e = graph.edges[src, n]
                key = idx = None
                if e["gate"] is not None:
                    key = gate_name(src, n)
                    size = 1 if e["gate"] == "scalar" else shapes[src][0]
                    self.gates[key] = nn.Parameter(torch.ones(size))
                if e["index"] is not None:
                    # gather map: unit k of the add reads channel pos[k] of the member,
                    # or the appended zero channel (position len(index)) if it has none
                    pos = torch.full((a["units"],), len(e["index"]), dtype=torch.long)
                    pos[torch.tensor(e["index"], dtype=torch.long)] = torch.arange(
                        len(e["index"]))
                    idx = f"index_{gate_name(src, n)}"
                    self.register_buffer(idx, pos, persistent=False)
                sources.append((src, key, idx))
            self._plan.append((n, op, sources))
        self.input_names = graph.input_nodes()
        self.output_names = graph.output_nodes()

    def _read(self, env, src, key, ndim):
        x = env[src]
        if key is not None:
            g = self.gates[key]
            x = x * g.view(-1, *([1] * (ndim - 2))) if ndim > 2 else x * g
        return x

    def forward(self, *xs):
        env = self.activations(*xs)
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def activations(self, *xs) -> dict:
        """Every node's output for inputs ``xs``: ``{node: tensor}`` (used to verify
        that an extracted model matches its supernet node by node)."""
        env = dict(zip(self.input_names, xs))
        for n, op, sources in self._plan:
            if op == "input":
                continue
            ndim = env[sources[0][0]].dim()
            vals = [self._read(env, s, k, ndim) for s, k, _ in sources]
            kind = OPS[op].kind
            if kind == "add":
                out = None
                for (_, _, idx), v in zip(sources, vals):
                    if idx is not None:  # widen a narrow member into the add's unit space
                        zero = v.new_zeros((v.shape[0], 1) + tuple(v.shape[2:]))
                        v = torch.cat([v, zero], 1).index_select(1, getattr(self, idx))
                    out = v if out is None else out + v
                env[n] = out
            elif kind == "concat":
                env[n] = torch.cat(vals, dim=1)
            elif kind == "mul":
                env[n] = vals[0] * vals[1]
            elif kind == "output":
                env[n] = vals[0]
            else:
                env[n] = self.layers[n](vals[0])
        return env


def compile_graph(graph: ArchGraph, weights: dict | None = None) -> ArchNet:
    """Build the module for ``graph``; optionally load ``weights`` (a state dict, strict)."""
    net = ArchNet(graph)
    if weights is not None:
        net.load_state_dict(weights, strict=True)
    return net
