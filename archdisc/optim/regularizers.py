"""Sparsity regularizers J: value, proximal map and a subgradient.

A regularizer acts on the *list* of tensors of one optimizer param group (the group
is the unit of the joint prox), never on a single tensor in isolation. Every
regularizer here is a weighted sum of Euclidean norms of groups of entries,

    J(x) = lam * sum_g w_g * ||x_g||_2,

and differs only in what a group g is:

=============  =========================================  ==================
class          group g                                    weight w_g
=============  =========================================  ==================
``L1``         one entry                                  1
``GroupL2``    slice i along dim 0 of *every* tensor      sqrt(n_i)
``KernelL2``   one (out, in) kernel of a 4-D conv weight  sqrt(kh * kw)
``TensorL2``   one whole tensor                           sqrt(numel)
=============  =========================================  ==================

Its proximal map is group soft-thresholding,

    prox_{delta J}(x)_g = x_g * max(0, 1 - delta * lam * w_g / ||x_g||),

exactly zero for a group whose norm is at most ``delta * lam * w_g``, and a
subgradient is ``lam * w_g * x_g / ||x_g||`` (zero on zero groups).

A group-norm regularizer may carry per-group factors ``unit_w`` (a tensor of positive
numbers, one per group, as its norms are laid out): w_g is then multiplied by them, so
that groups die in an order other than their norms' (the lam controller's
``group_weight = "fisher"``). The fused (compiled) step does not take them.

All maps are reshape/broadcast based: per-group norms come from a reduction over
the trailing dimensions, the shrinkage is one broadcast multiply. No index
gather/scatter.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from archdisc.errors import ConfigError

__all__ = ["Regularizer", "L1", "GroupL2", "KernelL2", "TensorL2",
           "regularizer_from_config"]


class Regularizer:
    """Base class. ``lam`` (>= 0) may be changed at any time, e.g. by a schedule.

    Subclasses implement :meth:`_prox_into`, :meth:`value` and :meth:`subgrad`;
    :meth:`check` validates the tensors of a param group up front.
    """

    kind = "none"

    def __init__(self, lam: float):
        self.lam = lam

    @property
    def lam(self) -> float:
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        try:
            lam = float(value)
        except (TypeError, ValueError):  # not a number
            raise ConfigError(f"{type(self).__name__}: lam must be a finite number >= 0, "
                              f"got {value!r}") from None
        if not (lam >= 0.0 and math.isfinite(lam)):
            raise ConfigError(f"{type(self).__name__}: lam must be a finite number >= 0, "
                              f"got {lam}")
        self._lam = lam

    # -- interface ----------------------------------------------------------------
    def check(self, params: Sequence[Tensor]) -> None:
        """Raise ConfigError (a ValueError) if these tensors cannot form one group of this
        regularizer."""

    def value(self, params: Sequence[Tensor]) -> float:
        raise NotImplementedError

    def subgrad(self, params: Sequence[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def prox_(self, params: Sequence[Tensor], delta: float) -> None:
        """In place: x <- argmin_z 1/2 ||z - x||^2 + delta * J(z)."""
        _check_delta(delta)
        params = list(params)
        self.check(params)
        self._prox_into(params, params, delta, 1.0)

    @torch.no_grad()
    def prox_into(self, out: Sequence[Tensor], x: Sequence[Tensor], delta: float,
                  scale: float = 1.0) -> None:
        """out <- prox_{delta J}(scale * x), without forming ``scale * x``.

        The Bregman optimizers call this with ``scale = delta`` to map the subgradient
        variable v to the parameters in one pass. ``out`` may be ``x`` itself.
        """
        _check_delta(delta)
        if not _positive(scale):
            raise ConfigError(f"prox_into: scale must be > 0, got {scale}")
        out, x = list(out), list(x)
        if len(out) != len(x) or any(o.shape != xi.shape for o, xi in zip(out, x)):
            raise ConfigError("prox_into: out and x must hold tensors of the same shapes")
        self.check(x)
        self._prox_into(out, x, delta, scale)

    def _prox_into(self, out: list[Tensor], x: list[Tensor], delta: float,
                   scale: float) -> None:
        raise NotImplementedError

    def group_weight(self, params: Sequence[Tensor]) -> float:
        """The weight w_g of this regularizer's groups in ``params`` (one value: every
        group of one param group has the same weight)."""
        raise NotImplementedError

    # -- serialisation ---------------------------------------------------------------
    def to_config(self) -> dict:
        return {"kind": self.kind, "lam": self.lam}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam!r})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.lam == other.lam

    __hash__ = None  # mutable


def _positive(x) -> bool:
    try:
        return bool(x > 0)
    except (TypeError, RuntimeError):  # not a number (RuntimeError: a tensor of several)
        return False


def _check_delta(delta: float) -> None:
    if not _positive(delta):
        raise ConfigError(f"prox step delta must be > 0, got {delta}")


# ------------------------------------------------------------------------------------
class L1(Regularizer):
    r"""J(x) = lam * sum_j |x_j| over every entry of every tensor.

    prox: soft-thresholding, computed as ``x - clamp(x, -t, t)`` with ``t = delta*lam``
    (exactly 0 where ``|x| <= t``). Subgradient: ``lam * sign(x)`` (0 at 0).
    """

    kind = "l1"

    def value(self, params):
        return self.lam * sum(float(p.detach().abs().sum()) for p in params)

    def group_weight(self, params):
        return 1.0

    @torch.no_grad()
    def subgrad(self, params):
        return [torch.sign(p).mul_(self.lam) for p in params]

    def _prox_into(self, out, x, delta, scale):
        # prox_{delta J}(s x) = s * (x - clamp(x, -t/s, t/s)),  t = delta * lam
        thr = (delta / scale) * self.lam
        for o, xi in zip(out, x):
            if o is xi:
                xi.sub_(xi.clamp(-thr, thr))
            else:
                torch.clamp(xi, -thr, thr, out=o)
                torch.sub(xi, o, out=o)
            if scale != 1.0:
                o.mul_(scale)


# ------------------------------------------------------------------------------------
class _GroupNormReg(Regularizer):
    """Weighted sum of group norms. Subclasses define :meth:`_norms`."""

    unit_w: Tensor | None = None  # per-group factors on w_g (module docstring)

    def _weighted(self, params: list[Tensor]):
        """:meth:`_norms` with ``unit_w`` applied to the weights."""
        parts = self._norms(params)
        if self.unit_w is None:
            return parts
        return [(n, w * self.unit_w.view(n.shape), m) for n, w, m in parts]

    def _norms(self, params: list[Tensor]) -> list[tuple[Tensor, float, list[int]]]:
        """[(norms, weight, member indices)]: ``norms`` holds one group norm per entry
        and broadcasts (after trailing unsqueezes) against each member tensor."""
        raise NotImplementedError

    def group_weight(self, params):
        params = list(params)
        self.check(params)
        weights = {w for _, w, _ in self._norms([p.detach() for p in params])}
        if len(weights) != 1:
            raise ConfigError(f"{type(self).__name__}: groups of different weights {weights}; "
                              f"put tensors whose groups differ in size in separate param "
                              f"groups")
        return weights.pop()

    def value(self, params):
        params = list(params)
        self.check(params)
        with torch.no_grad():
            return self.lam * sum(float((w * n).sum()) for n, w, _ in self._weighted(params))

    @torch.no_grad()
    def group_norms(self, params) -> Tensor:
        """The norm of every group in ``params``, flattened."""
        return torch.cat([n.flatten() for n, _, _ in self._norms([p.detach() for p in params])])

    @torch.no_grad()
    def subgrad(self, params):
        params = list(params)
        self.check(params)
        out: list[Tensor | None] = [None] * len(params)
        for norms, w, members in self._weighted(params):
            # lam * w * x / ||x||, and 0 on zero groups
            coef = torch.where(norms > 0, (self.lam * w) / norms, 0.0)
            for i in members:
                out[i] = params[i] * _expand(coef, params[i])
        return out

    def _prox_into(self, out, x, delta, scale):
        # prox_{delta J}(s x)_g = s x_g * max(0, 1 - (delta/s) lam w / ||x_g||)
        c = (delta / scale) * self.lam
        for norms, w, members in self._weighted(x):
            thr = c * w
            if c > 0:
                # 1 - thr/0 = -inf, so zero groups get factor exactly 0
                factor = torch.div(thr, norms).neg_().add_(1.0).clamp_(min=0.0)
                if scale != 1.0:
                    factor.mul_(scale)
            else:  # J = 0: prox is the identity
                factor = torch.full_like(norms, scale)
            for i in members:
                torch.mul(x[i], _expand(factor, x[i]), out=out[i])


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """View ``t`` with trailing singleton dims so that it broadcasts against ``like``."""
    return t.view(t.shape + (1,) * (like.dim() - t.dim()))


def _row_sq_norms(t: Tensor) -> Tensor:
    """Squared norm of each slice along dim 0."""
    if t.dim() == 1:
        return t * t
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim()))).square_()


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


class GroupL2(_GroupNormReg):
    r"""J(x) = lam * sum_i sqrt(n_i) * ||unit_i||_2.

    Unit i is slice i along dim 0 of *every* tensor of the param group together
    (a linear layer's weight row i, bias entry i and a BatchNorm's weight/bias entry
    i), n_i its number of entries. A zero unit is then zero-invariant: it outputs 0.
    All tensors of the group must have the same size along dim 0.
    """

    kind = "group_l2"

    def check(self, params):
        shapes = [_shape(p) for p in params]
        if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) > 1:
            raise ConfigError(
                f"GroupL2: all tensors of a param group must agree on dim 0 (unit i is "
                f"slice i of every tensor), got shapes {shapes}. Put tensors with a "
                f"different number of units (or 0-d tensors) in separate param groups.")

    def _norms(self, params):
        if not params:
            return []
        sq = _row_sq_norms(params[0])
        for p in params[1:]:
            if p.dim() == 1:
                sq.addcmul_(p, p)
            else:
                sq.add_(_row_sq_norms(p))
        per_unit = sum(math.prod(p.shape[1:]) for p in params)
        return [(sq.sqrt_(), math.sqrt(per_unit), list(range(len(params))))]


class KernelL2(_GroupNormReg):
    r"""J(x) = lam * sum_{o,i} sqrt(kh*kw) * ||x[o, i, :, :]||_2 over 4-D conv weights.

    Each (out, in) kernel is one group. Only 4-D tensors are accepted.
    """

    kind = "kernel_l2"

    def check(self, params):
        for p in params:
            if p.dim() != 4:
                raise ConfigError(
                    f"KernelL2 acts on 4-D conv weights (out, in, kh, kw), got a tensor of "
                    f"shape {_shape(p)}. Put biases / norm parameters / linear weights in "
                    f"another param group (reg=None, L1 or GroupL2).")

    def _norms(self, params):
        return [(torch.linalg.vector_norm(p, dim=(2, 3)), math.sqrt(p.shape[2] * p.shape[3]),
                 [i]) for i, p in enumerate(params)]


class TensorL2(_GroupNormReg):
    r"""J(x) = lam * sum_t sqrt(numel(t)) * ||t||_2: each tensor is one group.

    For gates of candidate edges and weight blocks that switch on or off as a whole.
    """

    kind = "tensor_l2"

    def _norms(self, params):
        return [(torch.linalg.vector_norm(p), math.sqrt(p.numel()), [i])
                for i, p in enumerate(params)]


# ------------------------------------------------------------------------------------
# The prox in traceable form, for the optimizers' torch.compile'd (fused) step: the
# thresholds are 0-d tensors (a lam schedule or an lr change does not recompile), the
# group weights come from the shapes (static under compilation). Same maps as above:
#   out <- prox_{delta J}(scale * x) with c = (delta / scale) * lam.
FUSED_KINDS = ("l1", "group_l2", "kernel_l2", "tensor_l2")


def fused_prox(kind: str, out: list[Tensor], x: list[Tensor], c: Tensor,
               scale: Tensor) -> None:
    """``out <- prox_{delta J}(scale * x)`` for J of ``kind`` (one of :data:`FUSED_KINDS`),
    with ``c = (delta / scale) * lam`` and ``scale`` 0-d tensors. Written for
    ``torch.compile``; the eager :meth:`Regularizer.prox_into` is the reference."""
    if kind == "l1":
        for o, xi in zip(out, x):
            o.copy_((xi - xi.clamp(-c, c)) * scale)
        return
    if kind == "group_l2":
        sq = None
        for xi in x:
            r = (xi * xi) if xi.dim() == 1 else (xi * xi).flatten(1).sum(1)
            sq = r if sq is None else sq + r
        w = math.sqrt(sum(math.prod(xi.shape[1:]) for xi in x))
        parts = [(sq.sqrt(), w, list(range(len(x))))]
    elif kind == "kernel_l2":
        if all(o.is_contiguous() for o in out):
            # as (out * in, kh * kw) rows: a reduction over dims (2, 3) followed by the
            # broadcast multiply trips inductor's CPU outer-loop fusion (KeyError
            # 'bufN', torch 2.14)
            x = [xi.reshape(-1, xi.shape[2] * xi.shape[3]) for xi in x]
            out = [o.view(-1, o.shape[2] * o.shape[3]) for o in out]
            parts = [((xi * xi).sum(1).sqrt(), math.sqrt(xi.shape[1]), [i])
                     for i, xi in enumerate(x)]
        else:
            parts = [((xi * xi).sum((2, 3)).sqrt(), math.sqrt(xi.shape[2] * xi.shape[3]),
                      [i]) for i, xi in enumerate(x)]
    elif kind == "tensor_l2":
        parts = [((xi * xi).sum().sqrt(), math.sqrt(xi.numel()), [i])
                 for i, xi in enumerate(x)]
    else:
        raise ConfigError(f"no fused prox for regularizer kind {kind!r}; known kinds: "
                          f"{list(FUSED_KINDS)}")
    for norms, w, members in parts:
        thr = c * w
        # = clamp(1 - thr / norm, min=0): 0 for groups with norm <= thr (zero groups too)
        factor = torch.where(norms > thr, 1.0 - thr / norms, 0.0) * scale
        for i in members:
            out[i].copy_(x[i] * _expand(factor, x[i]))


_KINDS = {c.kind: c for c in (L1, GroupL2, KernelL2, TensorL2)}


def regularizer_from_config(config: dict | None) -> Regularizer | None:
    """Inverse of :meth:`Regularizer.to_config` (``None`` stays ``None``)."""
    if config is None:
        return None
    if not isinstance(config, dict) or "kind" not in config:
        raise ConfigError(f"regularizer config must be a dict with a 'kind', got {config!r}")
    kind = config["kind"]
    if kind not in _KINDS:
        raise ConfigError(f"unknown regularizer kind {kind!r}; known kinds: {sorted(_KINDS)}")
    extra = set(config) - {"kind", "lam"}
    if extra or "lam" not in config:
        raise ConfigError(f"regularizer config for {kind!r} takes exactly the keys "
                          f"'kind' and 'lam', got {sorted(config)}")
    return _KINDS[kind](config["lam"])
