"""The lambda controller: warm-up, per-layer factors, unit-group weights and a size budget.

:class:`LamControl` writes lam into the optimizer's regularized param groups every step;
with a budget it looks at the size of the compact model that extraction would build now
and steers lam toward it. It touches the optimizer only through the regularizers' lam and
the optimizer's own ``shrink_``.
"""
from __future__ import annotations

import copy
import math

import torch

from archdisc.errors import ConfigError
from archdisc.extract import extract, extract_graph
from archdisc.graph.archgraph import count_macs, count_params
from archdisc.graph.ops import OPS, width
from archdisc.sparsity.groups import alive, clear_dead_means, unit_members

LATENCY_TRIES = 5  # settles after the search's last, to bring the measured latency in

__all__ = ["LamControl", "LatencyLine", "compact_params", "limits_of", "measure_of", "smallest",
           "target_of"]


def measure_of(config) -> str:
    """What the budget counts: "macs" under ``target_macs`` (and ``target_latency_ms``,
    steered through MACs), else "params"."""
    latency = config.target_latency_ms is not None
    return "macs" if config.target_macs is not None or latency else "params"


class LatencyLine:
    """Eager CPU latency (ms, ``config.latency_batch`` samples) against MACs: the line
    through the supernet's and the smallest model's (every regularized unit dead, then
    extracted with the limits), both measured; :meth:`macs_for` reads it backwards."""

    def __init__(self, net, config):
        from archdisc.deploy.latency import eager_ms
        self.batch = config.latency_batch
        self.ms = lambda m: eager_ms(copy.deepcopy(m).cpu(), m.graph, self.batch)
        small = extract(_all_dead(net), verify=False, **limits_of(config, net))[1]
        self.low = (count_macs(small.graph), self.ms(small))
        self.high = (count_macs(net.graph), max(self.ms(net), self.low[1] * 1.001))

    def macs_for(self, ms: float) -> int:
        (m0, t0), (m1, t1) = self.low, self.high
        return round(min(m1, max(m0, m0 + (ms - t0) * (m1 - m0) / (t1 - t0))))


def target_of(config, supernet_size: int) -> int | None:
    """The budget of ``config`` in its measure (:func:`measure_of`), given the supernet's
    size in that measure: ``target_params``, ``target_density`` (a fraction of the
    parameters) or ``target_macs`` (a number <= 1: a fraction of the MACs)."""
    if config.target_params is not None:
        return config.target_params
    if config.target_density is not None:
        return round(config.target_density * supernet_size)
    if config.target_macs is not None:
        t = config.target_macs
        return round(t * supernet_size) if t <= 1 else round(t)
    return None


def limits_of(config, net) -> dict:
    """The per-layer limits of ``config`` as :func:`archdisc.extract.extract` arguments:
    ``round_to``, and ``min_units`` per searchable node (``min_keep`` of its width; the
    ``keep`` layers whole)."""
    widths = {n: width(net.graph.nodes[n]) for n in unit_members(net)}
    keep = keep_names(config)
    for k in keep:
        if k not in widths:
            raise ConfigError(f"config field 'keep': {k!r} is not a searched layer of this "
                              f"model; choose from {', '.join(widths)}")
    mins = {n: w if n in keep else math.ceil(config.min_keep * w) for n, w in widths.items()}
    return {"round_to": config.round_to, "min_units": {n: m for n, m in mins.items() if m}}


