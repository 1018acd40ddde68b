"""Datasets for archdisc: loading, splitting, task construction and metrics.

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

import gzip
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from archdisc.errors import DataError

__all__ = [
    "Data",
    "DataError",
    "NORMALISATION",
    "load_data",
    "available_datasets",
    "read_idx",
    "read_cifar_batch",
    "psnr",
    "accuracy",
    "evaluate",
]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"

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

# Sub-folder names (torchvision layout) for the IDX datasets.
_IDX_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}
_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}



@dataclass
class Data:
    """A dataset ready for training: three splits plus what a model needs to know."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    in_shape: tuple[int, ...]
    out_dim: int
    task: str
    metric: str
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        sizes = "/".join(str(len(s)) for s in (self.train, self.val, self.test))
        return (f"Data(name={self.name!r}, task={self.task!r}, metric={self.metric!r}, "
                f"in_shape={self.in_shape}, out_dim={self.out_dim}, train/val/test={sizes})")


def available_datasets() -> dict[str, str]:
    """Name -> one-line description of every dataset :func:`load_data` knows."""
    return dict(_DESCRIPTIONS)


# --------------------------------------------------------------------------- readers

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in .gz) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip: truncated or not gzip at all
        raise DataError(f"{path} cannot be read ({e}); the file is damaged - replace it "
                        f"(e.g. reinstall {FASHION_MNIST_PACKAGE})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic bytes {raw[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - offset < count * dtype.itemsize:
        raise DataError(f"{path} is truncated: expected {count} values of shape {dims}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary batch: (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + 3 * 32 * 32
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path} is not a CIFAR-10 binary batch ({raw.size} bytes is not a "
                        f"multiple of {record})")
    raw = raw.reshape(-1, record)
    return raw[:, 1:].reshape(-1, 3, 32, 32).copy(), raw[:, 0].astype(np.int64)


# --------------------------------------------------------------------------- file finding

def _idx_candidate_dirs(name: str, root: Path | None) -> list[Path]:
    if root is None:
        return [FASHION_MNIST_SYSTEM_DIR] if name == "fashion-mnist" else []
    folder = _IDX_FOLDERS[name]
    return [root / folder / "raw", root / folder, root / name, root]


def _idx_missing_message(name: str, root: Path | None) -> str:
    folder = _IDX_FOLDERS[name]
    base = "ROOT" if root is None else str(root)
    files = "\n".join(f"  {base}/{folder}/raw/{f}[.gz]" for f in _IDX_FILES.values())
    lines = [f"Dataset {name!r} not found."]
    if name == "fashion-mnist":
        lines.append(f"Install the Debian package: apt-get install -y {FASHION_MNIST_PACKAGE}  "
                     f"(puts the files in {FASHION_MNIST_SYSTEM_DIR}/), or")
    lines.append("provide a folder with --data-root ROOT containing (gzipped or not; a flat "
                 "folder with the four files also works):")
    lines.append(files)
    return "\n".join(lines)


def _find_idx_files(name: str, root: Path | None) -> dict[str, Path]:
    for d in _idx_candidate_dirs(name, root):
        found = {}
        for key, stem in _IDX_FILES.items():
            for candidate in (d / stem, d / (stem + ".gz")):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(_IDX_FILES):
            return found
    raise DataError(_idx_missing_message(name, root))


def _load_idx_dataset(name: str, root: Path | None):
    files = _find_idx_files(name, root)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{name}: inconsistent {split} files {files[split + '_x']} "
                            f"{x.shape} and {files[split + '_y']} {y.shape}")
        _check_labels(y, files[split + "_y"])
    # (N, 28, 28) uint8 -> (N, 1, 28, 28)
    return (arrays["train_x"][:, None], arrays["train_y"].astype(np.int64),
            arrays["test_x"][:, None], arrays["test_y"].astype(np.int64))


