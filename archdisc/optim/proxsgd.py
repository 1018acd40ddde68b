"""ProxSGD: proximal (stochastic) gradient descent, with its per-parameter, multi-tensor
and fused (torch.compile'd) paths. The shared plumbing is in :mod:`archdisc.optim.base`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from archdisc.optim.base import _check_lr, _check_unit_interval, _RegularizedOptimizer
from archdisc.optim.regularizers import Regularizer, fused_prox

__all__ = ["ProxSGD"]


class ProxSGD(_RegularizedOptimizer):
    r"""Proximal (stochastic) gradient descent.

    .. code-block:: text

        d <- g                       (momentum == 0)
        d <- g at the first step, then d <- momentum * d + g   (heavy ball, as torch SGD)
        theta <- prox_{lr J}(theta - lr * d)

    With J = 0 this is exactly :class:`torch.optim.SGD` (dampening 0, no nesterov).

    State per parameter: ``momentum_buffer`` (if momentum > 0). ``fused``: the
    torch.compile'd step over all groups (None: only on CUDA; see :mod:`archdisc.optim.base`).
    """

    def __init__(self, params, lr: float, reg: Regularizer | None = None,
                 momentum: float = 0.0, foreach: bool | None = None, *,
                 fused: bool | None = None):
        _check_lr(lr)
        _check_unit_interval("momentum", momentum)
        self._init_fused(fused, foreach)
        defaults = dict(lr=lr, reg=reg, momentum=momentum, foreach=foreach)
        super().__init__(params, defaults)

    def _validate_hparams(self, group):
        _check_lr(group["lr"])
        _check_unit_interval("momentum", group["momentum"])

    def _prox_step(self, group):
        return group["lr"]

    def _plain_step(self, group):
        return group["lr"]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = self._closure_loss(closure)
        jobs = list(self._active_groups())
        if self._use_fused(jobs) and self._fused_step(jobs):
            return loss
        for group, params, grads in jobs:
            lr, beta, reg = group["lr"], group["momentum"], group["reg"]
            foreach = self._use_foreach(group, params)
            directions = grads
            if beta:
                directions = _heavy_ball(self.state, params, grads, beta, foreach)
            if foreach:
                torch._foreach_add_(params, directions, alpha=-lr)
            else:
                for p, d in zip(params, directions):
                    p.add_(d, alpha=-lr)
            if reg is not None and lr > 0:
                reg._prox_into(params, params, lr, 1.0)
        return loss

    def _fused_step(self, jobs) -> bool:
        plan, params_all, grads_all, bufs, scalars = [], [], [], [], []
        for group, params, grads in jobs:
            lr, beta, reg = group["lr"], group["momentum"], group["reg"]
            plan.append((None if reg is None else reg.kind, len(params), bool(beta)))
            params_all += params
            grads_all += grads
            if beta:  # a zero buffer: beta * 0 + g = g, the first heavy-ball step
                for p in params:
                    if self.state[p].get("momentum_buffer") is None:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
                    bufs.append(self.state[p]["momentum_buffer"])
            scalars += [beta, -lr]
            if reg is not None:  # lr = 0: c = 0, the prox is the identity
                scalars += [lr * reg.lam, 1.0]
        return self._run_fused("proxsgd", _fused_proxsgd, tuple(plan), params_all, grads_all,
                               bufs, scalars=scalars)


def _fused_proxsgd(plan, params, grads, bufs, scal):
    k = pi = bi = 0
    for kind, n, momentum in plan:
        beta, neg_lr = scal[k], scal[k + 1]
        k += 2
        for _ in range(n):
            p, d = params[pi], grads[pi]
            if momentum:
                d = bufs[bi]
                d.copy_(d * beta + grads[pi])
                bi += 1
            p.add_(d * neg_lr)
            pi += 1
        if kind is not None:
            group = params[pi - n:pi]
            fused_prox(kind, group, group, scal[k], scal[k + 1])
            k += 2


def _heavy_ball(state, params, grads, beta, foreach) -> list[Tensor]:
    """d <- g at the first step, d <- beta * d + g afterwards (torch SGD, dampening 0)."""
    bufs = [state[p].get("momentum_buffer") for p in params]
    if foreach and all(b is not None for b in bufs):
        torch._foreach_mul_(bufs, beta)
        torch._foreach_add_(bufs, grads)
        return bufs
    for i, (p, g) in enumerate(zip(params, grads)):
        if bufs[i] is None:
            bufs[i] = state[p]["momentum_buffer"] = g.detach().clone()
        else:
            bufs[i].mul_(beta).add_(g)
    return bufs