def unit_cost(graph, n: dict, measure: str, nodes: dict | None = None) -> dict:
    """For ``group_weight = "cost"``: the size (``measure``) one unit of each group in ``n``
    costs (its own weights and what its readers spend on it: the drop in size when the
    group's ``nodes`` (default: the node named like it; a coupled space's layers and adds)
    are one unit narrower), scaled so that the unit-weighted mean equals that of sqrt(n),
    the regularizer's own weight. A group whose width is tied to other layers costs sqrt(n)."""
    count = count_macs if measure == "macs" else count_params
    nodes = {name: (nodes or {}).get(name, [name]) for name in n}
    full, cost = count(graph), {}
    for name, narrow in nodes.items():
        g = copy.deepcopy(graph)
        for node in narrow:
            g.nodes[node][OPS[g.nodes[node]["op"]].searched] -= 1
        try:
            cost[name] = full - count(g)
        except (ValueError, KeyError):
            cost[name] = None
    units = {name: width(graph.nodes[narrow[0]]) for name, narrow in nodes.items()}
    known = [x for x in cost if cost[x]]
    if not known:
        return {name: math.sqrt(k) for name, k in n.items()}
    scale = (sum(units[x] * math.sqrt(n[x]) for x in known)
             / sum(units[x] * cost[x] for x in known))
    return {name: cost[name] * scale if cost[name] else math.sqrt(n[name]) for name in n}


FISHER_BATCHES = 16  # training batches behind group_weight = "fisher" at the start
FISHER_BETA = 0.99  # then a moving average over the training steps (about 100 of them)


def _taylor(groups) -> dict:
    """Per unit of each group: sum_{i in u} theta_i g_i, with the grads in .grad now (a
    tensor without grads: 0)."""
    out = {}
    for g in groups:
        first = g["params"][0]
        s = torch.zeros(len(first), dtype=first.dtype, device=first.device)
        for p in g["params"]:
            if p.grad is not None:
                s += (p.detach() * p.grad).flatten(1).sum(1) if p.dim() > 1 else p.detach() * p.grad
        out[g["name"]] = s
    return out


@torch.enable_grad()
def fisher_importance(net, groups, batches, task) -> dict:
    """For ``group_weight = "fisher"``: each unit's Fisher importance I_u, the mean over
    ``FISHER_BATCHES`` batches of (sum_{i in u} theta_i g_i)^2, the squared first-order
    change of the loss when the unit is zeroed. ``net`` is evaluated in eval mode; its
    grads are left None."""
    from archdisc.recipe.loop import loss_fn
    mode, imp = net.training, {}
    net.eval()
    for k, (x, y) in enumerate(batches()):
        if k == FISHER_BATCHES:
            break
        net.zero_grad(set_to_none=True)
        loss_fn(net(x), y, task).backward()
        for name, s in _taylor(groups).items():
            imp[name] = imp.get(name, 0.0) + s * s / FISHER_BATCHES
    net.zero_grad(set_to_none=True)
    net.train(mode)
    return imp


@torch.no_grad()
def fisher_weights(groups, imp: dict, cost: dict) -> dict:
    """Each unit's factor on lam: ||theta_u|| * cost_u / I_u over its median (dead units:
    1), ``cost`` per group (:func:`unit_cost`). A hard cut kills a unit when ||theta_u|| <=
    lam * factor, so units die in the order of I_u / cost_u, comparable across layers,
    where norms are not."""
    q = {g["name"]: g["reg"].group_norms(g["params"]) * cost[g["name"]]
         / (imp[g["name"]] + 1e-30) for g in groups}
    if not q:
        return {}
    alive = torch.cat([v[v > 0] for v in q.values()])
    mid = alive.median() if len(alive) else 1.0
    return {name: torch.where(v > 0, v / mid, 1.0).clamp_(1e-6, 1e6) for name, v in q.items()}


@torch.no_grad()
def _norm_scale(groups) -> dict:
    """Each unit group's mean unit norm (the candidate edges' gates: mean |gate|) over the
    mean of all units' norms. (Block gates, 1 in a trained model, keep their lam: scaled,
    resnet18's blocks were cut later and worse, HISTORY.md 15.)"""
    norms = {g["name"]: g["reg"].group_norms(g["params"]) for g in groups
             if (g.get("kind") == "unit" or g.get("name") == "gates")
             and hasattr(g["reg"], "group_norms")}
    units = [n for name, n in norms.items() if name != "gates"]
    mean = torch.cat(units).mean() if units else 0.0
    if not mean > 0:
        return {}
    return {name: float(n.mean() / mean) or 1.0 for name, n in norms.items()}


