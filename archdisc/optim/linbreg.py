"""LinBreg: linearized Bregman iterations, with its single-tensor, multi-tensor and fused
(torch.compile'd) kernels. The shared plumbing is in :mod:`archdisc.optim.base`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from archdisc.optim.base import (_check_delta, _check_lr, _check_unit_interval,
                                 _RegularizedOptimizer)
from archdisc.optim.regularizers import Regularizer, fused_prox

__all__ = ["LinBreg"]


class LinBreg(_RegularizedOptimizer):
    r"""Linearized Bregman iterations (stochastic mirror descent on J_delta).

    Per param group, with g the gradient:

    .. code-block:: text

        m <- momentum * m + (1 - momentum) * lr * g      (m = lr * g if momentum == 0)
        v <- v - m
        theta <- prox_{delta J}(delta * v)

    Args:
        params: iterable of parameters or param groups (dicts).
        lr: learning rate tau (>= 0).
        reg: regularizer J of the group (:class:`~archdisc.optim.L1`, ``GroupL2``,
            ``KernelL2``, ``TensorL2``) or None for J = 0 (plain SGD with lr*delta).
        delta: delta > 0; theta = prox_{delta J}(delta v). Larger delta means bigger
            steps for the active parameters.
        momentum: beta in [0, 1). The buffer starts at zero.
        foreach: multi-tensor path (default: when all tensors are on CPU/CUDA).
        fused: torch.compile'd step over all groups (None: only on CUDA; see
            :mod:`archdisc.optim.base`).

    State per parameter: ``v`` (regularized groups only), and with momentum
    ``momentum_buffer`` b and ``momentum_lr`` r (float) with m = r * b: while lr is
    constant b is an exponential average of g updated by one ``lerp_``.
    """

    def __init__(self, params, lr: float, reg: Regularizer | None = None,
                 delta: float = 1.0, momentum: float = 0.0, foreach: bool | None = None,
                 *, fused: bool | None = None):
        _check_lr(lr)
        _check_delta(delta)
        _check_unit_interval("momentum", momentum)
        self._init_fused(fused, foreach)
        defaults = dict(lr=lr, reg=reg, delta=delta, momentum=momentum, foreach=foreach)
        super().__init__(params, defaults)

    def _validate_hparams(self, group):
        _check_lr(group["lr"])
        _check_delta(group["delta"])
        _check_unit_interval("momentum", group["momentum"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = self._closure_loss(closure)
        jobs = []
        for group, params, grads in self._active_groups():
            reg, lr, delta, beta = group["reg"], group["lr"], group["delta"], group["momentum"]
            bufs = ref_lrs = states = None
            if beta:
                states = [self.state[p] for p in params]
                for p, state in zip(params, states):
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
                        state["momentum_lr"] = lr
                bufs = [state["momentum_buffer"] for state in states]
                ref_lrs = [state["momentum_lr"] for state in states]
            # regularized: update v, then prox; else theta = delta * v is updated directly
            targets = params if reg is None else self._subgradient_vars(group, params)
            scale = delta if reg is None else 1.0
            jobs.append((group, params, grads, targets, bufs, ref_lrs, states, scale))
        if not (self._use_fused(jobs) and self._fused_step(jobs)):
            for group, params, grads, targets, bufs, ref_lrs, _, scale in jobs:
                fn = (_multi_tensor_linbreg if self._use_foreach(group, params)
                      else _single_tensor_linbreg)
                fn(targets, grads, bufs, ref_lrs, lr=group["lr"], momentum=group["momentum"],
                   scale=scale)
                if group["reg"] is not None:
                    group["reg"]._prox_into(params, targets, group["delta"], group["delta"])
        for group, *_, states, _ in jobs:
            if group["momentum"] and group["lr"] > 0:
                for state in states:
                    state["momentum_lr"] = group["lr"]
        return loss

    def _fused_step(self, jobs) -> bool:
        plan, targets, grads, bufs, outs, scalars = [], [], [], [], [], []
        for group, params, g, t, b, ref_lrs, _, scale in jobs:
            reg, lr, beta = group["reg"], group["lr"], group["momentum"]
            plan.append((None if reg is None else reg.kind, len(params), bool(beta)))
            targets += t
            grads += g
            if beta:  # b <- a b + c g ; t <- t + s b  (see _momentum_update_)
                bufs += b
                for ref in ref_lrs:
                    a = beta * ref / lr if lr > 0 else beta
                    scalars += [a, 1 - beta if lr > 0 else 0.0,
                                -(lr if lr > 0 else ref) * scale]
            else:
                scalars += [-lr * scale] * len(params)
            if reg is not None:
                outs += params
                scalars += [reg.lam, group["delta"]]  # prox_{delta J}(delta v)
        return self._run_fused("linbreg", _fused_linbreg, tuple(plan), targets, grads, bufs,
                               outs, scalars=scalars)


def _fused_linbreg(plan, targets, grads, bufs, outs, scal):
    k = ti = bi = oi = 0
    for kind, n, momentum in plan:
        for _ in range(n):
            t, g = targets[ti], grads[ti]
            if momentum:
                b = bufs[bi]
                b.copy_(b * scal[k] + g * scal[k + 1])
                t.add_(b * scal[k + 2])
                k, bi = k + 3, bi + 1
            else:
                t.add_(g * scal[k])
                k += 1
            ti += 1
        if kind is not None:
            fused_prox(kind, outs[oi:oi + n], targets[ti - n:ti], scal[k], scal[k + 1])
            k, oi = k + 2, oi + n


# The momentum m = beta m + (1 - beta) lr g is stored as m = momentum_lr * b. While lr
# stays constant, b follows b <- lerp(b, g, 1 - beta), one pass instead of two; when lr
# changes, b is rescaled in the same step. Either way v <- v - m exactly as written.
def _momentum_update_(b: Tensor, g: Tensor, ref_lr: float, lr: float, momentum: float):
    if lr == ref_lr:
        b.lerp_(g, 1 - momentum)
    elif lr > 0:  # m = beta ref b + (1 - beta) lr g = lr (beta ref/lr b + (1 - beta) g)
        b.mul_(momentum * ref_lr / lr).add_(g, alpha=1 - momentum)
    else:  # lr == 0: m = beta m
        b.mul_(momentum)


def _single_tensor_linbreg(targets, grads, bufs, ref_lrs, *, lr, momentum, scale):
    for i, (t, g) in enumerate(zip(targets, grads)):
        if momentum:
            _momentum_update_(bufs[i], g, ref_lrs[i], lr, momentum)
            t.add_(bufs[i], alpha=-(lr if lr > 0 else ref_lrs[i]) * scale)
        else:
            t.add_(g, alpha=-lr * scale)


def _multi_tensor_linbreg(targets, grads, bufs, ref_lrs, *, lr, momentum, scale):
    if not momentum:
        torch._foreach_add_(targets, grads, alpha=-lr * scale)
        return
    ref_lr = ref_lrs[0]
    if any(r != ref_lr for r in ref_lrs):  # rare: buffers at different scales
        return _single_tensor_linbreg(targets, grads, bufs, ref_lrs, lr=lr,
                                      momentum=momentum, scale=scale)
    if lr == ref_lr:
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
    elif lr > 0:
        torch._foreach_mul_(bufs, momentum * ref_lr / lr)
        torch._foreach_add_(bufs, grads, alpha=1 - momentum)
    else:
        torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(targets, bufs, alpha=-(lr if lr > 0 else ref_lr) * scale)
