"""Structural groups derived from the graph: what the regularizer sees.

* A **unit group** of a searchable ``linear`` / ``conv2d`` node is everything that
  produces unit *i*: row / filter *i* of the weight, bias entry *i*, and entry *i* of
  the ``grouped`` tensors (ops.py) of the per-channel ops that follow it alone, as long
  as each maps a zero unit to zero: a normalisation's shift, and in a depthwise block
  (conv -> bn -> act -> dwconv -> bn) the depthwise filter and the second shift too.
  When the whole group is zero the unit outputs exactly zero in training
  (zero-invariant); in evaluation too once its BatchNorm running mean is zero, which
  :func:`clear_dead_means` sets (a unit that dies after training keeps a stale mean, and
  extraction would keep it as a constant channel). The BatchNorm scale stays outside the
  group: at 1 it lets a zero filter still receive gradient through the normalisation, so
  Bregman iterations can switch the channel on.
* A **coupled group** joins the unit groups of the layers whose unit *i* lands on position
  *i* of the same residual ``add`` (the stem and every block's last conv of a ResNet
  stage): the residual stream's channel *i* is zero, and extraction removes it, only when
  all of them are zero, so they are regularized as one group (:func:`coupled`). Gated
  edges into an add (candidate skips) do not couple: there the search chooses each width;
  a block gate (on a residual branch, ``from_module(depth=True)``) does.
* A **head group** of an attention node is head *i*: its query, key and value rows and
  its columns of the output projection (row *i* of the node's head-major tensors,
  graph/tokens.py); a zero head adds exactly nothing.
* An **edge group** is the gate of a candidate edge.

:func:`param_groups` turns these into optimizer param groups, each carrying its
regularizer under ``reg`` (the optimizers know nothing about graphs).
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from archdisc.errors import ConfigError
from archdisc.graph.compile import ArchNet, gate_name
from archdisc.graph.ops import OPS
from archdisc.optim import L1, GroupL2, KernelL2, TensorL2
from archdisc.sparsity.init import bias_init_, sparse_init_

MODES = ("unit", "kernel", "element")


def unit_members(net: ArchNet) -> dict[str, list[str]]:
    """Searchable node -> names (in ``net.named_parameters()``) of its unit group's tensors."""
    return {n: names for n, (names, _) in _chains(net).items()}


def _chains(net: ArchNet) -> dict[str, tuple[list[str], list[str]]]:
    """Searchable node -> (its unit group's tensors, the nodes whose unit i is exactly zero
    when the group's unit i is: the node and the per-channel ops after it)."""
    g, out, params = net.graph, {}, dict(net.named_parameters())
    for n in g.order():
        a = g.nodes[n]
        if OPS[a["op"]].kind == "attention" and a["searchable"]:  # unit i: head i
            out[n] = ([f"layers.{n}.{k}" for k in OPS[a["op"]].grouped
                       if f"layers.{n}.{k}" in params], [])
        if OPS[a["op"]].kind != "layer" or not a["searchable"]:
            continue
        names = [f"layers.{n}.weight"] + ([f"layers.{n}.bias"] if a["bias"] else [])
        cur, zero = n, [n]
        while g.out_degree(cur) == 1:  # the per-channel ops reading only this unit
            nxt = next(iter(g.successors(cur)))
            spec = OPS[g.nodes[nxt]["op"]]
            if spec.kind != "channelwise" or g.edges[cur, nxt]["gate"]:
                break
            names += [f"layers.{nxt}.{k}" for k in spec.grouped
                      if f"layers.{nxt}.{k}" in params]
            if not spec.keeps_zero(g.nodes[nxt]):
                break
            cur = nxt
            zero.append(cur)
        out[n] = (names, zero)
    return out


@torch.no_grad()
def clear_dead_means(net: ArchNet) -> None:
    """Zero the running mean, in the BatchNorms of its zero chain, of every unit whose unit
    group is zero: the batch mean such a unit sees in training, so the running mean's own
    limit; the unit then outputs exactly zero in evaluation too."""
    params, buffers = dict(net.named_parameters()), dict(net.named_buffers())
    for names, zero in _chains(net).values():
        means = [buffers[f"layers.{n}.running_mean"] for n in zero
                 if f"layers.{n}.running_mean" in buffers]
        if means:
            alive = torch.stack([params[p].reshape(len(params[p]), -1).ne(0).any(1)
                                 for p in names]).any(0)
            for m in means:
                m.mul_(alive)