def keep_names(config) -> list[str]:
    """The layers of ``config.keep``."""
    return [k.strip() for k in (config.keep or "").split(",") if k.strip()]


@torch.no_grad()
def smallest(net, config) -> int:
    """The size (in the budget's measure) of the smallest model the limits allow: every
    regularized unit and gate of a copy of ``net`` dead, then extracted."""
    return compact_params(_all_dead(net), measure_of(config), limits_of(config, net))[0]


@torch.no_grad()
def _all_dead(net):
    """A copy of ``net`` with every regularized unit and gate zero."""
    net = copy.deepcopy(net)
    names = {p for ps in unit_members(net).values() for p in ps}
    for name, p in net.named_parameters():
        if name in names or name.startswith("gates."):
            p.zero_()
    clear_dead_means(net)
    return net


@torch.no_grad()
def compact_params(net, measure: str = "params", limits: dict | None = None) -> tuple[int, dict]:
    """Parameter count (or MACs) of the compact model that extraction would build now
    (exact; read from the extracted graph, no module is compiled; ``limits``: see
    :func:`limits_of`), and each searchable node's alive fan-in there (None: removed).
    Dead units' stale BatchNorm means are zeroed first (:func:`clear_dead_means`)."""
    clear_dead_means(net)
    graph, state = extract_graph(net, **(limits or {}))
    fan_in = {n: (math.prod(state[names[0]].shape[1:]) if names[0] in state else None)
              for n, names in unit_members(net).items()}
    return (count_macs(graph) if measure == "macs" else count_params(graph)), fan_in


