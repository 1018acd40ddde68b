"""What each kind of op means to the graph, the compiler and extraction: one handler per kind.

An op of the registry (:mod:`archdisc.graph.ops`) names its ``kind``; :data:`KINDS` maps a
kind to its handler. A handler answers, for one node ``n``:

* ``shape(g, n, ins)``: the output shape from the inputs' ``[(src, shape)]``;
* ``forward(net, n, vals, srcs)``: the output from the (gated) inputs ``vals`` of ``srcs``;
* ``values(ex, n, reads)``: extraction's step 1, ``(var, val)`` per unit (varies with the
  input / the exact value of a constant unit);
* ``kept(ex, n, fwd)`` and ``demand(ex, n, d, fwd, dem)``: extraction's step 2, the units
  kept given what the inputs keep, and the demand ``d`` on ``n`` pushed to its inputs;
* ``compact(ex, n, attrs, keep)`` and ``weights(ex, n, keep)``: step 3, the compact node's
  attributes and its sliced weights;
* ``edge_index(ex, s, n, keep)``: the index on a compact edge into ``n``;
* ``widen_reader(dep, v, n, old, new, pos)``: the deployment rewrite (deploy/rewrite.py)
  gives ``n``'s input ``v`` ``new`` units (old unit j at ``pos[j]``, the others zero):
  the step that keeps ``n``'s function, or None when it cannot be done exactly.

``ex`` is the extractor of :mod:`archdisc.extract.analysis` (masks live in the supernet's
unit spaces; see that module for the rules). Class attributes say the rest: ``width``
(the kind defines its width: its units are searched / kept), ``merges`` (its in-edges
survive only when they carry something it keeps), ``fixed`` (always survives). Adding a
kind is one handler here; adding an op of an existing kind is one entry in ops.py.
"""
from __future__ import annotations

import math

import torch

from archdisc.errors import ExtractionError, GraphError
from archdisc.graph.ops import OPS, first_true, kernel_sums, padded


class Kind:
    """A per-unit op with one input (``channelwise``): activations, norms, pooling,
    depthwise convs; its units are its input's, one to one."""
    width = merges = fixed = False

    def shape(self, g, n, ins):
        a, (src, s) = g.nodes[n], ins[0]
        op = OPS[a["op"]]
        if op.spatial and len(s) != 3:
            raise GraphError(f"{op.name} node {n!r} needs a (C, H, W) input, got {s} "
                             f"from {src!r}")
        if op.out_shape is None:
            return s
        try:
            return tuple(op.out_shape(a, s))
        except GraphError as e:
            raise GraphError(f"node {n!r}: {e}") from None

    def forward(self, net, n, vals, srcs):
        return net.layers[n](vals[0])

    def values(self, ex, n, reads):
        var, val = reads[0]
        a = ex.g.nodes[n]
        constant = OPS[a["op"]].constant
        if constant is not None:
            var, val = constant(a, lambda key: ex.param(n, key), var, val)
        return var, val

    def kept(self, ex, n, fwd):
        return fwd[ex.ins[n][0]].clone()

    def demand(self, ex, n, d, fwd, dem):
        s = ex.ins[n][0]
        spec, read = OPS[ex.g.nodes[n]["op"]], d.any() or fwd[n].any()
        if spec.mixes and read:
            dem[s][:] = True  # all units or none (a layer norm reads them all)
        elif spec.pools and read:
            dem[s] |= d | ex.var[s] | (ex.val[s] != 0)
        else:
            dem[s] |= d

    def compact(self, ex, n, attrs, keep):  # a node that defines its width keeps fewer
        return {**attrs, "units": len(keep[n])} if "units" in attrs else attrs

    def weights(self, ex, n, keep):
        spec, k, out = OPS[ex.g.nodes[n]["op"]], keep[n], {}
        for key in spec.sliced:
            if ex.param(n, key) is not None:  # (an optional bias)
                out[f"layers.{n}.{key}"] = ex.param(n, key).index_select(0, k)
        for key in spec.copied:
            out[f"layers.{n}.{key}"] = ex.param(n, key)
        return out

    def edge_index(self, ex, s, n, keep):
        return None

    def widen_reader(self, dep, v, n, old, new, pos):
        return None


class Input(Kind):
    fixed = True

    def shape(self, g, n, ins):
        return tuple(g.nodes[n]["shape"])

    def values(self, ex, n, reads):
        return (torch.ones(ex.units[n], dtype=torch.bool),
                torch.zeros(ex.units[n], dtype=torch.float64))

    def kept(self, ex, n, fwd):
        return torch.ones(ex.units[n], dtype=torch.bool)

    def demand(self, ex, n, d, fwd, dem):
        pass


