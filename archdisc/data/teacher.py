"""The ``teacher`` dataset: labels from a random sparse teacher MLP with a known
("planted") architecture."""
from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from archdisc.data.dataset import Data
from archdisc.errors import ConfigError, DataError


def _make_teacher(seed: int, teacher_in: int = 20, teacher_widths=(8, 4), teacher_classes: int = 4,
                  teacher_density: float = 0.5, n_train: int = 4000, n_val: int = 1000,
                  n_test: int = 1000):
    """Sample x ~ N(0, I) and label it with a random sparse ReLU teacher MLP.

    Hidden layers: ``h = relu(W h)``; the output layer is linear with a bias.  Each
    weight is kept with probability ``teacher_density`` (at least one incoming weight
    per unit) and drawn from N(0, 2 / (fan_in * density)) so activations stay O(1).
    The output layer is standardised per class and its bias tuned so that the
    argmax classes are balanced over all samples.  Label = argmax of the logits.
    If a draw still leaves a class with fewer than half its share of samples
    (e.g. dead ReLU units), the weights are redrawn (up to 20 times, keeping the
    most balanced draw).
    """
    def count(name, value, lo, hi=10**7):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise DataError(f"data option {name!r}: must be an integer in {lo}..{hi}, got "
                            f"{value!r}")
        return value
    if not isinstance(teacher_widths, (list, tuple)) or not teacher_widths:
        raise DataError(f"data option 'teacher_widths': must be a list of widths such as "
                        f"[8, 4], got {teacher_widths!r}")
    widths = [count("teacher_widths", w, 1, 10**5) for w in teacher_widths]
    count("teacher_in", teacher_in, 1, 10**5)
    count("teacher_classes", teacher_classes, 2, 10**4)
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        count(name, n, 1)
    if not isinstance(teacher_density, (int, float)) or not 0.0 < teacher_density <= 1.0:
        raise DataError("data option 'teacher_density': must be a number in (0, 1]")
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    x = torch.randn(n, teacher_in, generator=g)
    sizes = [teacher_in] + widths + [teacher_classes]
    best = None
    for attempt in range(20):
        h, layer_nnz = x, []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            mask = torch.rand(fan_out, fan_in, generator=g) < teacher_density
            mask[torch.arange(fan_out), torch.randint(fan_in, (fan_out,), generator=g)] = True
            w = torch.randn(fan_out, fan_in, generator=g) * math.sqrt(2.0 / (fan_in * teacher_density))
            layer_nnz.append(int(mask.sum()))
            h = h @ (w * mask).T
            if i < len(sizes) - 2:
                h = torch.relu(h)
        logits = (h - h.mean(0)) / h.std(0).clamp_min(1e-8)
        logits = logits + _balancing_bias(logits)
        y = logits.argmax(1)
        smallest = int(torch.bincount(y, minlength=teacher_classes).min())
        if best is None or smallest > best[0]:
            best = (smallest, y, layer_nnz, attempt)
        if smallest >= 0.5 * n / teacher_classes:
            break
    _, y, layer_nnz, attempt = best
    meta = {
        "teacher_in": teacher_in,
        "teacher_widths": widths,
        "teacher_classes": teacher_classes,
        "teacher_density": teacher_density,
        "teacher_arch": "-".join(str(s) for s in sizes),
        "teacher_nonzero_weights": layer_nnz,
        "teacher_draw": attempt,
        "n_train": n_train, "n_val": n_val, "n_test": n_test,
    }
    splits = (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n))
    return [(x[s].contiguous(), y[s].contiguous()) for s in splits], meta


def _balancing_bias(logits: torch.Tensor, iters: int = 300, lr: float = 0.1) -> torch.Tensor:
    """A per-class bias that (approximately) equalises the argmax class counts."""
    n, k = logits.shape
    b = torch.zeros(k)
    for t in range(iters):
        counts = torch.bincount((logits + b).argmax(1), minlength=k).float()
        b -= lr * (1 - t / iters) * (counts * k / n - 1)
    return b


def _load_teacher(seed: int, task: str, limit: int | None, options: dict) -> Data:
    if task != "classification":
        raise DataError("The 'teacher' dataset only supports task='classification'")
    allowed = {"teacher_in", "teacher_widths", "teacher_classes", "teacher_density",
               "n_train", "n_val", "n_test"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"data_options {sorted(unknown)}: not options of the 'teacher' "
                          f"dataset; use only {', '.join(sorted(allowed))}")
    splits, meta = _make_teacher(seed, **options)
    if limit is not None:
        small = max(limit // 5, 1)
        splits = [(x[:m], y[:m]) for (x, y), m in zip(splits, (limit, small, small))]
    meta.update(seed=seed, limit=limit)
    train, val, test = (TensorDataset(x, y) for x, y in splits)
    return Data(train=train, val=val, test=test, in_shape=(meta["teacher_in"],),
                out_dim=meta["teacher_classes"], task="classification", metric="accuracy",
                name="teacher", meta=meta)
