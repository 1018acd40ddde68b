"""Selection: the width the held-out data asks for.

The Bregman search admits units in order of significance, and given time it admits them
all: lam sets *when* units enter, not how many the data needs. So the search only proposes;
this stage decides, on the validation split, by shrinking the extracted model:

1. refit the extracted model briefly (Adam, lr decaying to 0), so that it is judged at its
   ability rather than at the shrunken iterate of the search;
2. per stage, one candidate per searchable layer: remove the weakest ``select_frac`` of
   its units (score: RMS of the unit's activation on training samples times the norm of
   the weights reading it), refit ``select_steps`` steps, score on validation; keep the
   candidate with the lowest validation loss;
3. stop when the kept candidate's metric falls ``STOP`` standard errors below the best
   seen, or nothing can shrink;
4. return the smallest snapshot whose validation metric is within ``select_tol`` standard
   errors of the best (the standard error of the per-sample metric over the validation
   split).

Removing units is exact: their whole unit group is zeroed and extraction rebuilds the model.
Measured (experiments/RESULTS.md, section 8): the width now responds to validation data,
but validation does not pin it - on planted teachers it lands 1-4x the teacher's width in
1 of 9 runs; variants that were tried and removed (among them the per-layer width sweep,
``select_sweep``) are in experiments/HISTORY.md with their numbers.
``select = "scale"`` (:func:`scale_select`) trains candidates afresh instead of cutting
warm ones: on the demo its size and accuracy move less with the initial density and lam.
"""
from __future__ import annotations

import copy
import math

import torch

from archdisc.extract import extract
from archdisc.graph.compile import ArchNet, compile_graph
from archdisc.graph.ops import OPS, width
from archdisc.graph.tokens import value_start
from archdisc.recipe.loop import batches, epoch_order, loss_fn, masked_adam, tensors, train_epoch
from archdisc.sparsity.groups import unit_members

__all__ = ["shrink_select", "scale_select"]

STOP = 5.0  # standard errors below the best: the shrink goes no further
PER_LAYER_AT_MOST = 4  # deeper nets: a stage cuts every layer at once (one candidate)
GRID = 2 ** 0.5  # scale: neighbouring candidates differ by this factor in width


