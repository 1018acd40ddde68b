"""ArchGraph: one graph representation for supernets and discovered models.

An :class:`ArchGraph` is a ``networkx.DiGraph``. Nodes are operations, edges are data
flow. Every node has an ``op`` and the attributes of that op (the registry in
:mod:`archdisc.graph.ops`); only the
ops that *define* a width store it (``input.shape``, ``linear.units``, ``conv2d.units``,
``add.units``). Every other shape follows from those by :meth:`ArchGraph.shapes`.

Edges carry how an input is consumed:

* ``slot``: the position of this input among the consumer's inputs (concat order);
* ``gate``: ``None``, ``"scalar"``, ``"channel"`` or ``"block"``. A gated edge is a
  *candidate* connection: its source is multiplied by a learnable gate, and the search
  may switch it off. A ``"block"`` gate is a scalar gate on a residual branch (the
  add's other input is the branch's own input, :func:`gate_blocks`): when it dies the
  block is removed whole, and it leaves the residual channels coupled;
* ``index``: only on edges into an ``add``: the positions of the add's unit space that
  the source's units fill (``None`` means all of them, in order). Tensors summed by an
  ``add`` therefore share one explicit index space, and a member may cover only part
  of it, which is how a discovered model keeps a narrow branch feeding a wide sum.

The graph serialises to plain JSON (:meth:`to_json` / :meth:`from_json`) with a schema
version and is validated with an error naming the node for every malformed field.
"""
from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import torch

from archdisc.errors import GraphError
from archdisc.graph.kinds import kind
from archdisc.io import atomic_write_text
from archdisc.graph.ops import OPS, REQUIRED

SCHEMA_VERSION = 1
GATES = (None, "scalar", "channel", "block")
SCALAR_GATES = ("scalar", "block")
EDGE_ATTRS = {"slot": 0, "gate": None, "index": None}


