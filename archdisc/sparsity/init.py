"""Sparse initialisation: start the inverse scale space flow from few active parameters.

Bregman training switches parameters *on*; it starts from a sparse network. Each
element / unit / kernel survives with probability ``density``; survivors are drawn so
that the layer keeps the Kaiming variance in expectation,

    E[w^2] = density * std^2 = 2 / fan_in   =>   std = sqrt(2 / (density * fan_in)),

(times ``damping``), and everything else is exactly zero. Biases are small and
non-negative, and zero for dead units so that a dead unit outputs exactly zero.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from archdisc.errors import ConfigError

__all__ = ["sparse_init_", "bias_init_", "density_report"]

_MODES = ("element", "unit", "kernel")


@torch.no_grad()
def sparse_init_(weight: Tensor, density: float, mode: str = "element",
                 damping: float = 1.0, generator: torch.Generator | None = None,
                 fan_in: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Sparse Kaiming initialisation of ``weight``, in place.

    Args:
        weight: a linear weight (out, in), a conv weight (out, in, *kernel), or any
            tensor when ``fan_in`` is given (``mode="element"`` / ``"unit"``).
        density: probability in (0, 1] that an element / unit / kernel survives.
        mode: ``"element"`` (each entry), ``"unit"`` (slice i along dim 0: a neuron's
            row or a conv filter) or ``"kernel"`` (each (out, in) slice of a conv
            weight; needs at least 3 dims).
        damping: factor on the standard deviation (> 0).
        generator: random generator (on the weight's device) for reproducibility.
        fan_in: overrides ``prod(weight.shape[1:])``.
        mask: the keep mask to use (its shape as returned below) instead of drawing one,
            so that tensors whose units live and die together share it.

    At least one element / unit / kernel survives. Survivors are N(0, std^2) with
    ``std = damping * sqrt(2 / (density * fan_in))``, the rest are exactly 0.

    Returns:
        the boolean keep mask at the granularity of ``mode``: shape ``weight.shape``
        (element), ``(out,)`` (unit) or ``(out, in)`` (kernel).
    """
    if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    if mode not in _MODES:
        raise ConfigError(f"mode must be one of {_MODES}, got {mode!r}")
    if not (isinstance(damping, (int, float)) and 0.0 < damping < math.inf):
        raise ConfigError(f"damping must be a finite number > 0, got {damping!r}")
    if not weight.is_floating_point():
        raise ConfigError(f"weight must be a floating point tensor, got {weight.dtype}")
    if fan_in is None:
        if weight.dim() < 2:
            raise ConfigError(f"cannot infer fan_in of a tensor of shape "
                              f"{tuple(weight.shape)} (needs (out, in, ...)); pass fan_in=")
        fan_in = math.prod(weight.shape[1:])
    if not (isinstance(fan_in, (int, float)) and fan_in > 0):
        raise ConfigError(f"fan_in must be > 0, got {fan_in}")
    if mode == "element":
        mask_shape = tuple(weight.shape)
    elif mode == "unit":
        if weight.dim() < 1:
            raise ConfigError("mode='unit' needs a tensor with at least one dimension")
        mask_shape = tuple(weight.shape[:1])
    else:
        if weight.dim() < 3:
            raise ConfigError(f"mode='kernel' needs a conv weight (out, in, *kernel), got "
                              f"shape {tuple(weight.shape)}; use mode='unit' or 'element'")
        mask_shape = tuple(weight.shape[:2])

    if mask is not None:
        if mask.dtype != torch.bool or tuple(mask.shape) != mask_shape:
            raise ConfigError(f"mask must be a bool tensor of shape {mask_shape}, got "
                              f"{mask.dtype} {tuple(mask.shape)}")
        mask = mask.to(weight.device)
    else:
        mask = torch.rand(mask_shape, generator=generator, device=weight.device) < density
    if mask.numel() and not mask.any():  # keep at least one
        i = torch.randint(mask.numel(), (1,), generator=generator, device=weight.device)
        mask.view(-1)[i] = True

    std = damping * math.sqrt(2.0 / (density * fan_in))
    weight.normal_(0.0, std, generator=generator)
    full = mask.view(mask_shape + (1,) * (weight.dim() - len(mask_shape)))
    weight.masked_fill_(~full, 0.0)
    return mask


@torch.no_grad()
def bias_init_(bias: Tensor, fan_in: int, r: float = 1.0, mask: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """Bias ~ U[0, r / sqrt(fan_in)] (small, non-negative), in place.

    ``mask`` (bool, shape of ``bias``): units where it is False get bias exactly 0, so a
    dead unit (zero weights) outputs exactly zero. Returns ``bias``.
    """
    if not (isinstance(fan_in, (int, float)) and fan_in > 0):
        raise ConfigError(f"fan_in must be > 0, got {fan_in!r}")
    if not (isinstance(r, (int, float)) and 0.0 <= r < math.inf):
        raise ConfigError(f"r must be a finite number >= 0, got {r!r}")
    bias.uniform_(0.0, r / math.sqrt(fan_in), generator=generator)
    if mask is not None:
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(bias.shape):
            raise ConfigError(f"mask must be a bool tensor of the bias' shape "
                              f"{tuple(bias.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        bias.masked_fill_(~mask.to(bias.device), 0.0)
    return bias


_UNIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def density_report(module: nn.Module) -> dict:
    """How sparse a module is.

    Returns a dict with
      * ``"params"``: per named parameter ``{"numel", "nonzero", "density"}``;
      * ``"layers"``: per Linear / Conv module ``{"type", "alive", "total", "density"}``
        where a unit (row / filter) is alive when its weight slice has a non-zero entry;
        conv layers also report ``"kernels_alive"`` / ``"kernels_total"``;
      * ``"total"``: ``{"numel", "nonzero", "density"}`` over all parameters.
    """
    params, numel, nonzero = {}, 0, 0
    for name, p in module.named_parameters():
        n, nz = p.numel(), int(torch.count_nonzero(p))
        params[name] = {"numel": n, "nonzero": nz, "density": nz / n if n else 0.0}
        numel, nonzero = numel + n, nonzero + nz
    layers = {}
    for name, m in module.named_modules():
        if not isinstance(m, _UNIT_LAYERS):
            continue
        w = m.weight
        total = w.shape[0]
        alive = int(w.reshape(total, -1).ne(0).any(1).sum()) if w.numel() else 0
        entry = {"type": type(m).__name__, "alive": alive, "total": total,
                 "density": alive / total if total else 0.0}
        if w.dim() >= 3:
            k = w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(2)
            entry["kernels_alive"], entry["kernels_total"] = int(k.sum()), k.numel()
        layers[name] = entry
    return {"params": params, "layers": layers,
            "total": {"numel": numel, "nonzero": nonzero,
                      "density": nonzero / numel if numel else 0.0}}