def coupled(net: ArchNet) -> list[list[str]]:
    """The coupled unit spaces: lists (in graph order) of the searchable layers and ``add``
    nodes whose unit i is one channel of a residual stream. An add couples its inputs when
    each is ungated (or behind a block gate), unremapped (no ``index``) and zero exactly
    when a searchable layer's unit group, or another coupled add, is zero (through
    parameter-free, zero-keeping ops such as ReLU or max-pooling)."""
    g, params = net.graph, {k.split(".")[1] for k, _ in net.named_parameters()
                            if k.startswith("layers.")}
    owner, root, linked = {}, {}, set()

    def find(x):
        while root.get(x, x) != x:
            x = root[x]
        return x

    for n, (_, zero) in _chains(net).items():
        owner.update({z: n for z in zero})
    for n in g.order():
        a, ins = g.nodes[n], g.inputs(n)
        if a["op"] == "add" and all(s in owner and g.edges[s, n]["gate"] in (None, "block")
                                    and g.edges[s, n]["index"] is None for s in ins):
            owner[n] = n
            linked.add(n)
            for s in ins:
                linked.add(owner[s])
                root[find(owner[s])] = find(n)
        elif (n not in owner and len(ins) == 1 and ins[0] in owner and n not in params
              and OPS[a["op"]].kind == "channelwise" and OPS[a["op"]].keeps_zero(a)
              and g.edges[ins[0], n]["gate"] is None):
            owner[n] = owner[ins[0]]
    spaces = {}
    for n in g.order():
        if n in linked:
            spaces.setdefault(find(n), []).append(n)
    return [s for s in spaces.values() if sum(g.nodes[x]["op"] != "add" for x in s) > 1]


