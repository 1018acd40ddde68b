"""What the sparse Bregman optimizers (LinBreg, AdaBreg) and proximal SGD share.

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

The optimizers live in :mod:`archdisc.optim.linbreg`, :mod:`archdisc.optim.adabreg` and
:mod:`archdisc.optim.proxsgd` (each with its single-tensor, multi-tensor and fused
kernels); their pickle-free state form in :mod:`archdisc.optim.state`. This module holds
the argument checks, the ``torch.compile`` plumbing of the fused step and the base class.

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
  :func:`~archdisc.optim.state.optimizer_state_to_tensors` /
  :func:`~archdisc.optim.state.optimizer_state_from_tensors` give a pickle-free
  (safetensors + JSON) form.
* Bad arguments (lr, delta, momentum, betas, eps, fused, a param group's ``reg`` or
  tensors) raise :class:`archdisc.errors.ConfigError` (a ValueError) naming the argument
  and what is allowed.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from archdisc.errors import ConfigError
from archdisc.optim.regularizers import _KINDS, Regularizer, regularizer_from_config


# ------------------------------------------------------------------------------------
# validation helpers
def _check_lr(lr) -> None:
    if not (isinstance(lr, (int, float)) and 0.0 <= lr < math.inf):
        raise ConfigError(f"Invalid learning rate lr={lr!r}: must be a finite number >= 0")


def _check_delta(delta) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < math.inf):
        raise ConfigError(f"Invalid delta={delta!r}: must be a finite number > 0 "
                          f"(theta = prox_(delta J)(delta * v))")


def _check_unit_interval(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ConfigError(f"Invalid {name}={value!r}: must be in [0, 1)")


def _check_eps(eps) -> None:
    if not (isinstance(eps, (int, float)) and 0.0 <= eps < math.inf):
        raise ConfigError(f"Invalid eps={eps!r}: must be a finite number >= 0")


def _check_betas(betas) -> None:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ConfigError(f"Invalid betas={betas!r}: must be a pair (beta1, beta2)")
    _check_unit_interval("betas[0]", betas[0])
    _check_unit_interval("betas[1]", betas[1])


def _check_reg(group: dict) -> None:
    reg = group["reg"]
    if reg is None:
        return
    if not isinstance(reg, Regularizer):
        raise ConfigError(f"param group 'reg' must be a Regularizer (L1, GroupL2, KernelL2, "
                          f"TensorL2) or None, got {type(reg).__name__}")
    reg.check(group["params"])


def _check_params(group: dict) -> None:
    for p in group["params"]:
        if not p.is_floating_point():
            raise ConfigError(f"can only optimize real floating point tensors, got a tensor "
                              f"of dtype {p.dtype} and shape {tuple(p.shape)}")


def _default_foreach(tensors: list[Tensor]) -> bool:
    if torch.jit.is_scripting():
        return False
    return all(t.device.type in ("cpu", "cuda") for t in tensors)


def _check_fused(fused, foreach) -> None:
    if fused not in (None, True, False):
        raise ConfigError(f"Invalid fused={fused!r}: must be None, True or False")
    if fused and foreach:
        raise ConfigError("fused=True and foreach=True cannot both be set: with fused=True "
                          "leave foreach None or False")


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
    @staticmethod
    def _closure_loss(closure):
        """The loss of ``closure`` (computed with gradients enabled), or None."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _active_groups(self):
        """``(group, params, grads)`` of every param group with a gradient to apply."""
        for group in self.param_groups:
            params, grads = self._params_and_grads(group)
            if params:
                yield group, params, grads

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
            if getattr(reg, "unit_w", None) is not None:
                return "a regularizer has per-unit weights (unit_w)"
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
        extra.unit_w = getattr(reg, "unit_w", None)
        extra.prox_(group["params"], self._prox_step(group))

    @torch.no_grad()
    def cut_(self, group: dict, extra_lam: float) -> None:
        """Raise lam by ``extra_lam`` as a hard cut: the groups :meth:`shrink_` would kill
        die, the others keep their weights as they are (not shrunk: a trained model keeps
        its weights), and v is re-anchored at v = theta / delta + p, p in dJ(theta) under
        the raised lam (``group["reg"].lam``, already raised), as at the optimizer's start,
        so the next prox returns them."""
        params = group["params"]
        theta = [p.clone() for p in params]
        self.shrink_(group, extra_lam)
        for p, t in zip(params, theta):
            p.copy_(torch.where(p != 0, t, 0.0))
        for p, s in zip(params, group["reg"].subgrad(params)):
            if "v" in self.state[p]:
                self.state[p]["v"].copy_(p / group["delta"] + s)

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