class ArchGraph(nx.DiGraph):
    """A neural network as a DAG of operations (see the module docstring)."""

    # ------------------------------------------------------------------ building
    def add_op(self, name: str, op: str, inputs=(), gates=None, index=None, **attrs) -> str:
        """Add node ``name`` computing ``op`` on ``inputs`` (a list of node names).

        ``gates`` maps an input name to ``"scalar"`` or ``"channel"`` (candidate edge);
        ``index`` maps an input name to its positions in an ``add``'s unit space.
        Returns ``name`` so calls chain naturally.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise GraphError(f"node name {name!r}: use a non-empty string without '.'")
        if name in self:
            raise GraphError(f"node {name!r} already exists; pick another name")
        if op not in OPS:
            raise GraphError(f"node {name!r}: unknown op {op!r}; known ops: {sorted(OPS)}")
        if isinstance(inputs, str):
            inputs = [inputs]
        node = {"op": op}
        for key, default in OPS[op].attrs.items():
            node[key] = attrs.pop(key, default)
        if attrs:
            raise GraphError(f"node {name!r} ({op}): unknown attribute(s) {sorted(attrs)}; "
                             f"allowed: {sorted(OPS[op].attrs)}")
        if op == "input":
            node["shape"] = [int(s) for s in node["shape"]]
        self.add_node(name, **node)
        gates, index = gates or {}, index or {}
        for slot, src in enumerate(inputs):
            if src not in self:
                raise GraphError(f"node {name!r}: input {src!r} does not exist")
            idx = index.get(src)
            self.add_edge(src, name, slot=slot, gate=gates.get(src),
                          index=None if idx is None else [int(i) for i in idx])
        return name

    # short-hands for the common ops
    def input(self, name, shape):
        return self.add_op(name, "input", shape=list(shape))

    def linear(self, name, x, units, **kw):
        return self.add_op(name, "linear", [x], units=int(units), **kw)

    def conv(self, name, x, units, kernel_size=3, stride=1, padding=None, **kw):
        padding = kernel_size // 2 if padding is None else padding
        return self.add_op(name, "conv2d", [x], units=int(units), kernel_size=kernel_size,
                           stride=stride, padding=padding, **kw)

    def bn(self, name, x, **kw):
        return self.add_op(name, "batchnorm2d", [x], **kw)

    def act(self, name, x, fn="relu"):
        return self.add_op(name, "activation", [x], fn=fn)

    def output(self, name, x):
        return self.add_op(name, "output", [x])

    # ------------------------------------------------------------------ queries
    @property
    def name(self) -> str:
        return self.graph.get("name", "")

    def op(self, n: str) -> str:
        return self.nodes[n]["op"]

    def inputs(self, n: str) -> list[str]:
        """Predecessors of ``n`` in slot order."""
        return sorted(self.predecessors(n), key=lambda s: self.edges[s, n]["slot"])

    def input_nodes(self) -> list[str]:
        return [n for n in self if self.nodes[n]["op"] == "input"]

    def output_nodes(self) -> list[str]:
        return [n for n in self if self.nodes[n]["op"] == "output"]

    def sample_inputs(self, batch: int, gen: torch.Generator) -> tuple:
        """One random batch per input node: token ids below the smallest vocabulary of the
        embeddings reading it, else standard normal values."""
        out, shapes = [], self.shapes()
        for n in self.input_nodes():
            vocab = [self.nodes[r]["vocab"] for r in self.successors(n)
                     if self.nodes[r]["op"] == "embed"]
            out.append(torch.randint(0, min(vocab), (batch, *shapes[n]), generator=gen)
                       if vocab else torch.randn((batch, *shapes[n]), generator=gen))
        return tuple(out)

    def candidate_edges(self) -> list[tuple[str, str]]:
        return [(u, v) for u, v, g in self.edges(data="gate") if g is not None]

    def order(self) -> list[str]:
        """A deterministic topological order (ties broken by name)."""
        return list(nx.lexicographical_topological_sort(self))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Output shape (without batch) of every node; raises GraphError when inconsistent."""
        self._check_structure()
        shapes: dict[str, tuple[int, ...]] = {}
        for n in self.order():
            ins = [(s, shapes[s]) for s in self.inputs(n)]
            shapes[n] = kind(self, n).shape(self, n, ins)
        return shapes

    def units(self) -> dict[str, int]:
        """Units (features or channels: the first dimension of the output) per node."""
        return {n: s[0] for n, s in self.shapes().items()}

    # ------------------------------------------------------------------ validation
    def validate(self) -> "ArchGraph":
        """Check structure, attributes and shapes; raise GraphError naming the culprit."""
        for n, a in self.nodes(data=True):
            op = a.get("op")
            if op not in OPS:
                raise GraphError(f"node {n!r}: unknown op {op!r}; known ops: {sorted(OPS)}")
            extra = set(a) - set(OPS[op].attrs) - {"op"}
            if extra:
                raise GraphError(f"node {n!r} ({op}): unknown attribute(s) {sorted(extra)}; "
                                 f"allowed: {sorted(OPS[op].attrs)}")
            for key, default in OPS[op].attrs.items():
                if a.get(key, default) is REQUIRED:
                    raise GraphError(f"node {n!r} ({op}): missing attribute {key!r}")
            _check_attrs(n, a)
        for u, v, a in self.edges(data=True):
            extra = set(a) - set(EDGE_ATTRS)
            if extra:
                raise GraphError(f"edge {u!r}->{v!r}: unknown attribute(s) {sorted(extra)}; "
                                 f"allowed: {sorted(EDGE_ATTRS)}")
            if a.get("gate") not in GATES:
                raise GraphError(f"edge {u!r}->{v!r}: gate must be one of {GATES}, "
                                 f"got {a.get('gate')!r}")
            if a.get("index") is not None and self.nodes[v]["op"] != "add":
                raise GraphError(f"edge {u!r}->{v!r}: 'index' is only allowed on edges into "
                                 f"an add, not into {self.nodes[v]['op']!r}")
        self.shapes()
        return self

    def _check_structure(self):
        if not nx.is_directed_acyclic_graph(self):
            cycle = nx.find_cycle(self)
            raise GraphError(f"cycle through node {cycle[0][0]!r}: {cycle}; "
                             "an ArchGraph must be acyclic")
        ins, outs = self.input_nodes(), self.output_nodes()
        if not ins:
            raise GraphError("graph has no 'input' node")
        if not outs:
            raise GraphError("graph has no 'output' node")
        for n in self:
            lo, hi = OPS[self.nodes[n]["op"]].arity
            k = self.in_degree(n)
            if k < lo or (hi is not None and k > hi):
                want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
                raise GraphError(f"node {n!r} ({self.nodes[n]['op']}) has {k} inputs, "
                                 f"expects {want}")
            if self.nodes[n]["op"] == "output" and self.out_degree(n):
                raise GraphError(f"output node {n!r} must not feed other nodes")
        reach_out = set(outs).union(*(nx.ancestors(self, o) for o in outs))
        for n in ins:
            if n not in reach_out:
                raise GraphError(f"input {n!r} has no path to an output node")
        for n in self:
            if n not in reach_out:
                raise GraphError(f"dangling node {n!r}: its result reaches no output; "
                                 "remove it or connect it")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "nodes": [{"name": n, **self.nodes[n]} for n in self.order()],
            "edges": [{"src": u, "dst": v, **a} for u, v, a in
                      sorted(self.edges(data=True), key=lambda e: (e[1], e[2]["slot"]))],
        }

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "ArchGraph":
        if not isinstance(d, dict):
            raise GraphError("ArchGraph JSON must be an object with 'schema', 'nodes', 'edges'")
        if d.get("schema") != SCHEMA_VERSION:
            raise GraphError(f"field 'schema': expected {SCHEMA_VERSION}, got {d.get('schema')!r}")
        for key in ("nodes", "edges"):
            if not isinstance(d.get(key), list):
                raise GraphError(f"field {key!r}: expected a list")
        g = cls(name=str(d.get("name", "")))
        for i, nd in enumerate(d["nodes"]):
            if not isinstance(nd, dict) or not isinstance(nd.get("name"), str):
                raise GraphError(f"nodes[{i}]: expected an object with a string 'name'")
            if nd["name"] in g:
                raise GraphError(f"nodes[{i}]: duplicate node name {nd['name']!r}")
            if not nd["name"] or "." in nd["name"]:
                raise GraphError(f"nodes[{i}]: node name {nd['name']!r}: use a non-empty "
                                 f"string without '.'")
            attrs = {k: v for k, v in nd.items() if k != "name"}
            if attrs.get("op") == "token" and "index" in attrs:  # its name before 2026-12-03
                attrs["at"] = attrs.pop("index")
            if isinstance(attrs.get("op"), str) and attrs["op"] in OPS:  # newer attributes
                for key, default in OPS[attrs["op"]].attrs.items():
                    if default is not REQUIRED:
                        attrs.setdefault(key, default)
            g.add_node(nd["name"], **attrs)
        for i, ed in enumerate(d["edges"]):
            if not isinstance(ed, dict):
                raise GraphError(f"edges[{i}]: expected an object with 'src' and 'dst'")
            u, v = ed.get("src"), ed.get("dst")
            for end in (u, v):
                if end not in g:
                    raise GraphError(f"edges[{i}]: node {end!r} does not exist")
            attrs = {**EDGE_ATTRS, **{k: x for k, x in ed.items() if k not in ("src", "dst")}}
            g.add_edge(u, v, **attrs)
        return g.validate()

    @classmethod
    def from_json(cls, text_or_path) -> "ArchGraph":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GraphError(f"not valid ArchGraph JSON: {e}") from None
        return cls.from_dict(d)


