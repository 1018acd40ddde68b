"""The analysis behind extraction: which units vary, which are kept, the compact graph.

The rules below are carried out, kind by kind, by the handlers of
:mod:`archdisc.graph.kinds`; :class:`Extractor` runs them in order and holds the masks.

Every mask below lives in the *supernet's* unit spaces (units = the first dimension of a
node's output: features or channels; a flatten node has one unit per feature). Three steps:

1. **Values.** One pass in topological order tells, for every unit of every node, whether it
   may vary with the input (``var``) or is an exact constant ``val`` (the same for every
   sample and every spatial position). A linear / conv unit is constant when all its weights
   on varying inputs are zero; its value is its bias plus the weights times the constant
   inputs (a conv with ``padding > 0`` reading a non-zero constant is *not* constant: the
   zero padding shows at the borders). Constants flow through BatchNorm, activations,
   pooling (an avgpool with padding only keeps zeros), depthwise convs (the same rule as a
   conv), layer norm, flatten, gates, adds, concats, channel selections and products (a
   product with an exact zero is zero).

2. **Keep.** Demand flows backward from the outputs (which keep every unit):

   * a kept linear / conv unit needs every input unit it reads through a non-zero weight,
     unless that input is a *foldable* constant: zero, or any constant read by a linear
     layer with a bias, or by a conv with a bias and ``padding == 0``;
   * a kept unit of an ``add`` needs every member unit that lands on it, unless that
     member's value there is exactly zero (a dead unit, or a zero gate);
   * activations, BatchNorm, pooling, depthwise convs, flatten, concat and channel
     selections pass demand to their inputs, unit by unit;
   * the two inputs of a ``mul`` keep the same units (a product of tensors of different
     widths has no meaning), so each demands what the other keeps: a coupled space, as
     at an add, except that a unit is removed only when neither side needs it;
   * all or nothing: a layer norm that keeps any unit demands every input unit (its
     mean and variance read them all); a grouped conv (``groups > 1``) keeps all its
     units and reads all its input channels (a channel cannot leave one group alone).

   A linear / conv / add node keeps exactly its demanded units (a ``searchable=False``
   layer keeps all of them as soon as any is demanded). Every other node keeps what its
   inputs keep: its width is derived, as in the graph itself. Edges into an ``add`` or a
   ``concat`` survive only when the consumer needs something from them; a surviving edge
   carries *all* kept units of its source, so an add keeps the **union** of what its
   members keep (the index of each member edge is remapped into the add's kept units:
   a narrow member scatters into a wider sum). This is how coupled channel spaces work:
   a unit of a residual add dies only when it is dead in every member, and then the
   activation after the add, the identity shortcut into the next add and the next conv's
   input channels lose it too. Both directions repeat to a fixed point.

   A layer whose units are kept but whose inputs are all gone (its output is a constant,
   for instance when every path of the supernet is dead) keeps one input unit so that the
   graph stays connected, preferring a constant one (read by the layer, if any), whose own
   producer then needs nothing either. The compact model of an all-dead supernet thus
   computes its constant output through a chain of single units back to the input: that
   is the documented result, never an error.

   With ``round_to=k`` every searchable linear / conv node and every add keeps extra
   supernet units (inside the fixed point) until its kept width is a multiple of ``k``
   (or the supernet width). A padding unit is kept like any other, so what it reads is
   demanded and constants it produces are no longer folded: still exact. Preferred are
   units needing no input that is not kept yet, among them those exactly zero (a dead
   unit; an add position where every member is zero), then by index.

3. **Build.** Kept units are sliced out of the weights with ``index_select``. The
   constants that a layer no longer reads are folded into its bias
   (``b += W[:, j] * c_j``, for a conv the kernel sum times ``c_j``). Nodes with nothing
   kept vanish with their edges.

Limitations (exact, just not minimal): a zero entry of a *channel* gate on an edge into an
add removes that contribution, but the source unit still occupies its add position when it
is kept for another consumer; concat edges cannot drop a subset of their source's units; a
non-zero constant read by a bias-free layer (or a padded conv) keeps its unit; grouped
convs and layer norms keep all their channels.
"""

from __future__ import annotations

import torch

from archdisc.errors import ExtractionError
from archdisc.graph.archgraph import SCALAR_GATES, ArchGraph
from archdisc.graph.compile import ArchNet, gate_name
from archdisc.graph.kinds import kind


