"""The user's own data: an .npz, a numeric CSV or an image folder (streamed from disk),
and the seeded split of a dataset into training, validation and test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import pil_to_tensor

from archdisc.data.builtin import _DESCRIPTIONS, _canonical
from archdisc.data.dataset import Data
from archdisc.errors import DataError

__all__ = ["is_user_data", "load_user_data", "split_indices", "ImageFiles"]


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
    with Image.open(path) as im:  # RGB, as torchvision's ImageFolder reads images
        return pil_to_tensor(im.convert("RGB"))


def _folder_samples(root: Path, classes: list | None = None):
    """(path, label) pairs of ROOT/<class>/<image>; labels follow ``classes`` when given
    (so val/ and test/ use train/'s numbering)."""
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