class Output(Kind):
    fixed = True

    def shape(self, g, n, ins):
        src, s = ins[0]
        if g.nodes[n]["tokens_last"] and len(s) != 2:
            raise GraphError(f"output node {n!r} with tokens_last needs a (features, tokens) "
                             f"input, got {s} from {src!r}")
        return (s[1], s[0]) if g.nodes[n]["tokens_last"] else s

    def forward(self, net, n, vals, srcs):
        return vals[0].transpose(1, 2) if net.graph.nodes[n]["tokens_last"] else vals[0]

    def kept(self, ex, n, fwd):
        if ex.g.nodes[n]["tokens_last"]:  # its units are tokens: all of them
            return torch.ones(ex.units[n], dtype=torch.bool)
        return super().kept(ex, n, fwd)

    def demand(self, ex, n, d, fwd, dem):
        if ex.g.nodes[n]["tokens_last"]:  # (L, D): every feature of every token
            dem[ex.ins[n][0]][:] = True
        else:
            super().demand(ex, n, d, fwd, dem)

    def values(self, ex, n, reads):
        return reads[0]


class Flatten(Kind):
    """(C, H, W) -> (C * H * W,): unit c of the input becomes H * W units."""

    def values(self, ex, n, reads):
        hw = math.prod(ex.shapes[ex.ins[n][0]][1:])
        return reads[0][0].repeat_interleave(hw), reads[0][1].repeat_interleave(hw)

    def kept(self, ex, n, fwd):
        s = ex.ins[n][0]
        return fwd[s].repeat_interleave(math.prod(ex.shapes[s][1:]))

    def demand(self, ex, n, d, fwd, dem):
        s = ex.ins[n][0]
        dem[s] |= d.view(ex.units[s], -1).any(1)


class Select(Kind):
    """Output unit j is input unit ``channels[j]``."""

    def values(self, ex, n, reads):
        var, val = reads[0]
        return var[ex.channels(n)], val[ex.channels(n)]

    def kept(self, ex, n, fwd):
        return fwd[ex.ins[n][0]][ex.channels(n)]

    def demand(self, ex, n, d, fwd, dem):
        dem[ex.ins[n][0]][ex.channels(n)[d]] = True

    def compact(self, ex, n, attrs, keep):  # the kept input units, compact numbering
        s = ex.ins[n][0]
        pos = torch.full((ex.units[s],), -1, dtype=torch.long)
        pos[keep[s]] = torch.arange(len(keep[s]))
        return {**attrs, "channels": pos[ex.channels(n)[keep[n]]].tolist()}


class Concat(Kind):
    merges = True

    def shape(self, g, n, ins):
        s = ins[0][1]
        for src, si in ins:
            if si[1:] != s[1:]:
                raise GraphError(f"concat node {n!r}: input {src!r} has shape {si}, "
                                 f"spatial size must be {list(s[1:])}")
        return (sum(si[0] for _, si in ins), *s[1:])

    def forward(self, net, n, vals, srcs):
        return torch.cat(vals, dim=net.unit_dim)

    def values(self, ex, n, reads):
        return torch.cat([r[0] for r in reads]), torch.cat([r[1] for r in reads])

    def kept(self, ex, n, fwd):
        return torch.cat([fwd[s] if (s, n) in ex.live else ex.zeros(s) for s in ex.ins[n]])

    def demand(self, ex, n, d, fwd, dem):
        ins = ex.ins[n]
        for s, part in zip(ins, d.split([ex.units[s] for s in ins])):
            if part.any():
                ex.live.add((s, n))
                dem[s] |= part


class Mul(Kind):
    """The product of two tensors with the same units (one may be (C, 1, 1)); its two
    inputs keep the same units: a coupled space, a unit goes only when neither needs it."""

    def shape(self, g, n, ins):
        (_, s0), (src, s1) = ins
        if s0[0] != s1[0] or len(s0) != len(s1) or any(
                x != y and 1 not in (x, y) for x, y in zip(s0[1:], s1[1:])):
            raise GraphError(f"mul node {n!r}: input {src!r} has shape {s1}, expected "
                             f"({s0[0]}, ...) broadcastable with {s0}")
        return tuple(max(x, y) for x, y in zip(s0, s1))

    def forward(self, net, n, vals, srcs):
        return vals[0] * vals[1]

    def values(self, ex, n, reads):  # a product with an exact zero is zero
        (vx, cx), (vg, cg) = reads
        zero = (~vx & (cx == 0)) | (~vg & (cg == 0))
        return (vx | vg) & ~zero, cx * cg

    def kept(self, ex, n, fwd):  # the same on both sides at the fixed point
        return fwd[ex.ins[n][0]] & fwd[ex.ins[n][1]]

    def demand(self, ex, n, d, fwd, dem):
        both = d | fwd[ex.ins[n][0]] | fwd[ex.ins[n][1]]
        for s in ex.ins[n]:
            dem[s] |= both

    def compact(self, ex, n, attrs, keep):
        if not all(torch.equal(keep[s], keep[n]) for s in ex.ins[n]):
            raise ExtractionError(f"the inputs of mul node {n!r} keep different units; "
                                  f"this is a bug in archdisc.extract")
        return attrs