class Extractor:
    """Values, keep masks and the compact graph + weights of one supernet (CPU tensors).
    The kind handlers read and fill its masks (see the module docstring)."""

    def __init__(self, net: ArchNet, round_to: int = 1, min_units: dict | None = None):
        self.g: ArchGraph = net.graph
        self.round_to, self.min_units = round_to, min_units or {}
        self.pads = round_to > 1 or bool(self.min_units)  # whether handlers call pad()
        self.state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        self.shapes = self.g.shapes()
        self.order = self.g.order()
        self.ins = {n: self.g.inputs(n) for n in self.order}
        self.units = {n: self.shapes[n][0] for n in self.order}
        self.kind = {n: kind(self.g, n) for n in self.order}
        self._values()
        self._keep()

    # ---- what the handlers read
    def param(self, n, key):
        return self.state.get(f"layers.{n}.{key}")

    def gate(self, s, d):
        if self.g.edges[s, d]["gate"] is None:
            return None
        return self.state[f"gates.{gate_name(s, d)}"]

    def index(self, s, d):
        """Positions of ``s``'s units in the unit space of the add ``d``."""
        idx = self.g.edges[s, d]["index"]
        return torch.arange(self.units[d]) if idx is None else torch.tensor(idx)

    def read(self, s, d):
        """(var, val) of ``s``'s units as ``d`` reads them (after the edge's gate)."""
        var, val = self.var[s], self.val[s]
        g = self.gate(s, d)
        if g is None:
            return var, val
        g = g.double().expand(var.shape)
        return var & (g != 0), val * g

    def zeros(self, n):
        return torch.zeros(self.units[n], dtype=torch.bool)

    def channels(self, n):
        """Input unit read by each unit of the select node ``n``."""
        return torch.tensor(self.g.nodes[n]["channels"], dtype=torch.long)

    def pad(self, n, cost):
        """Keep the cheapest extra units of ``n`` up to ``min_units`` and a multiple of
        ``round_to``."""
        k, r = int(self.keep[n].sum()), self.round_to
        want = max(k, self.min_units.get(n, 0))
        extra = min(self.units[n], -(-want // r) * r) - k
        if extra > 0:
            free = (~self.keep[n]).nonzero().squeeze(1)
            pick = free[torch.argsort(cost[free], stable=True)[:extra]]
            self.keep[n][pick] = True

    # ---- step 1: which units vary, and the exact value of the others
    def _values(self):
        self.var, self.val, self.nz, self.foldable, self.nonzero = {}, {}, {}, {}, {}
        self.heads = {}  # attention node -> the heads it keeps
        for n in self.order:
            reads = [self.read(s, n) for s in self.ins[n]]
            var, val = self.kind[n].values(self, n, reads)
            self.var[n], self.val[n] = var, torch.where(var, 0.0, val)

    # ---- step 2: which units are kept (fixed point of demand and coupling)
    def _keep(self):
        self.keep = {n: self.zeros(n) for n in self.order if self.kind[n].width}
        self.live: set = set()  # edges into add / concat that carry their source's units
        fwd = self._forward()
        while True:
            before = (sum(int(k.sum()) for k in self.keep.values()), len(self.live))
            dem = {n: self.zeros(n) for n in self.order}
            for o in self.g.output_nodes():
                dem[o][:] = True
            for n in reversed(self.order):
                self.kind[n].demand(self, n, dem[n], fwd, dem)
            fwd = self._forward()
            if (sum(int(k.sum()) for k in self.keep.values()), len(self.live)) == before:
                break
        self.kept = fwd
        # A node survives when it keeps units and a surviving node reads it.
        self.survive = {}
        for n in reversed(self.order):
            self.survive[n] = self.kind[n].fixed or (
                bool(fwd[n].any()) and any(self.survive[t] and self.edge_live(n, t)
                                           for t in self.g.successors(n)))

    def _forward(self):
        """Kept units of every node from the kept units of the nodes defining widths."""
        fwd = {}
        for n in self.order:
            fwd[n] = self.kind[n].kept(self, n, fwd)
        return fwd

    def edge_live(self, s, d):
        return (s, d) in self.live if self.kind[d].merges else True

    # ---- step 3: the compact graph and its weights
    def build(self):
        """(compact graph, state dict, mapping compact node -> (supernet node, kept idx))."""
        keep = {n: self.kept[n].nonzero().squeeze(1) for n in self.order if self.survive[n]}
        g = ArchGraph(**self.g.graph)
        for n in self.order:
            if n in keep:
                g.add_node(n, **self.kind[n].compact(self, n, dict(self.g.nodes[n]), keep))
        for n in g:
            slot = 0
            for s in self.ins[n]:
                if s not in keep or not self.edge_live(s, n):
                    continue
                g.add_edge(s, n, slot=slot, gate=self.g.edges[s, n]["gate"],
                           index=self.kind[n].edge_index(self, s, n, keep))
                slot += 1
        inputs = g.input_nodes()
        if any(g.in_degree(n) == 0 for n in g if n not in inputs) or \
                any(g.out_degree(n) == 0 for n in inputs):
            raise ExtractionError("extraction left an input unread or a node without inputs; "
                                  "this is a bug in archdisc.extract")
        state = {}
        for n in g:
            state.update(self.kind[n].weights(self, n, keep))
            for s in g.predecessors(n):
                gt = self.gate(s, n)
                if gt is not None:
                    state[f"gates.{gate_name(s, n)}"] = \
                        gt.clone() if g.edges[s, n]["gate"] in SCALAR_GATES else gt[keep[s]]
        mapping = {n: (n, k) for n, k in keep.items()}
        return g, state, mapping