def param_groups(net: ArchNet, lam: float = 0.1, lam_edge: float | None = None,
                 mode: str = "unit") -> list[dict]:
    """Optimizer param groups for ``net``.

    ``mode`` ``"unit"``: one GroupL2(lam) group per searchable node (neurons / channels),
    or per coupled space (:func:`coupled`; named by its layers joined with ``+``; its
    ``nodes`` also list the space's adds);
    ``"kernel"``: conv weights under KernelL2(lam) (each (out, in) kernel), linear
    nodes still by unit; ``"element"``: plain L1(lam) on searchable weights.
    Gates of candidate edges get TensorL2(lam_edge) (default: ``lam``), group "gates"; gates
    of residual blocks (``depth``) the same, group "blocks".
    Everything else (the output head, for instance) is unregularized.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: choose one of {MODES}")
    for name, value in (("lam", lam), ("lam_edge", lam_edge)):
        if not (value is None and name == "lam_edge" or _finite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    lam_edge = lam if lam_edge is None else lam_edge
    params = dict(net.named_parameters())
    members, taken, groups = unit_members(net), set(), []
    spaces = {n: s for s in coupled(net) for n in s}
    for n, names in members.items():
        if n in taken:
            continue
        if mode == "unit" or (mode == "kernel" and params[names[0]].dim() != 4):
            nodes = spaces.get(n, [n]) if mode == "unit" else [n]
            layers = [x for x in nodes if x in members]
            names = [p for x in layers for p in members[x]]
            groups.append({"params": [params[p] for p in names], "reg": GroupL2(lam),
                           "name": "+".join(layers), "nodes": nodes, "kind": "unit"})
            taken.update(names + layers)
        else:
            reg = KernelL2(lam) if mode == "kernel" else L1(lam)
            groups.append({"params": [params[names[0]]], "reg": reg, "name": n,
                           "nodes": [n], "kind": mode})
            taken.add(names[0])
    blocks = block_gates(net)
    for name, keys in (("gates", [k for k in params if k.startswith("gates.") and k not in blocks]),
                       ("blocks", [k for k in params if k in blocks])):
        if keys:  # candidate edges, and residual blocks (depth): one group each
            groups.append({"params": [params[k] for k in keys], "reg": TensorL2(lam_edge),
                           "name": name, "kind": "edge"})
            taken.update(keys)
    rest = [p for k, p in params.items() if k not in taken]
    if rest:
        groups.append({"params": rest, "reg": None, "name": "rest", "kind": "dense"})
    return groups


@torch.no_grad()
def sparse_init(net: ArchNet, density: float = 0.1, mode: str = "unit", damping: float = 1.0,
                bias_r: float = 1.0, gate_init: float = 0.0, seed: int = 0) -> ArchNet:
    """Sparse initialisation at the level of the structural groups.

    Searchable nodes keep each unit (``mode="unit"``), conv kernel (``"kernel"``) or
    weight element (``"element"``) with probability ``density``; survivors keep the
    Kaiming variance. Dead units get zero bias and zero BatchNorm affine entries, so
    they output exactly zero. The layers of a coupled space (unit mode) share one mask.
    Gates start at ``gate_init`` (0: every candidate edge off), block gates at 1.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: choose one of {MODES}")
    if not (_finite(density) and 0 < density <= 1):
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    if not (_finite(damping) and damping > 0):
        raise ConfigError(f"damping must be a finite number > 0, got {damping!r}")
    if not (_finite(bias_r) and bias_r >= 0):
        raise ConfigError(f"bias_r must be a finite number >= 0, got {bias_r!r}")
    if not _finite(gate_init):
        raise ConfigError(f"gate_init must be a finite number, got {gate_init!r}")
    if not isinstance(seed, Integral) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    params, masks = dict(net.named_parameters()), {}
    space = {n: s[0] for s in coupled(net) for n in s} if mode == "unit" else {}
    for n, names in unit_members(net).items():
        w = params[names[0]]
        kind = "unit" if mode == "unit" or (mode == "kernel" and w.dim() != 4) else mode
        heads = OPS[net.graph.nodes[n]["op"]].kind == "attention"
        fan_in = w.shape[-1] if heads else math.prod(w.shape[1:])
        keep = sparse_init_(w, density, mode=kind, damping=damping, generator=gen,
                            fan_in=fan_in, mask=masks.get(space.get(n)))
        if n in space:
            masks[space[n]] = keep
        alive = keep if kind == "unit" else w.reshape(w.shape[0], -1).ne(0).any(1)
        for p in names[1:] if heads else ():  # a dead head's bias and output columns
            params[p][~alive] = 0
        if f"layers.{n}.bias" in params:
            bias_init_(params[f"layers.{n}.bias"], fan_in, r=bias_r, generator=gen, mask=alive)
        for p in names[1:]:
            if p.startswith(f"layers.{n}."):  # (a head's: above)
                continue
            if params[p].dim() == 1:  # BatchNorm shift 0 (scale stays 1): a dead channel
                params[p].zero_()     # outputs exactly 0
            else:                     # a depthwise filter: zero for the dead channels
                params[p][~alive] = 0
    return init_gates(net, gate_init)


def block_gates(net: ArchNet) -> set[str]:
    """The parameter names of the gates on residual blocks (``depth``), not on candidate edges."""
    g = net.graph
    return {f"gates.{gate_name(u, v)}" for u, v in g.candidate_edges()
            if g.edges[u, v]["gate"] == "block"}


@torch.no_grad()
def init_gates(net: ArchNet, gate_init: float = 0.0) -> ArchNet:
    """Candidate-edge gates to ``gate_init`` (0: every candidate edge off), block gates to 1."""
    blocks = block_gates(net)
    for k, p in net.named_parameters():
        if k.startswith("gates."):
            p.fill_(1.0 if k in blocks else gate_init)
    return net


def _finite(x) -> bool:
    return isinstance(x, Real) and math.isfinite(x)


@torch.no_grad()
def alive(net: ArchNet) -> dict:
    """Alive units per searchable node (non-zero unit group) and alive candidate edges."""
    params = dict(net.named_parameters())
    units = {}
    for n, names in unit_members(net).items():
        nz = sum(params[p].reshape(params[p].shape[0], -1).ne(0).any(1).long() for p in names)
        units[n] = int((nz > 0).sum())
    edges = {k: bool(p.ne(0).any()) for k, p in net.gates.items()}
    return {"units": units, "edges": edges}