def _check_attrs(n, a):
    op = a["op"]

    def positive_int(key, minimum=1):
        x = a[key]
        if not isinstance(x, int) or isinstance(x, bool) or x < minimum:
            raise GraphError(f"node {n!r} ({op}): {key!r} must be an integer >= {minimum}, "
                             f"got {x!r}")

    def size(key, minimum=1):  # an int or [height, width]
        x = a[key]
        parts = x if isinstance(x, (list, tuple)) and len(x) == 2 else [x]
        if any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in parts):
            raise GraphError(f"node {n!r} ({op}): {key!r} must be an integer >= {minimum} "
                             f"or a pair [height, width] of them, got {x!r}")

    if "units" in a:
        positive_int("units")
    if "groups" in a:
        positive_int("groups")
    for key in ("kernel_size", "dilation", "output_size"):
        if key in a:
            size(key)
    if "padding" in a:
        size("padding", 0)
    if "stride" in a and (a["stride"] is not None or OPS[op].attrs["stride"] is not None):
        size("stride")
    for key in ("bias", "searchable"):
        if key in a and not isinstance(a[key], bool):
            raise GraphError(f"node {n!r} ({op}): {key!r} must be true or false, got {a[key]!r}")
    complaint = OPS[op].check(a) if OPS[op].check is not None else None
    if complaint:
        raise GraphError(f"node {n!r} ({op}): {complaint}")


# ---------------------------------------------------------------------- size
def _per_node(g: ArchGraph, count: str) -> tuple[dict, int]:
    """The shapes of ``g`` and the sum over its nodes of their op's ``count`` (params, macs)."""
    shapes, total = g.shapes(), 0
    for n in g:
        a, ins = g.nodes[n], g.inputs(n)
        total += getattr(OPS[a["op"]], count)(a, shapes[ins[0]][0] if ins else 0, shapes[n])
    return shapes, total


def gate_blocks(g: ArchGraph) -> list[tuple[str, str]]:
    """Put a ``"block"`` gate on the branch of every residual block of ``g``: an ``add`` of
    two plain inputs one of which (the identity) is an ancestor of the other (the branch's
    last node), as in ``x + f(x)``. Returns the gated (branch, add) edges."""
    gated = []
    for n in g.order():
        ins = g.inputs(n)
        if g.nodes[n]["op"] != "add" or len(ins) != 2 or any(
                g.edges[s, n]["gate"] or g.edges[s, n]["index"] is not None for s in ins):
            continue
        a, b = ins
        branch = b if nx.has_path(g, a, b) else a if nx.has_path(g, b, a) else None
        if branch is not None:
            g.edges[branch, n]["gate"] = "block"
            gated.append((branch, n))
    return gated


def count_params(g: ArchGraph) -> int:
    """Number of parameters of the model compiled from ``g`` (weights, biases, BN, gates)."""
    shapes, total = _per_node(g, "params")
    for u, v in g.candidate_edges():
        total += 1 if g.edges[u, v]["gate"] in SCALAR_GATES else shapes[u][0]
    return total


def count_macs(g: ArchGraph) -> int:
    """Multiply-accumulates of one forward pass of one sample (linear and conv layers)."""
    return _per_node(g, "macs")[1]
