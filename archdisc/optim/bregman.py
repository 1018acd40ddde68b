"""Sparse Bregman optimizers (LinBreg, AdaBreg) and proximal SGD.

Bungert, Roith, Tenbrinck, Burger, "A Bregman Learning Framework for Sparse Neural
Networks", JMLR 2022. With a convex regularizer J and delta > 0 the Bregman
methods iterate on a subgradient variable v and read the parameters off a prox:

    v     <- v - (step built from the gradient g)
    theta <- prox_{delta J}(delta * v)

Started from v0 = theta0 / delta + p0 with p0 in dJ(theta0) (so the first prox returns
theta0), this is an inverse scale space flow: an entry / group that is zero stays
exactly zero until its part of v leaves the ball {|v_g| <= lam * w_g}, so training
switches on only the parameters the loss asks for.

Each param group carries its regularizer under the key ``reg`` (``None``: J = 0),
exactly like ``lr``. The optimizers know nothing about graphs or layers.

Implementation notes
--------------------
* For a group with ``reg=None`` the prox is the identity, so theta = delta * v holds
  at every step and v is not stored: theta is updated directly (this is exactly
  SGD / Adam with learning rate ``delta * lr``). If a regularizer is attached to such a
  group later, v starts from the current theta as at a first step.
* ``foreach=None`` picks the multi-tensor (``torch._foreach_*``) path when all
  tensors live on CPU or CUDA; ``foreach=False`` runs the per-parameter loop, which
  is the readable reference. The prox is the same in both paths (per group).
* ``fused`` (torch's meaning, one setting for the whole optimizer): ``fused=True``
  runs the whole step - every group's update *and* its prox - as one
  ``torch.compile``'d function (CPU and CUDA) and raises if that is impossible;
  ``fused=False`` never compiles; ``fused=None`` (default) compiles only where it pays:
  all tensors on CUDA (with Triton) and no group with ``foreach=False``. On CPU the
  first call costs ~15-25 s of compilation, and the compiled step saves a few ms per
  step on a ResNet-18 (experiments/bench_optim.py, RESULTS section 1), so the default
  there stays ``foreach``. Hyper-parameters (lr, lam, betas, ...) enter the compiled
  step as tensor values, so schedules do not recompile; a new set of groups / shapes
  does. If compilation fails, ``fused=None`` falls back to ``foreach`` (once, with a
  warning). ``fused`` is not part of the state dict (checkpoints are unchanged).
* Within a regularized group a parameter whose grad is None is treated as having a
  zero gradient (the group is proxed jointly); a group where all grads are None is
  skipped. In a ``reg=None`` group, parameters without grad are skipped.
* ``state_dict()`` stores each ``reg`` as its config dict (plain data, so
  ``torch.save`` / ``torch.load(weights_only=True)`` work), and
  :func:`optimizer_state_to_tensors` / :func:`optimizer_state_from_tensors` give a
  pickle-free (safetensors + JSON) form.
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from archdisc.optim.regularizers import _KINDS, Regularizer, fused_prox, regularizer_from_config

__all__ = ["LinBreg", "AdaBreg", "ProxSGD", "optimizer_state_to_tensors",
           "optimizer_state_from_tensors"]


# ------------------------------------------------------------------------------------
# validation helpers
def _check_lr(lr) -> None:
    if not (isinstance(lr, (int, float)) and 0.0 <= lr < math.inf):
        raise ValueError(f"Invalid learning rate lr={lr!r}: must be a finite number >= 0")


def _check_delta(delta) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < math.inf):
        raise ValueError(f"Invalid delta={delta!r}: must be a finite number > 0 "
                         f"(theta = prox_(delta J)(delta * v))")


def _check_unit_interval(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name}={value!r}: must be in [0, 1)")


def _check_eps(eps) -> None:
    if not (isinstance(eps, (int, float)) and 0.0 <= eps < math.inf):
        raise ValueError(f"Invalid eps={eps!r}: must be a finite number >= 0")


def _check_reg(group: dict) -> None:
    reg = group["reg"]
    if reg is None:
        return
    if not isinstance(reg, Regularizer):
        raise TypeError(f"param group 'reg' must be a Regularizer (L1, GroupL2, KernelL2, "
                        f"TensorL2) or None, got {type(reg).__name__}")
    reg.check(group["params"])


def _check_params(group: dict) -> None:
    for p in group["params"]:
        if not p.is_floating_point():
            raise ValueError(f"can only optimize real floating point tensors, got a tensor "
                             f"of dtype {p.dtype} and shape {tuple(p.shape)}")


def _default_foreach(tensors: list[Tensor]) -> bool:
    if torch.jit.is_scripting():
        return False
    return all(t.device.type in ("cpu", "cuda") for t in tensors)


def _check_fused(fused, foreach) -> None:
    if fused not in (None, True, False):
        raise ValueError(f"Invalid fused={fused!r}: must be None, True or False")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot both be set")


# ------------------------------------------------------------------------------------
# the fused (torch.compile'd) step
_COMPILED: dict[str, Callable] = {}
_COMPILE_ERROR: list[str] = []  # set once compilation failed in this process


def _compiled(name: str, fn: Callable) -> Callable:
    if name not in _COMPILED:
        # dynamic=False: the shapes of one optimizer's groups are fixed; hyper-parameters
        # are tensor values, so they never cause a recompile
        _COMPILED[name] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[name]


def _triton_available() -> bool:
    try:
        from torch.utils._triton import has_triton
        return bool(has_triton())
    except Exception:  # noqa: BLE001 - any failure means: no triton
        return False


# ------------------------------------------------------------------------------------
class _RegularizedOptimizer(Optimizer):
    """Plumbing shared by the three optimizers: per-group validation, gradients of a
    group, lazy v, and a state dict in which regularizers are plain config dicts."""

    def _validate_hparams(self, group: dict) -> None:  # per optimizer
        raise NotImplementedError

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_hparams(group)
            _check_params(group)
            _check_reg(group)
        except Exception:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("fused", None)
        self.__dict__.setdefault("_fused_verified", False)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                if key != "reg":
                    group.setdefault(key, value)
            group.setdefault("reg", None)

    # -- gradients -------------------------------------------------------------------
    def _params_and_grads(self, group: dict) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        joint = group["reg"] is not None
        if joint and all(p.grad is None for p in group["params"]):
            return params, grads
        for p in group["params"]:
            g = p.grad
            if g is None:
                if not joint:
                    continue
                g = torch.zeros_like(p)
            if g.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            params.append(p)
            grads.append(g)
        return params, grads

    def _use_foreach(self, group: dict, params: list[Tensor]) -> bool:
        foreach = group["foreach"]
        return _default_foreach(params) if foreach is None else bool(foreach)

    # -- fused (compiled) step ----------------------------------------------------------
    def _init_fused(self, fused, foreach) -> None:
        _check_fused(fused, foreach)
        self.fused = fused
        self._fused_verified = False

    def _fused_reason(self, jobs: list) -> str | None:
        """Why the fused step cannot run over these (group, params, ...) jobs; None if it can."""
        devices = set()
        for job in jobs:
            group, params = job[0], job[1]
            if group["foreach"] is False:
                return "a param group has foreach=False (the loop reference)"
            reg = group["reg"]
            if reg is not None and type(reg) is not _KINDS.get(reg.kind):
                return f"regularizer {type(reg).__name__} has no fused prox"
            devices.update(p.device for p in params)
        if len(devices) > 1:
            return f"parameters on several devices {sorted(map(str, devices))}"
        device = next(iter(devices))
        if device.type not in ("cpu", "cuda"):
            return f"torch.compile step on {device.type} is not supported"
        if device.type == "cuda" and not _triton_available():
            return "Triton is not installed (torch.compile needs it on CUDA)"
        if _COMPILE_ERROR:
            return f"torch.compile failed in this process: {_COMPILE_ERROR[0]}"
        return None

    def _use_fused(self, jobs: list) -> bool:
        if self.fused is False or not jobs:
            return False
        if self.fused is None and jobs[0][1][0].device.type != "cuda":
            return False  # CPU: compiling costs more than it saves (module docstring)
        reason = self._fused_reason(jobs)
        if reason is None:
            return True
        if self.fused:
            raise RuntimeError(f"{type(self).__name__}(fused=True) cannot run: {reason}. "
                               f"Use fused=None (falls back to foreach) or fused=False.")
        return False

    def _run_fused(self, name: str, impl: Callable, plan: tuple, *lists,
                   scalars: list[float]) -> bool:
        """Run the compiled ``impl``; False (nothing changed) when compilation failed and
        ``fused`` is None, so the caller runs the foreach path instead."""
        ref = lists[0][0]
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in lists[0]) \
            else torch.float32
        scal = torch.tensor(scalars, dtype=dtype).to(ref.device, non_blocking=True)
        fn = _compiled(name, impl)
        if self._fused_verified:
            fn(plan, *lists, scal)
            return True
        try:
            fn(plan, *lists, scal)
        except Exception as e:  # noqa: BLE001 - compilation can fail in many ways
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            if self.fused:
                raise RuntimeError(f"{type(self).__name__}(fused=True): torch.compile of the "
                                   f"step failed ({msg}). Use fused=None (falls back to "
                                   f"foreach) or fused=False.") from e
            _COMPILE_ERROR.append(msg)
            warnings.warn(f"{type(self).__name__}: torch.compile of the fused step failed "
                          f"({msg}); using the foreach path", RuntimeWarning, stacklevel=3)
            return False
        self._fused_verified = True
        return True

    def _state_tensor(self, p: Tensor, key: str) -> Tensor:
        """The state tensor ``key`` of ``p``, created as zeros on first use."""
        state = self.state[p]
        if key not in state:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state[key]

    def _subgradient_vars(self, group: dict, params: list[Tensor]) -> list[Tensor]:
        """v of each parameter, created at first use as v0 = theta0/delta + p0 with
        p0 in dJ(theta0) (zero on zero entries / groups), so prox(delta v0) = theta0."""
        if any("v" not in self.state[p] for p in params):
            sub = group["reg"].subgrad(params)
            for p, s in zip(params, sub):
                state = self.state[p]
                if "v" not in state:
                    state["v"] = p.detach().div(group["delta"]).add_(s)
        return [self.state[p]["v"] for p in params]

    # -- operations for lam controllers and weight decay ------------------------------
    def _prox_step(self, group: dict) -> float:
        """The step size of this group's prox: theta = prox_{s J}(...), s = delta (Bregman)."""
        return group["delta"]

    def _plain_step(self, group: dict) -> float:
        """The step size an unregularized group's gradient direction is applied with."""
        return group["lr"] * group["delta"]

    @torch.no_grad()
    def shrink_(self, group: dict, extra_lam: float) -> None:
        """Apply the prox of ``extra_lam * J`` (J: the group's regularizer) to its
        parameters, with the prox step the optimizer itself uses. For a Bregman group this
        is exactly the parameter its next prox would give with lam raised by
        ``extra_lam`` and the same v (group soft-thresholding composes additively); groups
        whose norm falls below the threshold die at once, weakest first."""
        reg = group["reg"]
        if reg is None or extra_lam <= 0:
            return
        extra = type(reg)(extra_lam)
        extra.prox_(group["params"], self._prox_step(group))

    @torch.no_grad()
    def decay_unregularized_(self, weight_decay: float) -> None:
        """Decoupled weight decay theta <- (1 - step * wd) theta on the unregularized
        groups only (reg None: a head, BatchNorm, ...), where the optimizer is plain
        Adam / SGD with ``step`` = lr * delta (ProxSGD: lr): AdamW-style decay at that
        step size. Regularized groups get their shrinkage from the prox instead."""
        for g in self.param_groups:
            if g["reg"] is None and g["params"]:
                torch._foreach_mul_(g["params"], 1 - self._plain_step(g) * weight_decay)

    # -- state dict --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:  # fresh dicts: self.param_groups is untouched
            if isinstance(g.get("reg"), Regularizer):
                g["reg"] = g["reg"].to_config()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        current = [g["reg"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, old in zip(self.param_groups, current):
            group["reg"] = _restore_reg(group.get("reg"), old)
            for key, value in self.defaults.items():
                group.setdefault(key, value if key != "reg" else None)
            self._validate_hparams(group)
            _check_reg(group)


def _restore_reg(saved, current: Regularizer | None) -> Regularizer | None:
    """Regularizer for a loaded group. Keeps the current object (so code holding a
    reference, e.g. a lam schedule, keeps working) when the kind matches."""
    if saved is None:
        return None
    config = saved.to_config() if isinstance(saved, Regularizer) else saved
    if current is not None and current.to_config()["kind"] == config.get("kind"):
        current.lam = config["lam"]
        return current
    return regularizer_from_config(config)


# ------------------------------------------------------------------------------------
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
        fused: torch.compile'd step over all groups (None: only on CUDA; see the
            module docstring).

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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        jobs = []
        for group in self.param_groups:
            params, grads = self._params_and_grads(group)
            if not params:
                continue
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


# ------------------------------------------------------------------------------------
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
        fused: torch.compile'd step over all groups (None: only on CUDA; see the
            module docstring).

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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        jobs = []
        for group in self.param_groups:
            params, grads = self._params_and_grads(group)
            if not params:
                continue
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