class LamControl:
    """Sets lam of every regularized param group, every step:

        lam_g = lam * ramp(step) * mult * lam_layers[g] * weight_g

    ``ramp`` rises linearly from 0 to 1 over ``lam_warmup`` epochs. ``weight_g`` changes
    the unit group weight sqrt(n) of the regularizer to 1 (``group_weight="one"``), to
    sqrt(n_alive), n_alive counting only the alive fan-in (``"sqrt_alive"``, refreshed at
    each look), or to what the unit costs in the budget's measure (``"cost"``,
    :func:`unit_cost`). From trained weights every unit group's weight is also scaled by
    its mean unit norm at the start, so a unit is cut for being weak within its own layer
    (BatchNorm leaves a conv's scale free: raw norms do not compare across layers).
    ``"fisher"`` (from trained weights) sets each unit's own lam instead, so that units
    die in the order of their Fisher importance per cost (:func:`fisher_weights`; the
    importance averaged over the training steps, the weights renewed at each look).
    ``"auto"``: fisher from the user's trained weights, but one where a unit group spans
    several layers (a residual stream) and after dense epochs; sqrt(n) at the sparse start
    (RESULTS.md section 13, HISTORY.md 17).
    With a budget (``target_params`` / ``target_density`` / ``target_macs`` /
    ``target_latency_ms``) the controller looks
    every ``control_every`` steps at the size P (parameters or MACs) of the compact model
    and multiplies ``mult`` by max(0.8, sqrt(P / target)) while P < (1 - target_tol)
    target (lowering lam lets the loss switch more units on), and raises lam just enough
    to bring P back to the target when P > target (:meth:`settle`: raising lam switches
    units off at once, through the prox). In between, lam is held. The per-layer limits
    (``keep``: lam 0; ``min_keep``, ``round_to``) count in P, as extraction keeps them.

    A search that starts from trained weights (``anchor``) cuts instead of shrinking
    (the optimizer's ``cut_``: the survivors keep their weights), and its target falls
    from the starting size to the budget along a cubic over the first half of the
    search (at least one epoch), so units are removed gradually while training goes on.
    With ``dense_epochs`` lam is 0 for those epochs (every unit trains) and the cuts then
    start from the weights trained so far, as from trained weights.
    """

    def __init__(self, net, opt, config, steps_per_epoch: int, anchor: bool = False,
                 batches=None, task: str = "classification"):
        self.opt, self.config, self.spe, self.anchor = opt, config, steps_per_epoch, anchor
        self.batches, self.task = batches, task  # training batches, for "fisher"
        self.groups = [g for g in opt.param_groups if g.get("reg") is not None]
        names = {g.get("name") for g in self.groups}
        for k in config.lam_layers:
            if k not in names:
                raise ConfigError(f"config field 'lam_layers': {k!r} is not a regularized "
                                  f"node of this search space; choose from "
                                  f"{', '.join(sorted(str(n) for n in names))}")
        self.base = {id(g): g["reg"].lam for g in self.groups}
        params = dict(net.named_parameters())
        self.full_fan = {n: math.prod(params[names_[0]].shape[1:])
                         for n, names_ in unit_members(net).items()}
        # n of each unit group (its regularizer's weight is sqrt(n)): fan-in, + 1 per bias
        self.n = {g["name"]: g["reg"].group_weight(g["params"]) ** 2 for g in self.groups
                  if g.get("kind") == "unit"}
        self.limits = limits_of(config, net)
        self.keep = set(keep_names(config))  # never cut: lam 0
        self.measure = measure_of(config)
        full = (count_macs(net.graph) if self.measure == "macs"
                else sum(p.numel() for p in params.values()))
        self.target, self.line, self.last_ms = target_of(config, full), None, None
        if config.target_latency_ms is not None:
            self.line = LatencyLine(net, config)
            self.target = self.line.macs_for(config.target_latency_ms)
        # dense_epochs: lam 0 for that many steps, then the cuts start as from trained weights
        dense = config.dense()
        self.net, self.dense = net, dense * steps_per_epoch
        cut = anchor and not self.dense  # the cuts start now
        self.start_size = compact_params(net, self.measure, self.limits)[0] if cut else 0
        self.ramp_steps = max(1, (config.epochs - dense) // 2) * steps_per_epoch if anchor else 0
        self.mult, self.weights, self.hold = 1.0, {}, {}
        self.gw = config.group_weight
        if self.gw == "auto":  # RESULTS.md 13; HISTORY.md 17: where fisher lost
            shared = any(len(g.get("nodes", ())) > 1 for g in self.groups)  # residual streams
            trained = anchor and not dense and batches is not None  # the user's weights
            fisher = trained and not shared and self.n and not config.fused
            self.gw = ("fisher" if fisher else "one") if anchor else "sqrt_n"
        if self.gw == "fisher" and not (anchor and self.n and batches is not None):
            raise ConfigError("config field 'group_weight': fisher ranks the units of a "
                              "trained model; it needs a start from weights or dense epochs "
                              "and unit groups (group_mode unit, a sparse optimizer); use "
                              "auto or one")
        if self.gw in ("cost", "fisher"):
            self.cost = unit_cost(net.graph, self.n, self.measure,
                                  {g["name"]: g["nodes"] for g in self.groups if "nodes" in g})
        self.scale, self.unit_w, self.imp = {}, {}, {}
        if cut:
            self.start_cuts()
        # attention layers: lam stays below the strongest head's (anchored) norm, so that a
        # cut never leaves a layer without heads (all of them alike, they die together)
        self.heads = {n for n in net.graph if OPS[net.graph.nodes[n]["op"]].kind == "attention"}
        self.active = bool(self.target or config.lam_warmup or config.lam_layers
                           or self.keep or self.gw != "sqrt_n" or self.scale or self.heads
                           or self.dense)

    def start_cuts(self):
        """The cuts start from the weights as they are: each group's lam scales with its
        mean unit norm now, so units are ranked against their own layer's (BatchNorm
        leaves a conv's scale free); under "fisher" each unit's lam instead by
        :func:`fisher_weights`."""
        self.scale = _norm_scale(self.groups)
        if self.gw == "fisher":
            self.imp = fisher_importance(self.net, self.fisher_groups(), self.batches,
                                         self.task)
            self.reweigh()

    def fisher_groups(self) -> list:
        return [g for g in self.groups if g.get("name") in self.n]

    def observe(self):
        """After a training step, under "fisher" once the cuts started: the step's grads
        into the moving average of the units' importance."""
        if self.imp:
            for name, s in _taylor(self.fisher_groups()).items():
                self.imp[name].mul_(FISHER_BETA).add_(s * s, alpha=1 - FISHER_BETA)

    def reweigh(self):
        """Each unit's lam from its importance now (:func:`fisher_weights`), with v
        re-anchored so that the parameters stay as they are."""
        groups = self.fisher_groups()
        self.set_unit_w(fisher_weights(groups, self.imp, self.cost))
        for g in groups:
            if all("v" in self.opt.state[p] for p in g["params"]):
                self.opt.cut_(g, 0.0)

    def set_unit_w(self, unit_w: dict):
        like = {g["name"]: g["params"][0] for g in self.groups if g.get("name") in unit_w}
        self.unit_w = {k: v.to(like[k]) for k, v in unit_w.items()}
        for g in self.groups:
            if g.get("name") in unit_w:
                g["reg"].unit_w = self.unit_w[g["name"]]

    def state(self) -> dict:
        return {"mult": self.mult, "weights": self.weights, "scale": self.scale,
                "hold": self.hold,
                "start_size": self.start_size,
                "unit_w": {k: v.tolist() for k, v in self.unit_w.items()},
                "imp": {k: v.tolist() for k, v in self.imp.items()}}

    def load_state(self, state: dict | None):
        if state:
            self.mult, self.weights = state["mult"], state["weights"]
            self.scale = state.get("scale", self.scale)
            self.hold = state.get("hold", {})
            self.start_size = state.get("start_size", self.start_size)
            like = {g["name"]: g["params"][0] for g in self.fisher_groups()}
            self.set_unit_w({k: torch.tensor(v, dtype=torch.float64)
                             for k, v in state.get("unit_w", {}).items()})
            self.imp = {k: torch.tensor(v, dtype=torch.float64).to(like[k])
                        for k, v in state.get("imp", {}).items()}

    def weight(self, g) -> float:
        name = g.get("name")
        if g.get("kind") == "edge":  # from trained weights: scaled by the gates' size
            return self.scale.get(name, 1.0)
        if g.get("kind") != "unit" or name not in self.n:
            return 1.0
        scale = self.scale.get(name, 1.0)
        if self.gw == "fisher":  # the regularizer's unit_w sets each unit's lam
            return 1 / math.sqrt(self.n[name])
        if self.gw == "one":  # cancel the regularizer's own weight sqrt(n)
            return scale / math.sqrt(self.n[name])
        if self.gw == "cost":
            return scale * self.cost[name] / math.sqrt(self.n[name])
        return scale * self.weights.get(name, 1.0)  # sqrt_n: 1; sqrt_alive: set by look()

    def target_at(self, step: int) -> int:
        """The budget in force at ``step``: the target, or on the way down to it from the
        starting size (``anchor``)."""
        left = max(0.0, 1 - (step - self.dense) / self.ramp_steps) if self.ramp_steps else 0.0
        return round(self.target + (self.start_size - self.target) * left ** 3) \
            if self.start_size > self.target else self.target

    def look(self, net, step: int | None = None):
        """Measure the compact size; adjust ``mult`` (budget) and the alive-fan-in weights."""
        if step is not None and step <= self.dense:
            return None
        if self.imp:
            self.reweigh()
        P, fan = compact_params(net, self.measure, self.limits)
        if self.config.group_weight == "sqrt_alive":
            # sqrt(n_alive / n): n_alive counts only the fan-in that is still alive
            self.weights = {n: math.sqrt((self.n[n] - self.full_fan[n] + (
                fan[n] if fan[n] is not None else self.full_fan[n])) / self.n[n])
                for n in fan if n in self.n}  # (not the coupled spaces: weight 1)
        target = self.target_at(step if step is not None else 10 ** 12) if self.target else 0
        if self.target and P > target:  # the search's last look cuts (see finish)
            end = self.config.epochs * self.spe - self.config.control_every
            P = self.settle(net, target, cut=step is not None and step > end)
        elif self.target and P < (1 - self.config.target_tol) * target:
            self.mult *= max(0.8, math.sqrt(P / target))
        return P

    def ramp(self, step: int) -> float:
        """lam_warmup's factor at ``step``: from 0 to 1 over its epochs after the dense ones."""
        w = self.config.lam_warmup
        return min(1.0, (step - self.dense) / (w * self.spe)) if w else 1.0

    def set(self, step: int):
        """Write lam into the optimizer for global ``step`` (1-based): 0 in the dense epochs;
        at their end the cuts start from the weights trained so far."""
        if step <= self.dense:
            for g in self.groups:
                g["reg"].lam = 0.0
            return
        start = self.dense and not self.start_size
        if start:
            self.start_cuts()
            self.start_size = compact_params(self.net, self.measure, self.limits)[0]
        ramp = self.ramp(step)
        for g in self.groups:
            layer = 0.0 if self.keep.intersection(g.get("nodes", [g.get("name")])) else \
                self.config.lam_layers.get(g.get("name"), 1.0)
            g["reg"].lam = (self.base[id(g)] * ramp * self.mult * layer * self.weight(g)
                            * self.hold.get(g.get("name"), 1.0))
            if g.get("name") in self.heads:
                g["reg"].lam = min(g["reg"].lam, self.floor(g))
            if start:  # v re-anchored under this lam: the trained weights stay as they are
                self.opt.cut_(g, 0.0)

    def floor(self, g) -> float:
        """The largest lam at which the strongest head of attention group ``g`` survives the
        prox of delta v (Bregman: ||v_h|| > lam w), a hair below; inf without v."""
        v = [self.opt.state[p].get("v") for p in g["params"]]
        if any(x is None for x in v):
            return math.inf
        norms = g["reg"].group_norms(v)
        if getattr(g["reg"], "unit_w", None) is not None:  # each head's own factor
            norms = norms / g["reg"].unit_w.flatten()
        top = float(norms.max())
        return 0.999 * top / g["reg"].group_weight(g["params"]) if top > 0 else math.inf

    def lam(self, step: int) -> float:
        """The scalar lam (without per-layer factors) in force at ``step``."""
        return self.config.lam * self.ramp(step) * self.mult if step > self.dense else 0.0

    def holds(self, size: int) -> bool:
        """Whether ``size`` is in the budget's band [(1 - target_tol) target, target]; under
        ``target_latency_ms`` only once :meth:`finish` has measured the latency."""
        if not self.target or (self.line is not None and self.last_ms is None):
            return False
        return (1 - self.config.target_tol) * self.target <= size <= self.target

    def finish(self, net) -> float | None:
        """The search's last settle (growing too), a cut: the survivors keep their weights
        (the sparse start's settles shrink them, which moves the search along but spoils
        the model it ends with: HISTORY.md 19); under ``target_latency_ms`` then up to
        ``LATENCY_TRIES`` more, each at the MACs target scaled by target / measured
        latency of the extracted model, until that latency is in the band
        [(1 - target_tol) target, target]. Returns the last measured latency (or None)."""
        self.settle(net, grow=True, cut=True)
        ms = self.config.target_latency_ms
        if ms is None:
            return None
        for _ in range(LATENCY_TRIES):
            got = self.line.ms(extract(net, verify=False, **self.limits)[1])
            if (1 - self.config.target_tol) * ms <= got <= ms:
                break
            self.target = max(self.line.low[0], round(self.target * ms / got))
            self.settle(net, grow=True, cut=True)
        else:
            got = self.line.ms(extract(net, verify=False, **self.limits)[1])
        self.last_ms = got
        return got

    @torch.no_grad()
    def settle(self, net, target: int | None = None, grow: bool = False,
               iters: int = 24, cut: bool = False) -> int:
        """Bring P to at most ``target`` (default: the budget) by raising lam just enough:
        the smallest factor on lam, found by bisection, whose prox leaves P <= target.
        With ``grow``, also when P < (1 - target_tol) target, by lowering lam. The prox of
        the new lam is applied as the optimizer's next Bregman step would apply it
        (theta = prox(delta v); ProxSGD, which has no v and cannot grow: its prox with step
        lr of the extra lam), or, raising lam, as its ``cut_`` when ``anchor`` or ``cut``
        (the survivors keep their weights). Units die (or enter) in the order of their norm
        over their weight. Where a gate (a block, a skip) dying would drop P below the band,
        the gates keep their lam (``hold``, from then on) and only the units' is raised, if
        that lands in the band."""
        target = self.target if target is None else target
        P = compact_params(net, self.measure, self.limits)[0]
        low = (1 - self.config.target_tol) * target
        if not target or low <= P <= target or (P < low and not grow):
            return P
        params = [p for g in self.groups for p in g["params"]]
        params += [b for k, b in net.named_buffers() if k.endswith("running_mean")]
        saved, m0 = [p.clone() for p in params], self.mult
        self.set(10 ** 12)
        lam0 = [g["reg"].lam for g in self.groups]
        state = self.opt.state
        bregman = all("v" in state[p] and "delta" in g for g in self.groups for p in g["params"])
        holding = {}  # gates held at their lam (name: hold factor before this settle)

        def trial(mult, apply=False):
            for p, s in zip(params, saved):
                p.copy_(s)
            self.mult = mult
            self.hold.update({n: h * m0 / mult for n, h in holding.items()})
            self.set(10 ** 12)
            for g, before in zip(self.groups, lam0):
                if apply and (self.anchor or cut) and mult > m0:
                    self.opt.cut_(g, g["reg"].lam - before)
                elif bregman:  # the next step's parameters under this lam
                    for p in g["params"]:
                        p.copy_(state[p]["v"]).mul_(g["delta"])
                    g["reg"].prox_(g["params"], g["delta"])
                else:
                    self.opt.shrink_(g, g["reg"].lam - before)
            return compact_params(net, self.measure, self.limits)[0]

        def bisect():
            if P > target:  # bracket: P(lo) > target >= P(hi)
                lo, hi = m0, m0 * 1.03
                while trial(hi) > target and hi < m0 * 2 ** 40:
                    lo, hi = hi, hi * 2
            else:
                lo, hi = m0 / 1.03, m0
                while trial(lo) <= target and lo > m0 * 2 ** -40:
                    lo, hi = lo / 2, lo
            for _ in range(iters):
                mid = math.sqrt(lo * hi)
                lo, hi = (lo, mid) if trial(mid) <= target else (mid, hi)
            # hi sits on a unit's threshold to ~1e-7: 1e-5 above it, where the cut (theta
            # shrunk by the extra lam) and the trial (prox of delta v) agree despite float
            # rounding (they disagreed on a conv unit worth 1.4% of the MACs)
            return hi * (1 + 1e-5)

        if P < target and not bregman:
            return P
        gates = [g for g in self.groups if g.get("kind") == "edge"]
        open_gates = sum(alive(net)["edges"].values())
        mult = bisect()
        if P > target and gates and trial(mult) < low and \
                sum(alive(net)["edges"].values()) < open_gates:
            # a gate (a whole block or skip) dying drops P below the band: the gates
            # keep their lam (from now on), the units' alone is raised, if that lands
            hold0 = dict(self.hold)
            holding.update({g["name"]: self.hold.get(g["name"], 1.0) for g in gates})
            held = bisect()
            if low <= trial(held) <= target:
                mult = held
            else:
                holding.clear()
                self.hold = hold0
        return trial(mult, apply=True)