def _load_cifar10(root: Path | None):
    train_names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    names = train_names + ["test_batch.bin"]
    folder = None if root is None else root / "cifar-10-batches-bin"
    if folder is None or not all((folder / n).is_file() for n in names):
        base = "ROOT" if root is None else str(root)
        listing = "\n".join(f"  {base}/cifar-10-batches-bin/{n}" for n in names)
        raise DataError("Dataset 'cifar10' not found. No package ships it: provide --data-root "
                        "ROOT containing the binary version of CIFAR-10 (not the python "
                        "pickles):\n" + listing)
    batches = [read_cifar_batch(folder / n) for n in train_names]
    x_train = np.concatenate([b[0] for b in batches])
    y_train = np.concatenate([b[1] for b in batches])
    x_test, y_test = read_cifar_batch(folder / "test_batch.bin")
    _check_labels(y_train, folder / "data_batch_*.bin")
    _check_labels(y_test, folder / "test_batch.bin")
    return x_train, y_train, x_test, y_test


def _check_labels(y: np.ndarray, path, classes: int = 10):
    """The built-in datasets have 10 classes: a label outside 0..9 means a damaged file."""
    bad = (y < 0) | (y >= classes)
    if bad.any():
        raise DataError(f"{path}: label {int(y[bad][0])} at record {int(np.argmax(bad))} is "
                        f"outside 0..{classes - 1}; the file is damaged - replace it")


# --------------------------------------------------------------------------- teacher

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


# --------------------------------------------------------------------------- main entry
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
        raise TypeError(f"unexpected options for {key!r}: {sorted(teacher_options)}")
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