class Add(Kind):
    """A sum over one explicit unit space; each member fills the positions its edge's
    ``index`` names. A unit dies only when it is dead in every member."""
    width = merges = True

    def shape(self, g, n, ins):
        a, s = g.nodes[n], ins[0][1]
        for src, si in ins:
            idx = g.edges[src, n]["index"]
            width = a["units"] if idx is None else len(idx)
            if si[0] != width or si[1:] != s[1:]:
                raise GraphError(f"add node {n!r}: input {src!r} has shape {si}, expected "
                                 f"({width}, *{list(s[1:])}) (mismatched widths at an add)")
            if idx is not None and (len(set(idx)) != len(idx)
                                    or any(not 0 <= i < a["units"] for i in idx)):
                raise GraphError(f"edge {src!r}->{n!r}: index must hold distinct "
                                 f"positions in [0, {a['units']})")
        return (a["units"], *s[1:])

    def forward(self, net, n, vals, srcs):
        out = None
        for src, v in zip(srcs, vals):
            pos = net.index_of(src, n)
            if pos is not None:  # widen a narrow member into the add's unit space
                d = net.unit_dim
                zero = v.new_zeros(v.shape[:d] + (1,) + v.shape[d + 1:])
                v = torch.cat([v, zero], d).index_select(d, pos)
            out = v if out is None else out + v
        return out

    def values(self, ex, n, reads):
        var = ex.zeros(n)
        val = torch.zeros(ex.units[n], dtype=torch.float64)
        for s, (rv, rc) in zip(ex.ins[n], reads):
            idx = ex.index(s, n)
            var[idx] |= rv
            val.index_add_(0, idx, rc)
            ex.nonzero[s, n] = rv | (rc != 0)
        return var, val

    def kept(self, ex, n, fwd):  # the union of what the live members keep
        for s in ex.ins[n]:
            if (s, n) in ex.live:
                ex.keep[n][ex.index(s, n)[fwd[s]]] = True
        return ex.keep[n].clone()

    def demand(self, ex, n, d, fwd, dem):
        ins = ex.ins[n]
        ex.keep[n] |= d
        if ex.pads:
            new, nonzero = (torch.zeros(ex.units[n], dtype=torch.long) for _ in range(2))
            for s in ins:
                have = dem[s] | (fwd[s] if (s, n) in ex.live else False)
                idx, nzs = ex.index(s, n), ex.nonzero[s, n]
                new.index_add_(0, idx, (nzs & ~have).long())
                nonzero.index_add_(0, idx, nzs.long())
            ex.pad(n, 2 * new + (nonzero > 0))
        rows = ex.keep[n]
        if not rows.any():
            return
        for s in ins:
            need = rows[ex.index(s, n)] & ex.nonzero[s, n]
            if need.any():
                ex.live.add((s, n))
                dem[s] |= need
        if not any((s, n) in ex.live for s in ins):  # stay connected
            s = next((s for s in ins if rows[ex.index(s, n)].any()), ins[0])
            hit = rows[ex.index(s, n)].nonzero()
            dem[s][int(hit[0]) if len(hit) else 0] = True
            ex.live.add((s, n))

    def edge_index(self, ex, s, n, keep):
        pos = torch.full((ex.units[n],), -1, dtype=torch.long)
        pos[keep[n]] = torch.arange(len(keep[n]))
        new = pos[ex.index(s, n)[keep[s]]]
        assert bool((new >= 0).all()), f"edge {s}->{n}: unit outside the add"
        return None if torch.equal(new, torch.arange(len(keep[n]))) else new.tolist()

    def widen_reader(self, dep, v, n, old, new, pos):
        return dep.compose_index(v, n, old, new, pos)


