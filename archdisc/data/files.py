"""The built-in datasets' files: IDX and CIFAR-10 binary readers, and finding the files
in ``--data-root`` or the Debian package's folder. Nothing is downloaded and no pickle is
ever loaded."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from archdisc.errors import DataError

__all__ = ["read_idx", "read_cifar_batch"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"

# Sub-folder names (torchvision layout) for the IDX datasets.
_IDX_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}
_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


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

