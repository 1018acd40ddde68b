"""The metrics: accuracy (%), PSNR (dB), and :func:`evaluate` of a model on a dataset."""
from __future__ import annotations

import math

import numpy as np
import torch

from archdisc.errors import ConfigError, DataError
from archdisc.recipe.loop import batches

__all__ = ["psnr", "accuracy", "evaluate"]


def _as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def psnr(pred, target, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)``; ``inf`` if MSE is 0."""
    pred, target = _as_tensor(pred).double(), _as_tensor(target).double()
    mse = torch.mean((pred - target) ** 2).item()
    return _psnr_from_mse(mse, peak)


def _psnr_from_mse(mse: float, peak: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def accuracy(logits, y) -> float:
    """Percentage (0-100) of rows of ``logits`` whose argmax equals the label ``y``."""
    logits, y = _as_tensor(logits), _as_tensor(y)
    return 100.0 * (logits.argmax(-1) == y).double().mean().item()


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: torch.utils.data.Dataset, metric: str,
             batch_size: int = 1024, device: str | torch.device = "cpu",
             workers: int = 0) -> float:
    """Mean accuracy (%) or PSNR (dB, from the MSE over the whole set) of ``model`` on ``dataset``.

    The model runs in eval mode without gradients; its previous train/eval mode is restored.
    """
    if metric not in ("accuracy", "psnr"):
        raise ConfigError(f"metric {metric!r}: unknown; use 'accuracy' or 'psnr'")
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0
        for x, y in batches(dataset, batch_size, device, workers):
            out = model(x)
            if metric == "accuracy":
                total += (out.argmax(-1) == y).sum().item()
                count += y.numel()  # a label per sample, or per token
            else:
                total += ((out.double() - y.double().reshape(out.shape)) ** 2).sum().item()
                count += out.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("dataset: empty, nothing to evaluate on; give at least one sample")
    if metric == "accuracy":
        return 100.0 * total / count
    return _psnr_from_mse(total / count, 1.0)
