"""The lambda controller: warm-up, per-layer factors, unit-group weights and a size budget.

:class:`LamControl` writes lam into the optimizer's regularized param groups every step;
with a budget it looks at the size of the compact model that extraction would build now
and steers lam toward it. It touches the optimizer only through the regularizers' lam and
the optimizer's own ``shrink_``.
"""
from __future__ import annotations

import math

import torch

from archdisc.errors import ConfigError
from archdisc.extract import extract_graph
from archdisc.graph.archgraph import count_params
from archdisc.sparsity.groups import unit_members

__all__ = ["LamControl", "compact_params", "target_of"]


def target_of(config, supernet_params: int) -> int | None:
    """The parameter budget of ``config`` (``target_params`` or ``target_density``)."""
    if config.target_params is not None:
        return config.target_params
    if config.target_density is not None:
        return round(config.target_density * supernet_params)
    return None


@torch.no_grad()
def compact_params(net) -> tuple[int, dict]:
    """Parameter count of the compact model that extraction would build now (exact; read from
    the extracted graph, no module is compiled), and each searchable node's alive fan-in
    there (None: node removed)."""
    graph, state = extract_graph(net)
    fan_in = {n: (math.prod(state[f"layers.{n}.weight"].shape[1:])
                  if f"layers.{n}.weight" in state else None) for n in unit_members(net)}
    return count_params(graph), fan_in


class LamControl:
    """Sets lam of every regularized param group, every step:

        lam_g = lam * ramp(step) * mult * lam_layers[g] * weight_g

    ``ramp`` rises linearly from 0 to 1 over ``lam_warmup`` epochs. ``weight_g`` changes
    the unit group weight sqrt(n) of the regularizer to 1 (``group_weight="one"``) or
    to sqrt(n_alive), n_alive counting only the alive fan-in (``"sqrt_alive"``,
    refreshed at each look). With a budget
    (``target_params`` / ``target_density``) the controller looks every ``control_every``
    steps at the parameter count P of the compact model and multiplies ``mult`` by
    max(0.8, sqrt(P / target)) while P < (1 - target_tol) target (lowering lam lets the
    loss switch more units on), and raises lam just enough to bring P back to the
    target when P > target (:meth:`settle`: raising lam switches units off at once,
    through the prox). In between, lam is held.
    """

    def __init__(self, net, opt, config, steps_per_epoch: int):
        self.opt, self.config, self.spe = opt, config, steps_per_epoch
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
        self.target = target_of(config, sum(p.numel() for p in params.values()))
        self.mult, self.weights = 1.0, {}
        self.active = bool(self.target or config.lam_warmup or config.lam_layers
                           or config.group_weight != "sqrt_n")

    def state(self) -> dict:
        return {"mult": self.mult, "weights": self.weights}

    def load_state(self, state: dict | None):
        if state:
            self.mult, self.weights = state["mult"], state["weights"]

    def weight(self, g) -> float:
        name, c = g.get("name"), self.config
        if g.get("kind") != "unit" or name not in self.full_fan or c.group_weight == "sqrt_n":
            return 1.0
        if c.group_weight == "one":  # cancel the regularizer's own weight sqrt(n)
            return 1.0 / math.sqrt(self.n[name])
        return self.weights.get(name, 1.0)

    def look(self, net):
        """Measure the compact size; adjust ``mult`` (budget) and the alive-fan-in weights."""
        P, fan = compact_params(net)
        if self.config.group_weight == "sqrt_alive":
            # sqrt(n_alive / n): n_alive counts only the fan-in that is still alive
            self.weights = {n: math.sqrt((self.n[n] - self.full_fan[n] + (
                fan[n] if fan[n] is not None else self.full_fan[n])) / self.n[n]) for n in fan}
        if self.target and P > self.target:
            P = self.settle(net)
        elif self.target and P < (1 - self.config.target_tol) * self.target:
            self.mult *= max(0.8, math.sqrt(P / self.target))
        return P

    def ramp(self, step: int) -> float:
        w = self.config.lam_warmup
        return min(1.0, step / (w * self.spe)) if w else 1.0

    def set(self, step: int):
        """Write lam into the optimizer for global ``step`` (1-based)."""
        ramp = self.ramp(step)
        for g in self.groups:
            layer = self.config.lam_layers.get(g.get("name"), 1.0)
            g["reg"].lam = self.base[id(g)] * ramp * self.mult * layer * self.weight(g)

    def lam(self, step: int) -> float:
        """The scalar lam (without per-layer factors) in force at ``step``."""
        return self.config.lam * self.ramp(step) * self.mult

    @torch.no_grad()
    def settle(self, net, max_iter: int = 300) -> int:
        """While P > target: raise lam by 3% and apply the prox of the extra lam to the
        weights. For an alive group this is exactly the parameter the Bregman step gives
        with the raised lam and the same v (theta_g = prox(delta v) shrinks by
        delta * dlam * w_g and dies when that exceeds its norm); dead groups stay dead.
        (ProxSGD: the prox with step lr, as in its own step.) So lam rises just enough to
        switch off the excess, weakest units first."""
        P, _ = compact_params(net)
        it = 0
        while self.target and P > self.target and it < max_iter:
            it += 1
            before = {id(g): g["reg"].lam for g in self.groups}
            self.mult *= 1.03
            self.set(10 ** 12)
            for g in self.groups:
                self.opt.shrink_(g, g["reg"].lam - before[id(g)])
            P, _ = compact_params(net)
        return P
