"""The user's own data: an .npz, a numeric CSV or an image folder (streamed from disk),
and the seeded split of a dataset into training, validation and test."""
from __future__ import annotations

import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
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

    Refused with a :class:`DataError` (naming the file and the fix): a NaN or inf value
    (the array and index, or the CSV line and column), an image that cannot be decoded
    (every image is decoded once by the scan that sums the pixels), and data with fewer
    than 2 classes. Without ``target`` every error about a CSV names the column taken as
    the label; ``meta["target"]`` records it.

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
        x, y, val, test = _read_npz(p)
        for suffix, pair in (("", (x, y)), ("_val", val), ("_test", test)):
            for name, a in zip(("x" + suffix, "y" + suffix), pair or ()):
                _check_finite_array(p, name, a)
    elif p.suffix.lower() == ".csv":
        header = _csv_header(p)
        label = target if target is not None else header[-1]
        try:
            x, y = _read_csv(p, header, target)
            data = _user_splits(p, x, y, test, seed, limit, val_fraction, test_fraction,
                                labels=f"column {label!r}")
        except DataError as e:
            if target is not None:
                raise
            which = ("the last column, taken as the label" if f"column {label!r}" in str(e)
                     else f"the label is column {label!r}, the last")
            raise DataError(f"{e} ({which}: name another with --data-option "
                            f"target=COLUMN)") from None
        data.meta["target"] = label
        return data
    else:
        return _image_folder(p, seed, limit, val_fraction, test_fraction)
    return _user_splits(p, x, y, test, seed, limit, val_fraction, test_fraction, val=val)


def _read_npz(p: Path):
    """x, y, (x_val, y_val) or None, (x_test, y_test) or None of an .npz (no pickles)."""
    val = test = None
    if not zipfile.is_zipfile(p):  # np.load would try it as a .npy or a pickle
        raise DataError(f"{p}: not an .npz archive; write it with numpy.savez(path, x=..., "
                        f"y=...)")
    try:
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
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not an npz, pickles
        reason = " ".join(str(e).split())
        raise DataError(f"{p}: not a readable .npz of numeric arrays ({reason}); write it "
                        f"with numpy.savez(path, x=..., y=...)") from None
    return x, y, val, test


def _check_finite_array(p: Path, name: str, a: np.ndarray):
    """Refuse an .npz array that is not numbers or holds NaN / inf, naming the index."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{p}: array {name!r} holds {a.dtype} values, not real numbers; save "
                        f"it as a float or integer array")
    # the sum needs no boolean copy of a large array; only a failing sum looks closer
    if a.dtype.kind == "f" and a.size and not _finite_sum(a):
        bad = ~np.isfinite(a)
        if bad.any():
            i = tuple(int(k) for k in np.argwhere(bad)[0])
            raise DataError(f"{p}: {name}[{', '.join(map(str, i))}] is {a[i]} "
                            f"({int(bad.sum())} non-finite value(s) in {name!r}); replace "
                            f"them with finite numbers or drop those samples")


def _finite_sum(a: np.ndarray) -> bool:
    """Whether the float64 sum of ``a`` is finite: then every value is (NaN and inf
    propagate); False also when finite values overflow it, so check exactly then."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(a.sum(dtype=np.float64)))


def _csv_header(p: Path) -> list:
    try:
        with open(p) as f:
            line = f.readline()
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{p}: not a text CSV ({e}); give numbers with a header row") from None
    header = [c.strip() for c in line.strip().split(",")]
    if header == [""]:
        raise DataError(f"{p}: is empty; a CSV needs a header row naming the columns, "
                        f"then one row of numbers per sample")
    return header


def _csv_line(p: Path, row: int) -> int:
    """The line number (1 = the header) of data row ``row`` (0-based) as np.loadtxt counts
    rows: after the header, skipping blank and '#' comment lines."""
    with open(p) as f:
        next(f)
        for number, line in enumerate(f, start=2):
            if line.split("#", 1)[0].strip():
                if row == 0:
                    return number
                row -= 1
    return -1


