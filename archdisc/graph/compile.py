"""Compile an ArchGraph into a PyTorch module.

The module computes the graph's nodes in a fixed topological order. Parameter names are
stable and derived from node names: ``layers.<node>.weight``, ``layers.<node>.bias``
(and BatchNorm buffers), ``gates.<src>__<dst>`` for the gate of a candidate edge.
Supernets and discovered models come out of this same function.
"""
from __future__ import annotations

import torch
from torch import nn

from archdisc.graph.archgraph import SCALAR_GATES, ArchGraph
from archdisc.graph.kinds import KINDS
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
        self._plan = []  # (node, its kind's handler, [(src, gate key or None)])
        self._index = {}  # (src, add) -> name of the edge's gather-map buffer
        for n in graph.order():
            a, ins = graph.nodes[n], graph.inputs(n)
            op = a["op"]
            cin = shapes[ins[0]][0] if ins else None
            if OPS[op].module is not None:
                self.layers[n] = OPS[op].module(a, cin)
            sources = []
            for src in ins:
                e = graph.edges[src, n]
                key = None
                if e["gate"] is not None:
                    key = gate_name(src, n)
                    size = 1 if e["gate"] in SCALAR_GATES else shapes[src][0]
                    self.gates[key] = nn.Parameter(torch.ones(size))
                if e["index"] is not None:
                    # gather map: unit k of the add reads channel pos[k] of the member,
                    # or the appended zero channel (position len(index)) if it has none
                    pos = torch.full((a["units"],), len(e["index"]), dtype=torch.long)
                    pos[torch.tensor(e["index"], dtype=torch.long)] = torch.arange(
                        len(e["index"]))
                    self._index[src, n] = f"index_{gate_name(src, n)}"
                    self.register_buffer(self._index[src, n], pos, persistent=False)
                sources.append((src, key))
            self._plan.append((n, KINDS[OPS[op].kind], sources))
        self.input_names = graph.input_nodes()
        self.output_names = graph.output_nodes()
        # the nodes whose last reader is step i: forward drops them there (holding every
        # activation to the end costs memory and, on a CPU, fresh pages at every call)
        last = {s: i for i, (_, _, sources) in enumerate(self._plan) for s, _ in sources}
        self._free = [[] for _ in self._plan]
        for s, i in last.items():
            if s not in self.output_names:
                self._free[i].append(s)

    unit_dim = 1  # the dimension of units (features or channels) of every tensor

    def index_of(self, src: str, dst: str):
        """The gather map of the edge ``src -> dst`` into an add, or None."""
        idx = self._index.get((src, dst))
        return None if idx is None else getattr(self, idx)

    def _read(self, env, src, key):
        x = env[src]
        if key is None:
            return x
        shape = [1] * x.dim()
        shape[self.unit_dim] = -1
        return x * self.gates[key].view(shape)

    def forward(self, *xs):
        env = self._run(xs, keep=False)
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def activations(self, *xs) -> dict:
        """Every node's output for inputs ``xs``: ``{node: tensor}`` (used to verify
        that an extracted model matches its supernet node by node)."""
        return self._run(xs, keep=True)

    def _run(self, xs, keep: bool) -> dict:
        env = dict(zip(self.input_names, xs))
        for (n, handler, sources), free in zip(self._plan, self._free):
            if n not in env:
                env[n] = handler.forward(self, n, [self._read(env, s, k) for s, k in sources],
                                         [s for s, _ in sources])
            if not keep:
                for s in free:
                    del env[s]
        return env


def compile_graph(graph: ArchGraph, weights: dict | None = None) -> ArchNet:
    """Build the module for ``graph``; optionally load ``weights`` (a state dict, strict)."""
    net = ArchNet(graph)
    if weights is not None:
        net.load_state_dict(weights, strict=True)
    return net
