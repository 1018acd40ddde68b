"""Extraction: a trained supernet -> the discovered ArchGraph + an equivalent compact model.

``extract(net)`` returns ``(graph, model)``: the pruned :class:`ArchGraph` and the model that
the same :func:`compile_graph` builds from it, holding the surviving slices of the weights.
It computes exactly the supernet's eval-mode function (BatchNorm with running statistics)
and is checked to, on random inputs, node by node.

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

import math

import torch

from archdisc.graph.compile import ArchNet, compile_graph, gate_name
from archdisc.graph.archgraph import ArchGraph, GraphError, count_macs, count_params
from archdisc.graph.ops import OPS, padded
from archdisc.errors import ExtractionError

__all__ = ["extract", "extract_graph", "ExtractionError", "verify_equivalent", "extraction_report",
           "format_report"]

MERGES = ("add", "concat")



# ---------------------------------------------------------------------- public API
@torch.no_grad()
def extract(net: ArchNet, *, verify: bool = True, fold_bn: bool = False, inputs=None,
            atol: float = 1e-5, round_to: int = 1) -> tuple[ArchGraph, ArchNet]:
    """The discovered architecture of ``net`` and the compact model computing its function.

    ``net`` is read, never changed. ``fold_bn`` folds every BatchNorm that follows a conv
    into that conv (a new bias) and removes the BatchNorm nodes. ``verify`` runs both models
    in eval mode on ``inputs`` (a tensor or a tuple, one per input node; default: 4 random
    samples) and raises :class:`ExtractionError` naming the first node where they differ by
    more than ``atol * max(1, max |activation|)``. ``round_to`` rounds the kept width of
    every searchable linear / conv node and every add up to a multiple of it (capped at
    the supernet width) by keeping more supernet units: hardware-friendly widths, same
    function. Returns ``(graph, model)``, the model in eval mode on ``net``'s device.
    """
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    ex = _Extractor(net, round_to)
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
def extract_graph(net: ArchNet, round_to: int = 1) -> tuple[ArchGraph, dict]:
    """The discovered graph and the compact model's state dict, without building the model
    (what a size controller needs: ``count_params(graph)``, the kept weights' shapes)."""
    graph, state, _ = _Extractor(net, round_to).build()
    return graph, state


@torch.no_grad()
def verify_equivalent(net: ArchNet, compact: ArchNet, inputs=None, atol: float = 1e-5,
                      mapping: dict | None = None) -> float:
    """Check that ``compact`` computes ``net``'s eval-mode function; return the max |diff|.

    ``mapping`` (what :func:`extract` uses) maps a compact node to ``(supernet node, kept
    unit indices)`` so that every node is compared and the first one that diverges is
    named; without it only the outputs are compared. Both models' train/eval modes are
    restored afterwards.
    """
    xs = _inputs(net, inputs)
    modes = [(m, m.training) for m in (*net.modules(), *compact.modules())]
    try:
        net.eval()
        compact.eval()
        ref, got = net.activations(*xs), compact.activations(*xs)
    finally:
        for m, training in modes:
            m.training = training
    if mapping is None:
        mapping = {o: (o, None) for o in compact.output_names}
    worst = 0.0
    for n in compact.graph.order():
        if n not in mapping:
            continue
        src, idx = mapping[n]
        r = ref[src] if idx is None else ref[src].index_select(1, idx.to(ref[src].device))
        g = got[n]
        if r.shape != g.shape:
            raise ExtractionError(f"node {n!r}: compact shape {tuple(g.shape)} does not match "
                                  f"the supernet's kept units {tuple(r.shape)}")
        diff = float((r - g).abs().max()) if r.numel() else 0.0
        tol = atol * max(1.0, float(r.abs().max()) if r.numel() else 0.0)
        if not diff <= tol:  # also catches NaN
            where = "output" if n in compact.output_names else "node"
            raise ExtractionError(f"the compact model diverges from the supernet at {where} "
                                  f"{n!r}: max |diff| = {diff:.3g} > {tol:.3g}")
        worst = max(worst, diff)
    return worst


def _inputs(net: ArchNet, inputs, batch: int = 4) -> tuple:
    if inputs is not None:
        return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    param = next(iter(net.parameters()), None)
    kw = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    gen = torch.Generator().manual_seed(0)
    shapes = net.graph.shapes()
    return tuple(torch.randn((batch, *shapes[n]), generator=gen).to(**kw)
                 for n in net.input_names)


# ---------------------------------------------------------------------- the analysis
class _Extractor:
    """Values, keep masks and the compact graph + weights of one supernet (CPU tensors)."""

    def __init__(self, net: ArchNet, round_to: int = 1):
        self.g: ArchGraph = net.graph
        self.round_to = round_to
        self.state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        self.shapes = self.g.shapes()
        self.order = self.g.order()
        self.ins = {n: self.g.inputs(n) for n in self.order}
        self.units = {n: self.shapes[n][0] for n in self.order}
        self._values()
        self._keep()

    # ---- helpers
    def op(self, n):
        """The node's kind in the op registry (input, layer, add, concat, flatten,
        channelwise, output)."""
        return OPS[self.g.nodes[n]["op"]].kind

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

    def grouped(self, n):
        return self.g.nodes[n].get("groups", 1) > 1

    # ---- step 1: which units vary, and the exact value of the others
    def _values(self):
        self.var, self.val, self.nz, self.foldable, self.nonzero = {}, {}, {}, {}, {}
        for n in self.order:
            a, op = self.g.nodes[n], self.op(n)
            if op == "input":
                var = torch.ones(self.units[n], dtype=torch.bool)
                val = torch.zeros(self.units[n], dtype=torch.float64)
            elif op == "layer":
                s = self.ins[n][0]
                rvar, rval = self.read(s, n)
                nz, wsum = _kernel_sums(self.param(n, "weight"), a.get("groups", 1))
                g = self.gate(s, n)
                if g is not None:
                    nz &= (g != 0).expand(rvar.shape)
                var = (nz & rvar).any(1)
                pad = padded(a)
                if pad:  # zero padding makes a non-zero constant input vary at borders
                    var |= (nz & (rval != 0)).any(1)
                val = wsum @ rval
                if a["bias"]:
                    val += self.param(n, "bias").double()
                # A constant input can be folded into this layer's bias.
                self.foldable[n] = ~rvar & ((rval == 0) | (a["bias"] and not pad))
                self.nz[n] = nz
            else:
                reads = [self.read(s, n) for s in self.ins[n]]
                var, val = reads[0]
                constant = OPS[a["op"]].constant
                if op == "channelwise" and constant is not None:
                    var, val = constant(a, lambda key: self.param(n, key), var, val)
                elif op == "flatten":
                    hw = math.prod(self.shapes[self.ins[n][0]][1:])
                    var, val = var.repeat_interleave(hw), val.repeat_interleave(hw)
                elif op == "add":
                    var, val = self.zeros(n), torch.zeros(self.units[n], dtype=torch.float64)
                    for s, (rv, rc) in zip(self.ins[n], reads):
                        idx = self.index(s, n)
                        var[idx] |= rv
                        val.index_add_(0, idx, rc)
                        self.nonzero[s, n] = rv | (rc != 0)
                elif op == "concat":
                    var = torch.cat([r[0] for r in reads])
                    val = torch.cat([r[1] for r in reads])
                elif op == "select":
                    var, val = var[self.channels(n)], val[self.channels(n)]
                elif op == "mul":  # a product with an exact zero is zero
                    (vx, cx), (vg, cg) = reads
                    zero = (~vx & (cx == 0)) | (~vg & (cg == 0))
                    var, val = (vx | vg) & ~zero, cx * cg
                # other channelwise ops (gap, ...) and output: constants pass unchanged
            self.var[n], self.val[n] = var, torch.where(var, 0.0, val)

    # ---- step 2: which units are kept (fixed point of demand and coupling)
    def _keep(self):
        self.keep = {n: self.zeros(n) for n in self.order if self.op(n) in ("layer", "add")}
        self.live: set = set()  # edges into add / concat that carry their source's units
        fwd = self._forward()
        while True:
            before = (sum(int(k.sum()) for k in self.keep.values()), len(self.live))
            self._backward(fwd)
            fwd = self._forward()
            if (sum(int(k.sum()) for k in self.keep.values()), len(self.live)) == before:
                break
        self.kept = fwd
        # A node survives when it keeps units and a surviving node reads it.
        self.survive = {}
        for n in reversed(self.order):
            self.survive[n] = self.op(n) in ("input", "output") or (
                bool(fwd[n].any()) and any(self.survive[t] and self.edge_live(n, t)
                                           for t in self.g.successors(n)))

    def edge_live(self, s, d):
        return (s, d) in self.live if self.op(d) in MERGES else True

    def _forward(self):
        """Kept units of every node from the kept units of linear / conv / add nodes."""
        fwd = {}
        for n in self.order:
            op, ins = self.op(n), self.ins[n]
            if op == "input":
                fwd[n] = torch.ones(self.units[n], dtype=torch.bool)
            elif op == "layer":
                fwd[n] = self.keep[n].clone()
            elif op == "add":  # the union of what the live members keep
                for s in ins:
                    if (s, n) in self.live:
                        self.keep[n][self.index(s, n)[fwd[s]]] = True
                fwd[n] = self.keep[n].clone()
            elif op == "concat":
                fwd[n] = torch.cat([fwd[s] if (s, n) in self.live else self.zeros(s)
                                    for s in ins])
            elif op == "flatten":
                fwd[n] = fwd[ins[0]].repeat_interleave(math.prod(self.shapes[ins[0]][1:]))
            elif op == "select":
                fwd[n] = fwd[ins[0]][self.channels(n)]
            elif op == "mul":  # the same on both sides at the fixed point
                fwd[n] = fwd[ins[0]] & fwd[ins[1]]
            else:
                fwd[n] = fwd[ins[0]].clone()
        return fwd

    def _backward(self, fwd):
        """Push demand from the outputs back to the inputs, growing ``keep`` and ``live``."""
        dem = {n: self.zeros(n) for n in self.order}
        for o in self.g.output_nodes():
            dem[o][:] = True
        for n in reversed(self.order):
            op, ins, d = self.op(n), self.ins[n], dem[n]
            if op == "input":
                continue
            if op == "layer":
                if not self.g.nodes[n]["searchable"] and (d.any() or self.keep[n].any()):
                    d[:] = True  # (a grouped conv is never searchable)
                self.keep[n] |= d
                if self.g.nodes[n]["searchable"] and self.round_to > 1:
                    s = ins[0]
                    new = self.nz[n] & ~self.foldable[n] & ~(fwd[s] | dem[s])
                    self._pad(n, 2 * new.sum(1) + (self.var[n] | (self.val[n] != 0)))
                rows = self.keep[n]
                if rows.any():
                    s = ins[0]
                    read = self.nz[n][rows].any(0)
                    need = read & ~self.foldable[n]
                    if self.grouped(n):  # every channel of every group stays
                        need[:] = True
                    if not (fwd[s] | dem[s] | need).any():  # keep one input: stay connected
                        const = ~self.var[s]  # a constant unit needs nothing upstream
                        need[_first(read & const, const, read)] = True
                    dem[s] |= need
            elif op == "add":
                self.keep[n] |= d
                if self.round_to > 1:
                    new, nonzero = (torch.zeros(self.units[n], dtype=torch.long)
                                    for _ in range(2))
                    for s in ins:
                        have = dem[s] | (fwd[s] if (s, n) in self.live else False)
                        idx, nzs = self.index(s, n), self.nonzero[s, n]
                        new.index_add_(0, idx, (nzs & ~have).long())
                        nonzero.index_add_(0, idx, nzs.long())
                    self._pad(n, 2 * new + (nonzero > 0))
                rows = self.keep[n]
                if rows.any():
                    for s in ins:
                        need = rows[self.index(s, n)] & self.nonzero[s, n]
                        if need.any():
                            self.live.add((s, n))
                            dem[s] |= need
                    if not any((s, n) in self.live for s in ins):  # stay connected
                        s = next((s for s in ins if rows[self.index(s, n)].any()), ins[0])
                        hit = rows[self.index(s, n)].nonzero()
                        dem[s][int(hit[0]) if len(hit) else 0] = True
                        self.live.add((s, n))
            elif op == "concat":
                for s, part in zip(ins, d.split([self.units[s] for s in ins])):
                    if part.any():
                        self.live.add((s, n))
                        dem[s] |= part
            elif op == "flatten":
                dem[ins[0]] |= d.view(self.units[ins[0]], -1).any(1)
            elif op == "select":
                dem[ins[0]][self.channels(n)[d]] = True
            elif op == "mul":  # both sides keep the same units
                both = d | fwd[ins[0]] | fwd[ins[1]]
                for s in ins:
                    dem[s] |= both
            elif OPS[self.g.nodes[n]["op"]].mixes and (d.any() or fwd[n].any()):
                dem[ins[0]][:] = True  # all units or none
            else:
                dem[ins[0]] |= d

    def _pad(self, n, cost):
        """Keep the cheapest extra units of ``n`` up to a multiple of ``round_to``."""
        k, r = int(self.keep[n].sum()), self.round_to
        extra = min(self.units[n], -(-k // r) * r) - k
        if extra > 0:
            free = (~self.keep[n]).nonzero().squeeze(1)
            pick = free[torch.argsort(cost[free], stable=True)[:extra]]
            self.keep[n][pick] = True

    # ---- step 3: the compact graph and its weights
    def build(self):
        """(compact graph, state dict, mapping compact node -> (supernet node, kept idx))."""
        keep = {n: self.kept[n].nonzero().squeeze(1) for n in self.order if self.survive[n]}
        g = ArchGraph(**self.g.graph)
        for n in self.order:
            if n not in keep:
                continue
            attrs = dict(self.g.nodes[n])
            if "units" in attrs:
                attrs["units"] = len(keep[n])
            if self.op(n) == "select":  # the kept input units, in the compact numbering
                pos = torch.full((self.units[self.ins[n][0]],), -1, dtype=torch.long)
                pos[keep[self.ins[n][0]]] = torch.arange(len(keep[self.ins[n][0]]))
                attrs["channels"] = pos[self.channels(n)[keep[n]]].tolist()
            if self.op(n) == "mul" and not all(torch.equal(keep[s], keep[n])
                                               for s in self.ins[n]):
                raise ExtractionError(f"the inputs of mul node {n!r} keep different units; "
                                      f"this is a bug in archdisc.extract.core")
            g.add_node(n, **attrs)
        for n in g:
            slot = 0
            for s in self.ins[n]:
                if s not in keep or not self.edge_live(s, n):
                    continue
                e = self.g.edges[s, n]
                index = None
                if self.op(n) == "add":
                    pos = torch.full((self.units[n],), -1, dtype=torch.long)
                    pos[keep[n]] = torch.arange(len(keep[n]))
                    new = pos[self.index(s, n)[keep[s]]]
                    assert bool((new >= 0).all()), f"edge {s}->{n}: unit outside the add"
                    if not torch.equal(new, torch.arange(len(keep[n]))):
                        index = new.tolist()
                g.add_edge(s, n, slot=slot, gate=e["gate"], index=index)
                slot += 1
        if any(g.in_degree(n) == 0 for n in g if self.op(n) != "input") or \
                any(g.out_degree(n) == 0 for n in g.input_nodes()):
            raise ExtractionError("extraction left an input unread or a node without inputs; "
                                  "this is a bug in archdisc.extract.core")
        state = {}
        for n in g:
            spec, k = OPS[self.g.nodes[n]["op"]], keep[n]
            if spec.kind == "layer":
                state.update(self._layer(n, k, keep[self.ins[n][0]]))
            for key in spec.sliced:
                if self.param(n, key) is not None:  # (an optional bias)
                    state[f"layers.{n}.{key}"] = self.param(n, key).index_select(0, k)
            for key in spec.copied:
                state[f"layers.{n}.{key}"] = self.param(n, key)
            for s in g.predecessors(n):
                gt = self.gate(s, n)
                if gt is not None:
                    state[f"gates.{gate_name(s, n)}"] = \
                        gt.clone() if g.edges[s, n]["gate"] == "scalar" else gt[keep[s]]
        mapping = {n: (n, k) for n, k in keep.items()}
        return g, state, mapping

    def _layer(self, n, rows, cols):
        """Sliced weight and bias of layer ``n``; constants it stops reading fold into the bias."""
        s, a = self.ins[n][0], self.g.nodes[n]
        if self.grouped(n):  # kept whole (see _backward)
            if len(rows) != self.units[n] or len(cols) != self.units[s]:
                raise ExtractionError(f"grouped conv {n!r} lost units; this is a bug in "
                                      f"archdisc.extract.core")
            return {f"layers.{n}.{k}": self.param(n, k) for k in ("weight", "bias")
                    if self.param(n, k) is not None}
        w = self.param(n, "weight").index_select(0, rows)
        out = {f"layers.{n}.weight": w.index_select(1, cols)}
        drop = torch.ones(self.units[s], dtype=torch.bool)
        drop[cols] = False
        rvar, rval = self.read(s, n)
        wd = w[:, drop]
        if wd.dim() == 4:
            nzd, wd = (wd != 0).flatten(2).any(2), wd.sum((2, 3), dtype=torch.float64)
        else:
            nzd, wd = wd != 0, wd.double()
        g = self.gate(s, n)
        if g is not None:
            nzd &= (g != 0).expand(rvar.shape)[drop]
        if bool((nzd & rvar[drop]).any()):
            raise ExtractionError(f"node {n!r} reads a varying unit that was removed; "
                                  "this is a bug in archdisc.extract.core")
        fold = wd @ rval[drop]
        if a["bias"]:
            b = self.param(n, "bias").index_select(0, rows)
            out[f"layers.{n}.bias"] = (b.double() + fold).to(b.dtype)
        elif bool((fold != 0).any()):
            raise ExtractionError(f"node {n!r} has no bias to fold a constant into; "
                                  "this is a bug in archdisc.extract.core")
        return out


def _kernel_sums(w, groups: int = 1):
    """Which weights are non-zero, and their sums, per (output unit, input unit) of a
    linear or conv weight (kernel sums for a conv); a grouped conv's blocks lie on the
    diagonal."""
    if w.dim() == 2:
        return w != 0, w.double()
    nz, ws = (w != 0).flatten(2).any(2), w.sum((2, 3), dtype=torch.float64)
    if groups > 1:
        per = w.shape[0] // groups
        nz = torch.block_diag(*nz.double().split(per)) != 0
        ws = torch.block_diag(*ws.split(per))
    return nz, ws


def _first(*masks) -> int:
    """Index of the first True entry of the first mask that has one (else 0)."""
    for m in masks:
        if m.any():
            return int(m.nonzero()[0])
    return 0


def _fold_batchnorm(g: ArchGraph, state: dict, mapping: dict):
    """Fold every BatchNorm whose only input is a conv read by nothing else into that conv."""
    for n in list(g.order()):
        if g.nodes[n]["op"] != "batchnorm2d":
            continue
        (c,) = g.inputs(n)
        if g.nodes[c]["op"] != "conv2d" or g.edges[c, n]["gate"] or g.out_degree(c) != 1:
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


# ---------------------------------------------------------------------- report
def extraction_report(supernet_graph: ArchGraph, compact_graph: ArchGraph) -> dict:
    """Sizes of supernet and compact model, units per layer / add, candidate edges kept."""
    sg, cg = supernet_graph, compact_graph
    p0, p1, m0, m1 = count_params(sg), count_params(cg), count_macs(sg), count_macs(cg)
    sunits = sg.units()
    units = {n: {"op": sg.nodes[n]["op"], "alive": cg.nodes[n]["units"] if n in cg else 0,
                 "supernet": sunits[n]}
             for n in sg.order() if OPS[sg.nodes[n]["op"]].kind in ("layer", "add")}

    def kept(u, v):  # with fold_bn a BatchNorm's out-edges start at its conv
        return cg.has_edge(u, v) or (u not in cg and sg.nodes[u]["op"] == "batchnorm2d"
                                     and any(cg.has_edge(p, v) for p in sg.predecessors(u)))

    cand = sorted(sg.candidate_edges())
    return {
        "name": sg.name,
        "params": {"supernet": p0, "compact": p1, "ratio": p1 / max(1, p0)},
        "macs": {"supernet": m0, "compact": m1, "ratio": m1 / max(1, m0)},
        "units": units,
        "edges": {"kept": [[u, v] for u, v in cand if kept(u, v)],
                  "removed": [[u, v] for u, v in cand if not kept(u, v)]},
        "nodes_removed": [n for n in sg.order() if n not in cg],
    }


def format_report(report: dict) -> str:
    """A fixed-width text table of :func:`extraction_report`'s result."""
    lines = [f"extraction report: {report.get('name') or '(unnamed)'}",
             f"{'':<8}{'supernet':>14}{'compact':>14}{'ratio':>9}"]
    for key, label in (("params", "params"), ("macs", "MACs")):
        r = report[key]
        lines.append(f"{label:<8}{r['supernet']:>14,}{r['compact']:>14,}{r['ratio']:>9.4f}")
    units = report["units"]
    if units:
        width = max(12, *(len(n) for n in units)) + 2
        lines += ["", f"{'node':<{width}}{'op':<9}{'alive':>8}{'of':>8}{'kept':>8}"]
        for n, u in units.items():
            frac = u["alive"] / max(1, u["supernet"])
            lines.append(f"{n:<{width}}{u['op']:<9}{u['alive']:>8}{u['supernet']:>8}"
                         f"{100 * frac:>7.1f}%")
    kept, removed = report["edges"]["kept"], report["edges"]["removed"]
    if kept or removed:
        lines += ["", f"candidate edges: {len(kept)} kept, {len(removed)} removed"]
        lines += [f"  kept     {u} -> {v}" for u, v in kept]
        lines += [f"  removed  {u} -> {v}" for u, v in removed]
    if report.get("nodes_removed"):
        lines += ["", "nodes removed: " + ", ".join(report["nodes_removed"])]
    return "\n".join(lines)