class Layer(Kind):
    """linear / conv2d: defines its width; a unit reads its input units through its
    weights. A constant input unit is *foldable* into the bias: zero, or any constant
    read by a layer with a bias and no zero padding."""
    width = True

    def shape(self, g, n, ins):
        op, (src, s) = OPS[g.nodes[n]["op"]], ins[0]
        if not op.spatial and len(s) not in (1, 2):  # features, or (features, tokens)
            raise GraphError(f"{op.name} node {n!r} reads a {len(s)}-d input {s} from "
                             f"{src!r}; insert a 'flatten' or 'gap' node first")
        return super().shape(g, n, ins)

    def values(self, ex, n, reads):
        a, s = ex.g.nodes[n], ex.ins[n][0]
        rvar, rval = reads[0]
        nz, wsum = kernel_sums(ex.param(n, "weight"), a.get("groups", 1))
        g = ex.gate(s, n)
        if g is not None:
            nz &= (g != 0).expand(rvar.shape)
        var = (nz & rvar).any(1)
        pad = padded(a)
        if pad:  # zero padding makes a non-zero constant input vary at the borders
            var |= (nz & (rval != 0)).any(1)
        val = wsum @ rval
        if a["bias"]:
            val += ex.param(n, "bias").double()
        ex.foldable[n] = ~rvar & ((rval == 0) | (a["bias"] and not pad))
        ex.nz[n] = nz
        return var, val

    def kept(self, ex, n, fwd):
        return ex.keep[n].clone()

    def demand(self, ex, n, d, fwd, dem):
        a, s = ex.g.nodes[n], ex.ins[n][0]
        if not a["searchable"] and (d.any() or ex.keep[n].any()):
            d[:] = True  # (a grouped conv is never searchable)
        ex.keep[n] |= d
        if a["searchable"] and ex.pads:
            new = ex.nz[n] & ~ex.foldable[n] & ~(fwd[s] | dem[s])
            ex.pad(n, 2 * new.sum(1) + (ex.var[n] | (ex.val[n] != 0)))
        rows = ex.keep[n]
        if not rows.any():
            return
        read = ex.nz[n][rows].any(0)
        need = read & ~ex.foldable[n]
        if a.get("groups", 1) > 1:  # every channel of every group stays
            need[:] = True
        if not (fwd[s] | dem[s] | need).any():  # keep one input: stay connected
            const = ~ex.var[s]  # a constant unit needs nothing upstream
            need[first_true(read & const, const, read)] = True
        dem[s] |= need

    def widen_reader(self, dep, v, n, old, new, pos):  # zero columns (not in groups)
        if dep.g.nodes[n].get("groups", 1) == 1:
            return dep.widen_cols(n, new, torch.tensor(pos, dtype=torch.long))

    def weights(self, ex, n, keep):
        """Sliced weight and bias; the constants it stops reading fold into the bias."""
        s, a, rows, cols = ex.ins[n][0], ex.g.nodes[n], keep[n], keep[ex.ins[n][0]]
        if a.get("groups", 1) > 1:  # kept whole (see demand)
            if len(rows) != ex.units[n] or len(cols) != ex.units[s]:
                raise ExtractionError(f"grouped conv {n!r} lost units; this is a bug in "
                                      f"archdisc.extract")
            return {f"layers.{n}.{k}": ex.param(n, k) for k in ("weight", "bias")
                    if ex.param(n, k) is not None}
        w = ex.param(n, "weight").index_select(0, rows)
        out = {f"layers.{n}.weight": w.index_select(1, cols)}
        drop = torch.ones(ex.units[s], dtype=torch.bool)
        drop[cols] = False
        rvar, rval = ex.read(s, n)
        nzd, wd = kernel_sums(w[:, drop])
        g = ex.gate(s, n)
        if g is not None:
            nzd &= (g != 0).expand(rvar.shape)[drop]
        if bool((nzd & rvar[drop]).any()):
            raise ExtractionError(f"node {n!r} reads a varying unit that was removed; "
                                  "this is a bug in archdisc.extract")
        fold = wd @ rval[drop]
        if a["bias"]:
            b = ex.param(n, "bias").index_select(0, rows)
            out[f"layers.{n}.bias"] = (b.double() + fold).to(b.dtype)
        elif bool((fold != 0).any()):
            raise ExtractionError(f"node {n!r} has no bias to fold a constant into; "
                                  "this is a bug in archdisc.extract")
        return out


KINDS: dict[str, Kind] = {"input": Input(), "output": Output(), "layer": Layer(),
                          "channelwise": Kind(), "flatten": Flatten(), "select": Select(),
                          "concat": Concat(), "mul": Mul(), "add": Add()}


def kind(g, n) -> Kind:
    """The handler of node ``n`` of graph ``g``."""
    return KINDS[OPS[g.nodes[n]["op"]].kind]