def _csv_bad_cell(p: Path, header: list) -> str | None:
    """Where a CSV that np.loadtxt refuses first has a value that is not a number, or a
    row with another number of values than the header (None when not found)."""
    try:
        with open(p) as f:
            next(f)
            for number, line in enumerate(f, start=2):
                cells = line.split("#", 1)[0].strip()
                if not cells:
                    continue
                cells = cells.split(",")
                if len(cells) != len(header):
                    return (f"line {number} has {len(cells)} values, the header names "
                            f"{len(header)} columns")
                for name, cell in zip(header, cells):
                    try:
                        float(cell)
                    except ValueError:
                        return (f"line {number}, column {name!r}: {cell.strip()!r} is not "
                                f"a number")
    except (UnicodeDecodeError, OSError):
        return None
    return None


def _read_csv(p: Path, header: list, target: str | None):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": refused below
            table = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except ValueError as e:  # also UnicodeDecodeError
        where = _csv_bad_cell(p, header)
        raise DataError(f"{p}: not a numeric CSV with a header row "
                        f"({where or ' '.join(str(e).split())})") from None
    if table.shape[0] == 0:
        raise DataError(f"{p}: has a header row but no rows of numbers")
    if table.shape[1] != len(header):
        raise DataError(f"{p}: the header names {len(header)} columns, the rows have "
                        f"{table.shape[1]}")
    if target is not None and target not in header:
        raise DataError(f"{p}: no column {target!r} for --data-option target; the columns "
                        f"are {', '.join(header)}")
    if not _finite_sum(table):
        bad = ~np.isfinite(table)
        if bad.any():
            r, c = (int(k) for k in np.argwhere(bad)[0])
            raise DataError(f"{p}: line {_csv_line(p, r)}, column {header[c]!r} is "
                            f"{table[r, c]} ({int(bad.sum())} non-finite value(s) in all); "
                            f"replace them with numbers or drop those rows")
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


# what PIL raises on a file it cannot decode (empty, truncated, not an image, corrupt)
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                 Image.DecompressionBombError)


def _read_image(path) -> torch.Tensor:
    try:
        with Image.open(path) as im:  # RGB, as torchvision's ImageFolder reads images
            return pil_to_tensor(im.convert("RGB"))
    except _IMAGE_ERRORS as e:
        if isinstance(e, UnidentifiedImageError):  # its message repeats the path
            empty = Path(path).stat().st_size == 0
            reason = "empty file" if empty else "not a known image format"
        else:
            reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: cannot be decoded as an image ({reason}); replace the file "
                        f"or remove it from the folder") from None


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
    if len(classes) < 2:
        raise DataError(f"{root}: one class folder ({classes[0]!r}) found; a classifier needs "
                        f"at least 2 classes: put each class's images in its own folder "
                        f"{root}/<class>/")
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
                 val=None, labels="y") -> Data:
    """``labels`` names y in messages (an .npz's array, a CSV's column)."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) < 3:
        raise DataError(f"{p}: x and y must hold the same number (>= 3) of samples, got "
                        f"{len(x)} and {len(y)}")
    given = {"x, y": (x, y), "x_val, y_val": val, "x_test, y_test": test}
    for name, (xs_, ys_) in ((k, v) for k, v in given.items() if v is not None):
        ys_ = np.asarray(ys_)
        if len(ys_) == 0 or not np.all(np.equal(np.mod(ys_, 1), 0)) or ys_.min() < 0:
            what = labels if name == "x, y" else name.split(", ")[1]
            raise DataError(f"{p}: {what}: labels must be integers >= 0 "
                            f"(classification)")
        if np.asarray(xs_).shape[1:] != x.shape[1:] or len(xs_) != len(ys_):
            raise DataError(f"{p}: {name} hold {len(xs_)} inputs of shape "
                            f"{list(np.asarray(xs_).shape[1:])} and {len(ys_)} labels; x has "
                            f"inputs of shape {list(x.shape[1:])}")
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{p}: {labels}: every label is {present[0]:g}, one class; a "
                        f"classifier needs at least 2 classes (give samples of another class, "
                        f"or check that this is the label)")
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