def shrink_select(compact: ArchNet, data, config, device, log=print, supernet=None,
                  limits=None):
    """The selected compact model and the path of snapshots (dicts) it was chosen from, by
    ``config``'s rule: the greedy shrink below or :func:`scale_select` (``supernet``: the
    searched net, whose widths and size bound scale's growth; ``limits``: the per-layer
    limits, :func:`archdisc.sparsity.budget.limits_of`, that every cut keeps)."""
    if config.select == "scale":
        return scale_select(compact, data, config, device, log, supernet, limits)
    probe, refit, snapshot = _tools(data, config, device)
    net = refit(_copy(compact), 5 * config.select_steps)
    path = [snapshot(net, 0)]
    log(_line(path[-1], data.metric))
    best = path[0]["metric"]
    # a candidate per layer; a deep net's relative widths are the search's, and only their
    # common scale is chosen here (O(stages) refits instead of O(stages x layers))
    joint = len(_shrinkable(net)) > PER_LAYER_AT_MOST
    r = (limits or {}).get("round_to", 1)  # cut whole multiples of it
    while True:
        with torch.no_grad():
            env = net.eval().activations(probe)  # shared by every candidate of the stage
        cut = {n: -(-int(config.select_frac * width(net.graph.nodes[n])) // r) * r
               for n in _shrinkable(net)}
        if joint:  # every layer wide enough to lose select_frac of its units
            groups = [[n for n, k in cut.items() if k >= 1]]
        else:
            groups = [[n] for n in cut]
        groups = [g for g in groups if g]
        if not groups:
            break
        cuts = [_remove_weakest(net, {n: max(1, cut[n]) for n in group}, env, probe, limits)
                for group in groups]
        cuts = [c for c in cuts if _size(c) < _size(net)]
        if not cuts:  # no cut makes the model smaller (units tied through residual sums)
            break
        candidates = [snapshot(refit(c, config.select_steps), len(path), joint=joint)
                      for c in cuts]
        kept = min(candidates, key=lambda c: c["val_loss"])
        path.append(kept)
        log(_line(kept, data.metric))
        net = kept["net"]
        if kept["metric"] < best - STOP * kept["se"]:
            break
        best = max(best, kept["metric"])
    return _finish(path, _pick(path, config.select_tol))


def scale_select(compact: ArchNet, data, config, device, log=print, supernet=None,
                 limits=None):
    """``select = "scale"``: the search's shape at sqrt(2) steps of scale, each trained
    afresh; the validation data picks the scale.

    The search proposes the shape (which units, inputs and edges survive, and how wide each
    layer is relative to the others). Candidate j has ``w * sqrt(2)**-j`` units in every
    searchable layer of width w: j > 0 keeps the top-scored ``ceil`` of them, j < 0 is wider
    (rounded), up to the supernet's widths, where the graph allows
    it. Each is re-initialized with the same seed, trained ``10 x select_steps`` Adam steps
    (cosine) on the same batch order (common random numbers: candidates differ by their
    widths, not by luck) and scored on validation; narrowing stops ``STOP`` standard
    errors below the best or at one unit per layer. The smallest candidate within
    ``select_tol`` standard errors of the best is kept (the one-standard-error rule). Fresh,
    equal-length trainings because warm-started cuts of a wide layer stay far below the same
    width trained from scratch (RESULTS.md section 8), which biased the warm rules to wide
    models. Without ``supernet`` (the searched net) nothing grows.
    """
    probe, refit, snapshot = _tools(data, config, device)
    parent = _copy(compact).eval()
    dev = next(parent.parameters()).device
    with torch.no_grad():
        env = parent.activations(probe)
    widths0 = {n: width(parent.graph.nodes[n]) for n in unit_members(parent)}
    sums = {n: a["units"] for n, a in parent.graph.nodes(data=True) if a["op"] == "add"}
    graph = supernet.graph if supernet is not None else parent.graph
    cap = {n: (width(graph.nodes[n]) if n in widths0 else graph.nodes[n]["units"])
           if n in graph else w
           for n, w in {**widths0, **sums}.items()}  # sums: widths tied by a residual add

    def build(targets):
        """A fresh, untrained net of ``targets`` widths, or None if it cannot be built."""
        if all(targets[n] <= w for n, w in widths0.items()):
            cuts = {n: w - targets[n] for n, w in widths0.items() if targets[n] < w}
            graph = (_remove_weakest(parent, cuts, env, probe, limits) if cuts
                     else parent).graph
        else:
            graph = copy.deepcopy(parent.graph)
            for n, t in targets.items():
                graph.nodes[n][OPS[graph.nodes[n]["op"]].searched] = t
            try:
                graph.shapes()
            except (ValueError, KeyError):
                return None  # units tied to positions (index edges, sums): no wider shape
        torch.manual_seed(config.seed + 3)
        return compile_graph(graph).to(dev).train()

    def scaled(j):
        if j <= 0:  # the sums grow with the layers they add up
            return {n: min(cap[n], round(w * GRID ** -j))
                    for n, w in {**widths0, **sums}.items()}
        return {n: math.ceil(w / GRID ** j) for n, w in widths0.items()}

    def train(net, **tag):
        s = snapshot(refit(net, 10 * config.select_steps, same_order=True), len(path), **tag)
        path.append(s)
        log(_line(s, data.metric))
        return s

    path = []
    train(build(scaled(0)), scale=1.0)  # the extracted shape itself, trained afresh
    sizes, j = [path[0]["params"]], 0
    while any(w < cap[n] for n, w in scaled(j).items()):  # wider, up to the supernet
        j -= 1
        net = build(scaled(j))
        if net is None:
            log("select: no wider candidate (these widths are tied to others in the graph)")
            break
        size = _size(net)
        if all(abs(size - t) >= 0.2 * t for t in sizes):  # not hardly wider
            sizes.append(size)
            train(net, scale=GRID ** -j)
    best = max(s["metric"] for s in path)
    last, j = widths0, 0
    while any(w > 1 for w in last.values()):  # narrower, down to one unit per layer
        j += 1
        targets = scaled(j)
        if targets == last:
            continue  # ceil() left every width as it was
        last = targets
        s = train(build(last), scale=GRID ** -j)
        if s["metric"] < best - STOP * s["se"]:
            break
        best = max(best, s["metric"])
    return _finish(path, _pick(path, config.select_tol))


def _finish(path, chosen):
    """(the chosen net, the path without nets and with the chosen snapshot marked)."""
    for s in path:
        s["chosen"] = s is chosen
    return chosen["net"], [{k: v for k, v in s.items() if k != "net"} for s in path]


def _pick(path, tol):
    """The smallest snapshot within ``tol`` standard errors of the best one."""
    top = max(path, key=lambda s: s["metric"])
    ok = [s for s in path if s["metric"] >= top["metric"] - tol * top["se"]]
    return min(ok, key=lambda s: (s["params"], -s["metric"]))


def _tools(data, config, device):
    """(probe batch, refit, snapshot): what the selection rules share."""
    x, y = tensors(data.train, device)  # y is None: streamed
    n = len(data.train)
    step = [0]

    def refit(net, steps, same_order=False):
        """``steps`` of Adam, lr from select_lr down to 0 (cosine): the model is judged
        settled, not in the middle of its noisy steps. ``same_order``: the batches every
        such refit sees (common random numbers: candidates differ by their width only)."""
        opt, on_step = masked_adam(net, config, config.select_lr, steps, cosine=True)
        if same_order:
            step[0] = 0
        done = 0
        while done < steps:
            step[0] += 1
            order = epoch_order(config.seed + 2, step[0], n)
            order = order[:(steps - done) * config.batch_size]
            train_epoch(net, opt, x, y, data.task, config.batch_size, order, on_step=on_step,
                        workers=config.loader_workers)
            done += math.ceil(len(order) / config.batch_size)
        return net.eval()

    def snapshot(net, stage, **extra):
        metric, se, loss = _scores(net, data, device, config.loader_workers)
        widths = {n: width(net.graph.nodes[n]) for n in unit_members(net)}
        return {"stage": stage, "widths": widths, "metric": metric, "se": se,
                "val_loss": loss, "params": _size(net),
                **extra, "net": net}

    return next(batches(data.train, 1024, device))[0], refit, snapshot


def _line(s, metric):
    widths = "-".join(str(w) for w in s["widths"].values())
    return (f"select stage {s['stage']}: widths {widths}, {s['params']:,} params, "
            f"val {metric} {s['metric']:.2f} (se {s['se']:.2f})")


def _copy(net: ArchNet) -> ArchNet:
    return copy.deepcopy(net).train()


@torch.no_grad()
def _scores(net, data, device, workers=0):
    """Validation metric, the standard error of its per-sample values, and the mean loss."""
    outs, ys = zip(*((net(xb), yb) for xb, yb in batches(data.val, 1024, device, workers)))
    out, yv = torch.cat(outs), torch.cat(ys)
    loss = float(loss_fn(out, yv, data.task))
    if data.metric == "accuracy":
        per = (out.argmax(-1) == yv).double().flatten(1).mean(1) * 100 if yv.dim() > 1 \
            else (out.argmax(-1) == yv).double() * 100  # per sample (of its tokens)
        metric = float(per.mean())
    else:
        mse = (out.double() - yv.double().reshape(out.shape)).pow(2).flatten(1).mean(1)
        per = -10 * torch.log10(mse.clamp(min=1e-12))
        metric = float(-10 * torch.log10(mse.mean()))
    se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else 0.0
    return metric, se, loss


def _size(net) -> int:
    return sum(p.numel() for p in net.parameters())


def _shrinkable(net: ArchNet) -> list[str]:
    return [n for n in unit_members(net) if width(net.graph.nodes[n]) > 1]


@torch.no_grad()
def _remove_weakest(net: ArchNet, cuts: dict, env: dict, probe, limits=None) -> ArchNet:
    """A copy of ``net`` without the weakest ``cuts[n]`` units of each node ``n`` (scores
    from ``net`` as it is: ``env`` holds its eval-mode activations on ``probe``)."""
    g = net.graph
    net = _copy(net).eval()
    members, weakest = unit_members(net), {}
    for n, k in cuts.items():
        if OPS[g.nodes[n]["op"]].kind == "attention":  # a head: its value and output norms
            layer = net.layers[n]
            score = layer.qkv_weight[:, value_start(g.nodes[n]):].flatten(1).norm(dim=1) * \
                layer.out_weight.flatten(1).norm(dim=1)
            weakest[n] = torch.argsort(score, stable=True)[:k]
            continue
        end = n  # follow the unit-preserving ops after n (activation, BatchNorm, ...)
        while g.out_degree(end) == 1:
            nxt = next(iter(g.successors(end)))
            if OPS[g.nodes[nxt]["op"]].kind != "channelwise" or g.edges[end, nxt]["gate"]:
                break
            end = nxt
        a = env[end]
        score = a.transpose(0, 1).reshape(a.shape[1], -1).pow(2).mean(1).sqrt()
        score = score * _outgoing_norm(net, end, a.shape[1])
        weakest[n] = torch.argsort(score, stable=True)[:k]
    params = dict(net.named_parameters())
    for n, idx in weakest.items():  # all scores first: zeroing n changes what reads it
        for name in members[n]:
            params[name][idx] = 0
    return extract(net, inputs=probe[:256], **(limits or {}))[1].train()


def _outgoing_norm(net: ArchNet, end: str, units: int):
    """Norm of the weights that read each unit of ``end`` (through a flatten too); ones when
    the readers are not plain layers (an add, a concat)."""
    g, total = net.graph, torch.zeros(units, device=next(net.parameters()).device)
    for s in g.successors(end):
        edge = (end, s)
        if OPS[g.nodes[s]["op"]].kind == "flatten" and g.out_degree(s) == 1:
            edge = (s, next(iter(g.successors(s))))
        reader = edge[1]
        if OPS[g.nodes[reader]["op"]].kind != "layer" or g.edges[edge]["gate"]:
            return torch.ones_like(total)
        w = net.layers[reader].weight
        w = w.reshape(w.shape[0], units, -1)  # (out, units, kernel or flattened positions)
        total += w.pow(2).sum((0, 2))
    return total.sqrt() if total.any() else torch.ones_like(total)