def _check_betas(betas) -> None:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas={betas!r}: must be a pair (beta1, beta2)")
    _check_unit_interval("betas[0]", betas[0])
    _check_unit_interval("betas[1]", betas[1])


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


# ------------------------------------------------------------------------------------
class ProxSGD(_RegularizedOptimizer):
    r"""Proximal (stochastic) gradient descent.

    .. code-block:: text

        d <- g                       (momentum == 0)
        d <- g at the first step, then d <- momentum * d + g   (heavy ball, as torch SGD)
        theta <- prox_{lr J}(theta - lr * d)

    With J = 0 this is exactly :class:`torch.optim.SGD` (dampening 0, no nesterov).

    State per parameter: ``momentum_buffer`` (if momentum > 0). ``fused``: the
    torch.compile'd step over all groups (None: only on CUDA; see the module docstring).
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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        jobs = []
        for group in self.param_groups:
            params, grads = self._params_and_grads(group)
            if params:
                jobs.append((group, params, grads))
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


# ------------------------------------------------------------------------------------
# pickle-free state: flat tensors (for safetensors) + a JSON-able dict
_FORMAT = "archdisc.optimizer_state"
_VERSION = 1


def optimizer_state_to_tensors(opt: Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split ``opt.state_dict()`` into flat tensors and a JSON-able dict.

    Tensors are named ``state.<param index>.<key>`` (contiguous copies, ready for
    ``safetensors.torch.save_file``); the dict holds the format, the optimizer class
    name, the param groups (hyper-parameters and regularizer configs) and non-tensor
    state such as step counts. Works for any optimizer whose param groups hold
    JSON-able values (after regularizers are turned into configs).
    """
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().clone(
                    memory_format=torch.contiguous_format)
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = []
    for g in sd["param_groups"]:
        g = {k: (v.to_config() if isinstance(v, Regularizer) else
                 list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        groups.append(g)
    meta = {"format": _FORMAT, "version": _VERSION, "optimizer": type(opt).__name__,
            "param_groups": groups, "state": scalars}
    try:
        json.dumps(meta)
    except TypeError as e:
        raise TypeError(f"optimizer state is not JSON-serialisable ({e}); keep param group "
                        f"values to numbers, strings, lists and dicts") from None
    return tensors, meta


def optimizer_state_from_tensors(opt: Optimizer, tensors: dict[str, Tensor],
                                 meta: dict) -> None:
    """Restore what :func:`optimizer_state_to_tensors` produced into ``opt``, a freshly
    built optimizer of the same class over the same parameters (same groups, order)."""
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(f"not an archdisc optimizer state (format {meta.get('format')!r}, "
                         f"version {meta.get('version')!r}; expected {_FORMAT!r} v{_VERSION})")
    if meta["optimizer"] != type(opt).__name__:
        raise ValueError(f"state was saved from a {meta['optimizer']}, cannot load it into a "
                         f"{type(opt).__name__}")
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        prefix, idx, key = name.split(".", 2)
        if prefix != "state":
            raise ValueError(f"unexpected tensor name {name!r} (expected state.<index>.<key>)")
        state.setdefault(int(idx), {})[key] = t.clone()
    for idx, values in meta["state"].items():
        state.setdefault(int(idx), {}).update(values)
    if len(meta["param_groups"]) != len(opt.param_groups):
        raise ValueError(f"saved state has {len(meta['param_groups'])} param groups, the "
                         f"optimizer has {len(opt.param_groups)}")
    groups = []
    for saved, current in zip(meta["param_groups"], opt.param_groups):
        groups.append({k: (tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list)
                           else v) for k, v in saved.items()})
    opt.load_state_dict({"state": state, "param_groups": groups})