def _load_teacher(seed: int, task: str, limit: int | None, options: dict) -> Data:
    if task != "classification":
        raise DataError("The 'teacher' dataset only supports task='classification'")
    allowed = {"teacher_in", "teacher_widths", "teacher_classes", "teacher_density",
               "n_train", "n_val", "n_test"}
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"unknown teacher options {sorted(unknown)}; allowed: {sorted(allowed)}")
    splits, meta = _make_teacher(seed, **options)
    if limit is not None:
        small = max(limit // 5, 1)
        splits = [(x[:m], y[:m]) for (x, y), m in zip(splits, (limit, small, small))]
    meta.update(seed=seed, limit=limit)
    train, val, test = (TensorDataset(x, y) for x, y in splits)
    return Data(train=train, val=val, test=test, in_shape=(meta["teacher_in"],),
                out_dim=meta["teacher_classes"], task="classification", metric="accuracy",
                name="teacher", meta=meta)


# --------------------------------------------------------------------------- metrics

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
        raise ValueError(f"unknown metric {metric!r}: use 'accuracy' or 'psnr'")
    was_training = model.training
    model.eval()
    try:
        from archdisc.recipe.loop import batches  # in-memory tensors, or any Dataset streamed
        total, count = 0.0, 0
        for x, y in batches(dataset, batch_size, device, workers):
            out = model(x)
            if metric == "accuracy":
                total += (out.argmax(-1) == y).sum().item()
                count += len(y)
            else:
                total += ((out.double() - y.double().reshape(out.shape)) ** 2).sum().item()
                count += out.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if metric == "accuracy":
        return 100.0 * total / count
    return _psnr_from_mse(total / count, 1.0)


# --------------------------------------------------------------------------- user data
def is_user_data(name: str) -> bool:
    """Whether ``name`` points to a user's own data: a .npz / .csv file or a folder (a
    built-in dataset's name always means the built-in)."""
    if _canonical(name) in _DESCRIPTIONS:
        return False
    p = Path(name).expanduser()
    return p.suffix.lower() in (".npz", ".csv") or p.is_dir()


def load_user_data(path, *, seed: int = 0, limit: int | None = None,
                   val_fraction: float = 0.1, test_fraction: float = 0.1,
                   target: str | None = None) -> Data:
    """A classification dataset from the user's files (nothing is pickled or downloaded):

    * ``.npz`` with arrays ``x`` (N, ...) and ``y`` (N,) integer labels; optional
      ``x_val`` / ``y_val`` and ``x_test`` / ``y_test`` (else drawn from x, y);
    * ``.csv`` of numbers with a header row; the label is the column named ``target``
      (default: the last column);
    * a folder in ImageFolder layout (``ROOT/<class>/<image>``, or ``ROOT/train/<class>``
      with optional ``ROOT/val/<class>`` and ``ROOT/test/<class>``); images must share
      one size. The images stay on disk: they are streamed in every epoch.

    Features are standardised with the training split's mean and std (per channel for
    images, per column otherwise); validation and test, when not given, are drawn from
    the rest with ``seed``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data {str(p)!r} does not exist; give a .npz, a .csv or a folder")
    target = None if target is None else str(target)  # a numeric name arrives as a number
    if target is not None and p.suffix.lower() != ".csv":
        raise DataError(f"data option 'target' names a CSV column; {p} is not a .csv")
    val = test = None
    if p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise DataError(f"{p}: missing array(s) {sorted(missing)}; an .npz needs 'x' "
                                f"and 'y' (optional 'x_val', 'y_val', 'x_test', 'y_test'); "
                                f"it has {f.files}")
            x, y = f["x"], f["y"]
            for split in ("val", "test"):
                pair = {f"x_{split}", f"y_{split}"}
                if len(pair & set(f.files)) == 1:
                    raise DataError(f"{p}: has {sorted(pair & set(f.files))[0]!r} without "
                                    f"{sorted(pair - set(f.files))[0]!r}; give both or neither")
            if "x_val" in f.files:
                val = (f["x_val"], f["y_val"])
            if "x_test" in f.files:
                test = (f["x_test"], f["y_test"])
    elif p.suffix.lower() == ".csv":
        x, y = _read_csv(p, target)
    else:
        return _image_folder(p, seed, limit, val_fraction, test_fraction)
    return _user_splits(p, x, y, test, seed, limit, val_fraction, test_fraction, val=val)


def _read_csv(p: Path, target: str | None):
    with open(p) as f:
        header = [c.strip() for c in f.readline().strip().split(",")]
    try:
        table = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{p}: not a numeric CSV with a header row ({e})") from None
    if table.shape[1] != len(header):
        raise DataError(f"{p}: the header names {len(header)} columns, the rows have "
                        f"{table.shape[1]}")
    if target is not None and target not in header:
        raise DataError(f"{p}: no column {target!r} for --data-option target; the columns "
                        f"are {', '.join(header)}")
    k = header.index(target) if target is not None else len(header) - 1
    return np.delete(table, k, axis=1), table[:, k]


class ImageFiles(torch.utils.data.Dataset):
    """Images of an image folder, read from disk on access and standardised per channel:
    ``(float tensor (C, H, W), label)``."""

    def __init__(self, samples: list, mean: torch.Tensor, std: torch.Tensor):
        self.samples, self.mean, self.std = samples, mean, std

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return (_read_image(path).float() - self.mean) / self.std, label


def _read_image(path) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    with Image.open(path) as im:  # RGB, as torchvision's ImageFolder reads images
        return pil_to_tensor(im.convert("RGB"))


def _folder_samples(root: Path, classes: list | None = None):
    """(path, label) pairs of ROOT/<class>/<image>; labels follow ``classes`` when given
    (so val/ and test/ use train/'s numbering)."""
    from torchvision.datasets import ImageFolder
    try:
        folder = ImageFolder(str(root), loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{root}: not an image folder ROOT/<class>/<image> ({e})") from None
    if classes is None:
        return folder.samples, folder.classes
    unknown = sorted(set(folder.classes) - set(classes))
    if unknown:
        raise DataError(f"{root}: classes {unknown} are not in the training folder's "
                        f"{classes}")
    return [(path, classes.index(folder.classes[k])) for path, k in folder.samples], classes


def _image_folder(p: Path, seed, limit, val_fraction, test_fraction) -> Data:
    """A streamed image folder: one pass checks the sizes and sums the pixels (for the
    training split's per-channel mean and std); the images are not kept."""
    root = p / "train" if (p / "train").is_dir() else p
    if root == p and any((p / s).is_dir() for s in ("val", "test")):
        raise DataError(f"{p}: has val/ or test/ but no train/; put the training classes "
                        f"under {p / 'train'}/<class>/ (or drop val/ and test/ to draw them "
                        f"from one folder)")
    samples, classes = _folder_samples(root)
    given = {s: _folder_samples(p / s, classes)[0] for s in ("val", "test")
             if root != p and (p / s).is_dir()}
    shape, sums = None, []
    for path, _ in samples + given.get("val", []) + given.get("test", []):
        t = _read_image(path)
        if shape is None:
            shape = tuple(t.shape)
        elif tuple(t.shape) != shape:
            raise DataError(f"{p}: {path} is {list(t.shape)} (channels, height, width), "
                            f"the first image {list(shape)}; resize them to one size first")
        t = t.double()
        sums.append(torch.stack([t.sum((1, 2)), (t * t).sum((1, 2))]))
    if len(samples) < 3:
        raise DataError(f"{root}: needs at least 3 images, found {len(samples)}")
    train, val, test = split_indices(len(samples), seed, limit, val_fraction, test_fraction,
                                     "val" in given, "test" in given)
    total = torch.stack([sums[i] for i in train.tolist()]).sum(0)  # (2, C)
    count = len(train) * shape[1] * shape[2]
    mean = total[0] / count
    std = ((total[1] - count * mean ** 2) / max(1, count - 1)).clamp(min=0).sqrt()
    mean, std = (v.float().view(-1, 1, 1) for v in (mean, std.clamp(min=1e-8)))
    pick = lambda idx: [samples[i] for i in idx.tolist()]  # noqa: E731
    splits = [pick(train), given.get("val") or pick(val), given.get("test") or pick(test)]
    train_set, val_set, test_set = (ImageFiles(s, mean, std) for s in splits)
    return Data(train=train_set, val=val_set, test=test_set, in_shape=shape,
                out_dim=len(classes), task="classification", metric="accuracy",
                name=str(p), meta={"seed": seed, "source": str(p), "classes": classes,
                                   "streamed": True})


def split_indices(n: int, seed: int, limit=None, val_fraction=0.1, test_fraction=0.1,
                  val_given=False, test_given=False):
    """(train, val, test) index tensors of ``n`` samples permuted by ``seed``: validation
    and test first (none when given separately), then the training rest, capped at
    ``limit``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = 0 if val_given else max(1, round(val_fraction * n))
    n_test = 0 if test_given else max(1, round(test_fraction * n))
    return perm[n_val + n_test:][:limit], perm[:n_val], perm[n_val:n_val + n_test]


def _user_splits(p, x, y, test, seed, limit, val_fraction, test_fraction,
                 val=None) -> Data:
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) < 3:
        raise DataError(f"{p}: x and y must hold the same number (>= 3) of samples, got "
                        f"{len(x)} and {len(y)}")
    given = {"x, y": (x, y), "x_val, y_val": val, "x_test, y_test": test}
    for name, (xs_, ys_) in ((k, v) for k, v in given.items() if v is not None):
        ys_ = np.asarray(ys_)
        if len(ys_) == 0 or not np.all(np.equal(np.mod(ys_, 1), 0)) or ys_.min() < 0:
            raise DataError(f"{p}: {name.split(', ')[1]}: labels must be integers >= 0 "
                            f"(classification)")
        if np.asarray(xs_).shape[1:] != x.shape[1:] or len(xs_) != len(ys_):
            raise DataError(f"{p}: {name} hold {len(xs_)} inputs of shape "
                            f"{list(np.asarray(xs_).shape[1:])} and {len(ys_)} labels; x has "
                            f"inputs of shape {list(x.shape[1:])}")
    train_idx, val_idx, test_idx = (i.numpy() for i in split_indices(
        len(x), seed, limit, val_fraction, test_fraction, val is not None, test is not None))
    if test is None:
        test = (x[test_idx], y[test_idx])
    if val is None:
        val = (x[val_idx], y[val_idx])
    raw = [(x[train_idx], y[train_idx]), val, test]
    xs = [torch.as_tensor(a, dtype=torch.float32) for a, _ in raw]
    dims = (0, 2, 3) if xs[0].dim() == 4 else (0,)
    mean = xs[0].mean(dims, keepdim=True)[0:1]
    std = xs[0].std(dims, keepdim=True)[0:1].clamp(min=1e-8)
    splits = [TensorDataset((xt - mean) / std, torch.as_tensor(b).long())
              for xt, (_, b) in zip(xs, raw)]
    classes = int(splits[0].tensors[1].max()) + 1
    for name, split in (("validation", splits[1]), ("test", splits[2])):
        if int(split.tensors[1].max()) >= classes:
            raise DataError(f"{p}: the {name} labels go up to {int(split.tensors[1].max())}, "
                            f"the training labels only to {classes - 1}; every class needs "
                            f"training samples")
    return Data(train=splits[0], val=splits[1], test=splits[2],
                in_shape=tuple(xs[0].shape[1:]), out_dim=classes, task="classification",
                metric="accuracy", name=str(p), meta={"seed": seed, "source": str(p)})
