"""AdaBreg: adaptive Bregman iterations (Adam's moments drive the subgradient variable),
with its single-tensor, multi-tensor and fused (torch.compile'd) kernels. The shared
plumbing is in :mod:`archdisc.optim.base`.
"""
from __future__ import annotations

from typing import Callable

import torch

from archdisc.optim.base import (_check_betas, _check_delta, _check_eps, _check_lr,
                                 _RegularizedOptimizer)
from archdisc.optim.regularizers import Regularizer, fused_prox

__all__ = ["AdaBreg"]


class AdaBreg(_RegularizedOptimizer):
    r"""Adaptive Bregman iterations: Adam's moments drive the subgradient variable.

    .. code-block:: text

        m <- beta1 * m + (1 - beta1) * g ;   s <- beta2 * s + (1 - beta2) * g^2
        v <- v - lr * m_hat / (sqrt(s_hat) + eps)   (bias-corrected moments)
        theta <- prox_{delta J}(delta * v)

    With J = 0 and delta = 1 this is exactly :class:`torch.optim.Adam` (no weight
    decay, no amsgrad).

    Args:
        params: iterable of parameters or param groups (dicts).
        lr: learning rate (>= 0).
        reg: regularizer of the group or None (J = 0).
        delta: delta > 0.
        betas: (beta1, beta2), each in [0, 1).
        eps: eps >= 0 added to the denominator.
        foreach: multi-tensor path (default: when all tensors are on CPU/CUDA).
        fused: torch.compile'd step over all groups (None: only on CUDA; see
            :mod:`archdisc.optim.base`).

    State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq``, ``v``
    (regularized groups only).
    """

    def __init__(self, params, lr: float = 1e-3, reg: Regularizer | None = None,
                 delta: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, foreach: bool | None = None, *,
                 fused: bool | None = None):
        _check_lr(lr)
        _check_delta(delta)
        _check_betas(betas)
        _check_eps(eps)
        self._init_fused(fused, foreach)
        defaults = dict(lr=lr, reg=reg, delta=delta, betas=tuple(betas), eps=eps,
                        foreach=foreach)
        super().__init__(params, defaults)

    def _validate_hparams(self, group):
        _check_lr(group["lr"])
        _check_delta(group["delta"])
        _check_betas(group["betas"])
        _check_eps(group["eps"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = self._closure_loss(closure)
        jobs = []
        for group, params, grads in self._active_groups():
            reg, delta = group["reg"], group["delta"]
            exp_avgs = [self._state_tensor(p, "exp_avg") for p in params]
            exp_avg_sqs = [self._state_tensor(p, "exp_avg_sq") for p in params]
            steps = []
            for p in params:
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                steps.append(state["step"])
            targets = params if reg is None else self._subgradient_vars(group, params)
            scale = delta if reg is None else 1.0
            jobs.append((group, params, grads, targets, exp_avgs, exp_avg_sqs, steps, scale))
        if self._use_fused(jobs) and self._fused_step(jobs):
            return loss
        for group, params, grads, targets, exp_avgs, exp_avg_sqs, steps, scale in jobs:
            beta1, beta2 = group["betas"]
            fn = _multi_tensor_adabreg if self._use_foreach(group, params) else _single_tensor_adabreg
            fn(targets, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"] * scale,
               beta1=beta1, beta2=beta2, eps=group["eps"])
            if group["reg"] is not None:
                group["reg"]._prox_into(params, targets, group["delta"], group["delta"])
        return loss

    def _fused_step(self, jobs) -> bool:
        plan, targets, grads, ms, ss, outs, scalars = [], [], [], [], [], [], []
        for group, params, g, t, m, s, steps, scale in jobs:
            reg, lr = group["reg"], group["lr"] * scale
            beta1, beta2 = group["betas"]
            plan.append((None if reg is None else reg.kind, len(params)))
            targets += t
            grads += g
            ms += m
            ss += s
            scalars += [1 - beta1, beta2, 1 - beta2, group["eps"]]
            for step in steps:  # as in _multi_tensor_adabreg
                scalars += [-(lr / (1 - beta1 ** step)), (1 - beta2 ** step) ** 0.5]
            if reg is not None:
                outs += params
                scalars += [reg.lam, group["delta"]]  # prox_{delta J}(delta v)
        return self._run_fused("adabreg", _fused_adabreg, tuple(plan), targets, grads, ms, ss,
                               outs, scalars=scalars)


def _fused_adabreg(plan, targets, grads, ms, ss, outs, scal):
    k = ti = oi = 0
    for kind, n in plan:
        w1, beta2, w2, eps = scal[k], scal[k + 1], scal[k + 2], scal[k + 3]
        k += 4
        for _ in range(n):
            t, g, m, s = targets[ti], grads[ti], ms[ti], ss[ti]
            m.lerp_(g, w1)
            s.copy_(s * beta2 + g * g * w2)
            t.add_((m / (s.sqrt() / scal[k + 1] + eps)) * scal[k])
            k, ti = k + 2, ti + 1
        if kind is not None:
            fused_prox(kind, outs[oi:oi + n], targets[ti - n:ti], scal[k], scal[k + 1])
            k, oi = k + 2, oi + n


def _single_tensor_adabreg(targets, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1,
                           beta2, eps):
    for t, g, m, s, step in zip(targets, grads, exp_avgs, exp_avg_sqs, steps):
        m.lerp_(g, 1 - beta1)
        s.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (s.sqrt() / bias_correction2_sqrt).add_(eps)
        t.addcdiv_(m, denom, value=-(lr / bias_correction1))


def _multi_tensor_adabreg(targets, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1,
                          beta2, eps):
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_size = [-(lr / (1 - beta1 ** step)) for step in steps]
    bias_correction2_sqrt = [(1 - beta2 ** step) ** 0.5 for step in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(targets, exp_avgs, denom, step_size)
