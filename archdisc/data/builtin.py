"""The built-in datasets by name: :func:`load_data`, its splits and tasks.

Everything is read from local files; nothing is ever downloaded and no pickle is
ever loaded.  Supported names (see :func:`available_datasets`):

* ``fashion-mnist`` -- IDX files from ``--data-root`` or from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
* ``mnist``, ``kmnist`` -- IDX files under ``ROOT/MNIST/raw`` / ``ROOT/KMNIST/raw``.
* ``cifar10`` -- the *binary* batches under ``ROOT/cifar-10-batches-bin``.
* ``teacher`` -- synthetic labels from a random sparse teacher MLP with a known
  ("planted") architecture.

Conventions
-----------
* Pixels are first scaled to [0, 1].  For ``task="classification"`` images are
  then standardised with fixed per-dataset mean/std constants
  (:data:`NORMALISATION`);
  targets are int64 class labels, metric ``accuracy`` (%).
* For ``task="denoising"`` pixels stay in [0, 1].  The target ``y`` is the clean
  image; the input ``x`` is the clean image, optionally Gaussian-blurred with std
  ``blur`` pixels, plus N(0, noise_sigma^2) noise.  The noisy input is NOT clipped.
  The noise is drawn once from ``seed`` (train, then val, then test, from one
  generator seeded with ``seed + 1``), so every split -- including train -- is a
  fixed set of noisy/clean pairs.  Metric ``psnr`` in dB with peak 1.0.
* Split: the official training set is permuted with ``torch.Generator`` seeded by
  ``seed``; the first ``val_size`` indices form the validation set (default 5,000
  for the 60k/50k-sample sets, i.e. 55k/5k and 45k/5k), the rest the training
  set.  The test set is the official test set, in file order.
* ``limit``: caps the training set to ``limit`` samples and the validation and test
  sets to ``max(limit // 5, 1)`` samples each (first samples of each split).
* ``flatten``: inputs (and denoising targets) become ``(N, d)``; ``in_shape = (d,)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from archdisc.data.dataset import Data
from archdisc.data.files import (_IDX_FOLDERS, FASHION_MNIST_PACKAGE, _load_cifar10,
                                 _load_idx_dataset)
from archdisc.data.teacher import _load_teacher
from archdisc.errors import ConfigError, DataError

__all__ = ["NORMALISATION", "available_datasets", "load_data"]

# Per-channel (mean, std) of the [0, 1]-scaled training images, used to
# standardise inputs for classification.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

_DESCRIPTIONS = {
    "fashion-mnist": "Fashion-MNIST 28x28 grey clothing images, 10 classes, 60k train / 10k test "
                     f"(Debian package {FASHION_MNIST_PACKAGE} or --data-root)",
    "mnist": "MNIST 28x28 handwritten digits, 10 classes (needs --data-root with MNIST/raw/)",
    "kmnist": "Kuzushiji-MNIST 28x28 cursive Japanese characters, 10 classes "
              "(needs --data-root with KMNIST/raw/)",
    "cifar10": "CIFAR-10 32x32 colour images, 10 classes, 50k train / 10k test "
               "(needs --data-root with cifar-10-batches-bin/)",
    "teacher": "synthetic: labels from a random sparse teacher MLP with a planted architecture",
}


def available_datasets() -> dict[str, str]:
    """Name -> one-line description of every dataset :func:`load_data` knows."""
    return dict(_DESCRIPTIONS)


# --------------------------------------------------------------------------- transforms

def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, std ``sigma`` pixels, reflect padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    out = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out


def _standardise(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


# --------------------------------------------------------------------------- load_data
def _canonical(name: str) -> str:
    """The built-in dataset key a user's spelling means (``Fashion_MNIST`` -> ...)."""
    key = name.lower().replace("_", "-")
    return {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(key, key)


def load_data(name: str, *, root: str | os.PathLike | None = None, task: str = "classification",
              seed: int = 0, val_size: int | None = None, noise_sigma: float = 0.3,
              blur: float = 0.0, limit: int | None = None, flatten: bool = False,
              **teacher_options) -> Data:
    """Load dataset ``name`` for ``task`` with a seeded train/val split (see module docstring).

    ``teacher_options`` (only for ``name="teacher"``): ``teacher_in``, ``teacher_widths``,
    ``teacher_classes``, ``teacher_density``, ``n_train``, ``n_val``, ``n_test``.
    """
    key = _canonical(name)
    if key not in _DESCRIPTIONS:
        listing = ", ".join(sorted(_DESCRIPTIONS))
        raise DataError(f"Unknown dataset {name!r}. Available datasets: {listing}")
    if task not in ("classification", "denoising"):
        raise DataError(f"Unknown task {task!r}: use 'classification' or 'denoising'")
    if teacher_options and key != "teacher":
        raise ConfigError(f"data_options {sorted(teacher_options)}: dataset {key!r} takes no "
                          f"options (only 'teacher' does); remove them")
    if limit is not None and limit < 1:
        raise DataError("limit must be a positive integer")
    root_path = None if root is None else Path(root).expanduser()

    if key == "teacher":
        return _load_teacher(seed, task, limit, teacher_options)

    if key in _IDX_FOLDERS:
        x_train, y_train, x_test, y_test = _load_idx_dataset(key, root_path)
    else:
        x_train, y_train, x_test, y_test = _load_cifar10(root_path)

    # Seeded train/validation split of the official training set.
    n = len(x_train)
    if val_size is None:
        val_size = 5000 if n > 20000 else max(1, n // 10)
    if not 0 < val_size < n:
        raise DataError(f"val_size must be in 1..{n - 1}, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    test_idx = np.arange(len(x_test))
    if limit is not None:
        small = max(limit // 5, 1)
        train_idx, val_idx, test_idx = train_idx[:limit], val_idx[:small], test_idx[:small]

    raw_splits = [(x_train[train_idx], y_train[train_idx]), (x_train[val_idx], y_train[val_idx]),
                  (x_test[test_idx], y_test[test_idx])]
    in_shape = tuple(int(s) for s in x_train.shape[1:])
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    meta: dict[str, Any] = {"seed": seed, "val_size": int(val_size), "limit": limit}

    splits = []
    if task == "classification":
        mean, std = NORMALISATION[key]
        for x, y in raw_splits:
            xt = _standardise(torch.from_numpy(x).float() / 255.0, mean, std)
            splits.append((xt, torch.from_numpy(np.ascontiguousarray(y)).long()))
        out_dim = n_classes
        meta["normalisation"] = {"mean": list(mean), "std": list(std)}
    else:
        noise_gen = torch.Generator().manual_seed(seed + 1)
        for x, _ in raw_splits:
            clean = torch.from_numpy(x).float() / 255.0
            noisy = _gaussian_blur(clean, blur) if blur > 0 else clean.clone()
            noisy = noisy + noise_sigma * torch.randn(clean.shape, generator=noise_gen)
            splits.append((noisy, clean))
        out_dim = int(np.prod(in_shape))
        meta.update(noise_sigma=noise_sigma, blur=blur, num_classes=n_classes)

    if flatten:
        splits = [(x.reshape(len(x), -1), y.reshape(len(y), -1) if task == "denoising" else y)
                  for x, y in splits]
        in_shape = (int(np.prod(in_shape)),)

    train, val, test = (TensorDataset(x, y) for x, y in splits)
    return Data(train=train, val=val, test=test, in_shape=in_shape, out_dim=out_dim, task=task,
                metric="accuracy" if task == "classification" else "psnr", name=key, meta=meta)
