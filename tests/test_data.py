"""Tests for archdisc.data: readers, splits, tasks, error messages and metrics."""

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from archdisc.data import (
    NORMALISATION,
    Data,
    DataError,
    accuracy,
    available_datasets,
    evaluate,
    load_data,
    psnr,
    read_cifar_batch,
    read_idx,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_FASHION = all(
    (FASHION_DIR / f"{s}-ubyte.gz").is_file()
    for s in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
)


# --------------------------------------------------------------------------- helpers

def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    array = np.asarray(array)
    if array.dtype == np.int32:
        array = array.astype(">i4")
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + array.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_fake_idx_dataset(folder: Path, n_train=60, n_test=20, gz=True, seed=0):
    """Four IDX files with random 28x28 images and labels 0..9; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr)
    return arrays


def write_fake_cifar(root: Path, n_per_batch=20, seed=0):
    """Fake CIFAR-10 binary batches; returns (train records, test records) as uint8 arrays."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    records = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (n_per_batch, 1 + 3072), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, n_per_batch)
        rec.tofile(folder / name)
        records.append(rec)
    return np.concatenate(records[:5]), records[5]


# --------------------------------------------------------------------------- readers

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_roundtrip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_idx(tmp_path / ("img" + suffix), images)
    got = read_idx(tmp_path / ("img" + suffix))
    assert got.dtype == np.uint8 and got.shape == (7, 5, 3)
    np.testing.assert_array_equal(got, images)

    labels = rng.integers(-1000, 1000, 11).astype(np.int32)
    write_idx(tmp_path / ("lab" + suffix), labels)
    np.testing.assert_array_equal(read_idx(tmp_path / ("lab" + suffix)), labels)


def test_read_idx_rejects_garbage(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_read_cifar_batch(tmp_path):
    rng = np.random.default_rng(2)
    rec = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
    rec.tofile(tmp_path / "b.bin")
    images, labels = read_cifar_batch(tmp_path / "b.bin")
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, rec[:, 0])
    # channel-major, then row-major: byte 1 + c*1024 + r*32 + col
    for i, c, r, col in [(0, 0, 0, 1), (1, 1, 5, 7), (2, 2, 31, 31)]:
        assert images[i, c, r, col] == rec[i, 1 + c * 1024 + r * 32 + col]
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError):
        read_cifar_batch(tmp_path / "odd.bin")


# --------------------------------------------------------------------------- layouts

def test_torchvision_layout_gz(tmp_path):
    arrays = write_fake_idx_dataset(tmp_path / "MNIST" / "raw", gz=True)
    data = load_data("mnist", root=tmp_path)
    assert isinstance(data, Data)
    # 60 training images -> default val = 60 // 10 = 6
    assert (len(data.train), len(data.val), len(data.test)) == (54, 6, 20)
    assert data.in_shape == (1, 28, 28) and data.out_dim == 10
    assert data.task == "classification" and data.metric == "accuracy"
    x_test, y_test = data.test.tensors
    assert x_test.dtype == torch.float32 and y_test.dtype == torch.int64
    mean, std = NORMALISATION["mnist"]
    expected = (arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255 - mean[0]) / std[0]
    np.testing.assert_allclose(x_test[:, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # train + val is a permutation of the training set
    all_labels = torch.cat([data.train.tensors[1], data.val.tensors[1]]).sort().values
    np.testing.assert_array_equal(all_labels.numpy(), np.sort(arrays["train-labels-idx1-ubyte"]))


def test_flat_folder_raw_files(tmp_path):
    write_fake_idx_dataset(tmp_path, gz=False)
    data = load_data("fashion-mnist", root=tmp_path, val_size=10, flatten=True)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    assert data.in_shape == (784,)
    assert data.train.tensors[0].shape == (50, 784)


def test_kmnist_and_limit(tmp_path):
    write_fake_idx_dataset(tmp_path / "KMNIST" / "raw", n_train=100, n_test=30)
    data = load_data("kmnist", root=tmp_path, limit=40)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 8, 8)


def test_cifar10_layout(tmp_path):
    train_rec, test_rec = write_fake_cifar(tmp_path)
    data = load_data("cifar10", root=tmp_path, val_size=10)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    assert data.in_shape == (3, 32, 32) and data.out_dim == 10
    x_test, y_test = data.test.tensors
    np.testing.assert_array_equal(y_test.numpy(), test_rec[:, 0])
    mean, std = NORMALISATION["cifar10"]
    for c in range(3):
        raw = test_rec[:, 1 + c * 1024: 1 + (c + 1) * 1024].reshape(-1, 32, 32)
        expected = (raw.astype(np.float32) / 255 - mean[c]) / std[c]
        np.testing.assert_allclose(x_test[:, c].numpy(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- errors

def test_missing_fashion_mnist_names_package_and_layout(tmp_path):
    with pytest.raises(DataError) as info:
        load_data("fashion-mnist", root=tmp_path)
    msg = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in msg
    assert "t10k-labels-idx1-ubyte" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)


def test_missing_mnist_and_cifar_list_layout(tmp_path):
    with pytest.raises(DataError, match="MNIST/raw/train-images-idx3-ubyte"):
        load_data("mnist")
    with pytest.raises(DataError, match="--data-root"):
        load_data("kmnist", root=tmp_path)
    with pytest.raises(DataError) as info:
        load_data("cifar10", root=tmp_path)
    assert "cifar-10-batches-bin/data_batch_1.bin" in str(info.value)
    assert "cifar-10-batches-bin/test_batch.bin" in str(info.value)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as info:
        load_data("imagenet")
    for name in available_datasets():
        assert name in str(info.value)
    assert {"fashion-mnist", "mnist", "kmnist", "cifar10", "teacher"} <= set(available_datasets())
    assert all(isinstance(d, str) and d for d in available_datasets().values())


def test_bad_task_and_options(tmp_path):
    with pytest.raises(ValueError, match="task"):
        load_data("teacher", task="segmentation")
    with pytest.raises(ValueError, match="classification"):
        load_data("teacher", task="denoising")
    from archdisc.errors import ConfigError
    with pytest.raises(ConfigError, match=r"data_options \['teacher_depth'\].*teacher_in"):
        load_data("teacher", teacher_depth=3)
    with pytest.raises(ConfigError, match="data_options.*takes no options"):
        load_data("mnist", root=tmp_path, teacher_in=3)


# --------------------------------------------------------------------------- teacher

def test_teacher_deterministic_balanced_and_meta():
    a = load_data("teacher", seed=3)
    b = load_data("teacher", seed=3)
    c = load_data("teacher", seed=4)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert (len(a.train), len(a.val), len(a.test)) == (4000, 1000, 1000)
    assert a.in_shape == (20,) and a.out_dim == 4 and a.metric == "accuracy"
    assert a.meta["teacher_widths"] == [8, 4] and a.meta["teacher_in"] == 20
    assert a.meta["teacher_classes"] == 4
    x, y = a.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4000, 20)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


@pytest.mark.parametrize("seed", range(5))
def test_teacher_every_class_present(seed):
    data = load_data("teacher", seed=seed)
    counts = torch.bincount(data.train.tensors[1], minlength=4)
    assert counts.min().item() >= 0.1 * len(data.train)  # at least 40% of the fair share


def test_teacher_options_and_limit():
    data = load_data("teacher", seed=1, teacher_in=10, teacher_widths=(6, 5, 3),
                     teacher_classes=3, n_train=500, n_val=100, n_test=200, limit=100)
    assert data.meta["teacher_widths"] == [6, 5, 3] and data.meta["teacher_arch"] == "10-6-5-3-3"
    assert (len(data.train), len(data.val), len(data.test)) == (100, 20, 20)
    assert data.in_shape == (10,) and data.out_dim == 3
    assert set(data.train.tensors[1].tolist()) == {0, 1, 2}


# --------------------------------------------------------------------------- denoising

def numpy_psnr(a, b, peak=1.0):
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * np.log10(peak ** 2 / mse)


def test_denoising_fake_data(tmp_path):
    write_fake_idx_dataset(tmp_path / "MNIST" / "raw", n_train=100, n_test=40)
    data = load_data("mnist", root=tmp_path, task="denoising", noise_sigma=0.3, seed=5)
    assert data.metric == "psnr" and data.task == "denoising" and data.out_dim == 784
    x, y = data.train.tensors
    assert x.shape == y.shape == (90, 1, 28, 28)
    assert y.min() >= 0 and y.max() <= 1                    # clean target in [0, 1]
    assert x.min() < 0 or x.max() > 1                       # noisy input is not clipped
    assert psnr(y, y) == math.inf
    expected = 20 * math.log10(1 / 0.3)
    assert abs(numpy_psnr(x.numpy(), y.numpy()) - expected) < 0.5
    assert abs(psnr(x, y) - numpy_psnr(x.numpy(), y.numpy())) < 1e-6
    # the noise is fixed by the seed
    again = load_data("mnist", root=tmp_path, task="denoising", noise_sigma=0.3, seed=5)
    assert torch.equal(again.test.tensors[0], data.test.tensors[0])
    flat = load_data("mnist", root=tmp_path, task="denoising", flatten=True)
    assert flat.in_shape == (784,) and flat.train.tensors[1].shape == (90, 784)


def test_denoising_blur(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_fake_idx_dataset(folder, n_train=20, n_test=10, gz=False)
    constant = np.full((10, 28, 28), 200, dtype=np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte", constant)
    data = load_data("mnist", root=tmp_path, task="denoising", noise_sigma=0.0, blur=1.5)
    x, y = data.test.tensors
    # a blurred constant image is the same constant
    # a constant times a kernel that sums to 1 up to rounding (float32: a few ulps)
    np.testing.assert_allclose(x.numpy(), 200 / 255, rtol=1e-5, atol=0)
    xt, yt = data.train.tensors
    assert not torch.allclose(xt, yt)                       # random images get smoothed
    assert xt.var() < yt.var()
    assert abs(xt.mean().item() - yt.mean().item()) < 0.02  # blur keeps the brightness


@pytest.mark.skipif(not HAVE_FASHION, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_denoising_psnr():
    data = load_data("fashion-mnist", task="denoising", noise_sigma=0.3, limit=2000)
    x, y = data.val.tensors
    assert abs(numpy_psnr(x.numpy(), y.numpy()) - 20 * math.log10(1 / 0.3)) < 0.5
    assert psnr(y, y) == math.inf


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def fashion():
    if not HAVE_FASHION:
        pytest.skip("dataset-fashion-mnist not installed (apt-get install -y dataset-fashion-mnist)")
    return load_data("fashion-mnist", seed=0)


def test_fashion_mnist_full(fashion):
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (55000, 5000, 10000)
    assert fashion.out_dim == 10 and fashion.in_shape == (1, 28, 28)
    y = torch.cat([fashion.train.tensors[1], fashion.val.tensors[1]])
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(fashion.test.tensors[1]), torch.full((10,), 1000))
    x = fashion.train.tensors[0]
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01  # standardised


def test_fashion_mnist_split_depends_on_seed(fashion):
    same = load_data("fashion-mnist", seed=0)
    other = load_data("fashion-mnist", seed=1)
    assert torch.equal(same.val.tensors[0], fashion.val.tensors[0])
    assert torch.equal(same.train.tensors[1], fashion.train.tensors[1])
    assert not torch.equal(other.val.tensors[0], fashion.val.tensors[0])
    assert torch.equal(other.test.tensors[0], fashion.test.tensors[0])  # official test set


# --------------------------------------------------------------------------- metrics

def test_psnr_matches_numpy():
    rng = np.random.default_rng(3)
    a = rng.random((5, 1, 8, 8)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(numpy_psnr(a, b), abs=1e-6)
    assert psnr(a, b) == pytest.approx(numpy_psnr(a, b), abs=1e-6)
    assert psnr(a, b, peak=255.0) == pytest.approx(numpy_psnr(a, b, 255.0), abs=1e-6)
    assert psnr(a, a) == math.inf


def test_accuracy_matches_numpy():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(300, 7)).astype(np.float32)
    y = rng.integers(0, 7, 300)
    expected = 100 * np.mean(np.argmax(logits, 1) == y)
    assert accuracy(torch.from_numpy(logits), torch.from_numpy(y)) == pytest.approx(expected)
    assert accuracy(logits, y) == pytest.approx(expected)
    assert accuracy(np.eye(3), np.arange(3)) == 100.0


def test_evaluate_accuracy_and_psnr():
    torch.manual_seed(0)
    x = torch.randn(250, 6)
    y = torch.randint(0, 3, (250,))
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Dropout(0.9))
    model.train()
    ds = torch.utils.data.TensorDataset(x, y)
    logits = (x @ model[0].weight.T + model[0].bias).detach()
    # no near-tie (measured gap >= 4.6e-4) that evaluate's own batched float32 matmul could
    # decide the other way: the two argmaxes, and so the accuracies, are then equal
    top2 = logits.topk(2, 1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-5
    expected = 100 * np.mean(np.argmax(logits.numpy(), 1) == y.numpy())
    assert evaluate(model, ds, "accuracy", batch_size=64) == pytest.approx(expected)
    assert model.training  # previous mode restored

    clean = torch.rand(100, 1, 4, 4)
    noisy = clean + 0.1 * torch.randn(clean.shape)
    identity = torch.nn.Identity()
    got = evaluate(identity, torch.utils.data.TensorDataset(noisy, clean), "psnr", batch_size=33)
    assert got == pytest.approx(numpy_psnr(noisy.numpy(), clean.numpy()), abs=1e-4)
    from archdisc.errors import ConfigError
    with pytest.raises(ConfigError, match="metric 'f1'.*'accuracy' or 'psnr'"):
        evaluate(identity, ds, "f1")
    with pytest.raises(DataError, match="empty"):
        evaluate(identity, torch.utils.data.TensorDataset(noisy[:0], clean[:0]), "psnr")


# ---------------------------------------------------------------------- the user's data
def _blobs(n=300, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 3 * torch.nn.functional.one_hot(y, d).float()
    return x.numpy(), y.numpy()


def test_user_npz_and_csv_are_the_same_data(tmp_path):
    from archdisc.data import load_user_data
    x, y = _blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    np.savetxt(tmp_path / "d.csv", np.column_stack([x, y]), delimiter=",", header=header,
               comments="")
    a, b = load_user_data(tmp_path / "d.npz"), load_user_data(tmp_path / "d.csv")
    assert (len(a.train), len(a.val), len(a.test)) == (240, 30, 30)
    assert a.in_shape == (6,) and a.out_dim == 3
    for sa, sb in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        # float32 standardised values (O(1)), float text vs binary: a few ulps
        torch.testing.assert_close(sa.tensors[0], sb.tensors[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(sa.tensors[1], sb.tensors[1])
    mean = a.train.tensors[0].mean(0)  # standardised with the training split's statistics
    torch.testing.assert_close(mean, torch.zeros(6), rtol=0, atol=1e-5)  # float32 sums of 240


def test_user_image_folder_and_bad_files(tmp_path):
    from PIL import Image
    from archdisc.data import DataError, load_user_data
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c in ("cat", "dog"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / c / f"{i}.png")
    d = load_user_data(tmp_path / "img")
    assert d.in_shape == (3, 8, 8) and d.out_dim == 2 and len(d.test) == 8
    assert len(d.train) + len(d.val) == 24
    # streamed from disk, standardised with the training split's per-channel statistics
    assert not isinstance(d.train, torch.utils.data.TensorDataset)
    train = torch.stack([d.train[i][0] for i in range(len(d.train))])
    # float32 statistics over ~1,300 values per channel: rounding ~1e-7, measured 4e-8
    torch.testing.assert_close(train.mean((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(train.std((0, 2, 3)), torch.ones(3), rtol=0, atol=1e-5)
    # a val/ folder is used as it is; test/ labels follow train/'s class numbering
    (tmp_path / "img" / "val" / "dog").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img/val/dog/0.png")
    d = load_user_data(tmp_path / "img")
    assert (len(d.train), len(d.val), len(d.test)) == (24, 1, 8)
    assert d.val[0][1] == 1  # "dog" is class 1 in train/
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "img/val/dog/1.png")
    with pytest.raises(DataError, match="resize them to one size"):
        load_user_data(tmp_path / "img")
    (tmp_path / "img" / "train").rename(tmp_path / "flat")  # classes at the top ...
    (tmp_path / "img" / "test").rename(tmp_path / "flat" / "test")  # ... and a test/
    with pytest.raises(DataError, match="no train/"):
        load_user_data(tmp_path / "flat")
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(DataError, match=r"missing array\(s\) \['x', 'y'\]"):
        load_user_data(tmp_path / "bad.npz")
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    with pytest.raises(DataError, match="not a numeric CSV"):
        load_user_data(tmp_path / "bad.csv")


def test_csv_target_column_and_npz_validation_split(tmp_path):
    from archdisc.data import DataError, load_user_data
    x, y = _blobs()
    cols = [f"f{i}" for i in range(3)] + ["label"] + [f"f{i}" for i in range(3, 6)]
    table = np.column_stack([x[:, :3], y, x[:, 3:]])
    np.savetxt(tmp_path / "d.csv", table, delimiter=",", header=",".join(cols), comments="")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a, b = load_user_data(tmp_path / "d.csv", target="label"), load_user_data(tmp_path / "d.npz")
    assert torch.equal(a.train.tensors[1], b.train.tensors[1])
    torch.testing.assert_close(a.train.tensors[0], b.train.tensors[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="no column 'y'.*f0, f1, f2, label"):
        load_user_data(tmp_path / "d.csv", target="y")
    np.savez(tmp_path / "v.npz", x=x[:200], y=y[:200], x_val=x[200:250], y_val=y[200:250])
    v = load_user_data(tmp_path / "v.npz")
    assert (len(v.train), len(v.val), len(v.test)) == (180, 50, 20)
    np.savez(tmp_path / "h.npz", x=x, y=y, x_val=x[:5])
    with pytest.raises(DataError, match="has 'x_val' without 'y_val'"):
        load_user_data(tmp_path / "h.npz")


def test_discover_on_a_user_npz(tmp_path):
    from archdisc import Config, run_discover
    x, y = _blobs(n=400)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    config = Config(space="mlp", space_options={"widths": [6, 16, 3]}, data=str(tmp_path / "d.npz"),
                    epochs=3, lr=1e-2, lam=0.1, batch_size=32, finetune=0, device="cpu")
    report = run_discover(config, tmp_path / "r", progress=False)
    assert report["test"]["compact"] > 80  # three well separated blobs


def test_bad_validation_and_test_arrays_are_refused(tmp_path):
    from archdisc.data import DataError, load_user_data
    x, y = _blobs()
    cases = [({"x_val": x[:5], "y_val": np.array([0, 1, -1, 2, 1])},
              "y_val: labels must be integers >= 0"),
             ({"x_val": x[:5, :4], "y_val": y[:5]}, r"x_val, y_val hold 5 inputs of shape \[4\]"),
             ({"x_test": x[:5], "y_test": np.array([0, 1, 7, 2, 1])}, "go up to 7")]
    for k, (extra, message) in enumerate(cases):
        np.savez(tmp_path / f"b{k}.npz", x=x, y=y, **extra)
        with pytest.raises(DataError, match=message):
            load_user_data(tmp_path / f"b{k}.npz")
    header = ",".join(["2024"] + [f"f{i}" for i in range(6)])
    np.savetxt(tmp_path / "n.csv", np.column_stack([y, x]), delimiter=",", header=header,
               comments="")
    assert load_user_data(tmp_path / "n.csv", target=2024).in_shape == (6,)


# ---------------------------------------------------------------------- refused user data
def test_non_finite_values_are_refused_naming_the_place(tmp_path):
    from archdisc.data import DataError, load_user_data
    x, y = _blobs(n=40)
    bad = x.astype(np.float32)
    bad[17, 4] = np.inf
    np.savez(tmp_path / "x.npz", x=bad, y=y)
    with pytest.raises(DataError, match=r"x\.npz: x\[17, 4\] is inf \(1 non-finite"):
        load_user_data(tmp_path / "x.npz")
    np.savez(tmp_path / "t.npz", x=x, y=y, x_test=np.full((2, 6), np.nan), y_test=y[:2])
    with pytest.raises(DataError, match=r"x_test\[0, 0\] is nan \(12 non-finite"):
        load_user_data(tmp_path / "t.npz")
    # finite values whose float64 sum overflows are accepted (the sum is only a fast path)
    big = np.full((40, 6), 1e308)
    np.savez(tmp_path / "big.npz", x=big, y=y)
    assert load_user_data(tmp_path / "big.npz").in_shape == (6,)
    # CSV: the line of the file (header = 1; blank and '#' lines count) and the column
    rows = [",".join(map(str, r)) + f",{int(c)}" for r, c in zip(x, y)]
    rows[30] = rows[30].replace(rows[30].split(",")[2], "-inf", 1)
    text = "f0,f1,f2,f3,f4,f5,label\n# exported\n" + "\n".join(rows[:10]) + "\n\n" + \
        "\n".join(rows[10:]) + "\n"
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError, match=r"d\.csv: line 34, column 'f2' is -inf .*\(the label "
                                        r"is column 'label', the last"):
        load_user_data(tmp_path / "d.csv")
    assert text.splitlines()[33].split(",")[2] == "-inf"


def test_csv_errors_name_the_label_column_taken(tmp_path):
    from archdisc.data import DataError, load_user_data
    x, y = _blobs(n=40)
    header = "f0,f1,f2,f3,f4,f5,cls,price"
    table = np.column_stack([x, y, np.linspace(0.5, 9.5, 40)])
    np.savetxt(tmp_path / "d.csv", table, delimiter=",", header=header, comments="")
    with pytest.raises(DataError, match=r"column 'price': labels must be integers >= 0 "
                                        r"\(classification\) \(the last column, taken as the "
                                        r"label: name another with --data-option target="):
        load_user_data(tmp_path / "d.csv")
    data = load_user_data(tmp_path / "d.csv", target="cls")  # the fix the message names
    assert data.out_dim == 3 and data.meta["target"] == "cls"
    np.savetxt(tmp_path / "g.csv", np.column_stack([x, y]), delimiter=",",
               header="f0,f1,f2,f3,f4,f5,label", comments="")
    assert load_user_data(tmp_path / "g.csv").meta["target"] == "label"
    (tmp_path / "w.csv").write_text("a,b,label\n1,2,0\n3,two,1\n")
    with pytest.raises(DataError, match=r"line 3, column 'b': 'two' is not a number\) \(the "
                                        r"label is column 'label'"):
        load_user_data(tmp_path / "w.csv")


def test_a_single_class_is_refused(tmp_path):
    from PIL import Image
    from archdisc.data import DataError, load_user_data
    x, _ = _blobs(n=20)
    np.savez(tmp_path / "d.npz", x=x, y=np.full(20, 2))
    with pytest.raises(DataError, match="y: every label is 2, one class; a classifier needs "
                                        "at least 2 classes"):
        load_user_data(tmp_path / "d.npz")
    np.savetxt(tmp_path / "d.csv", np.column_stack([x, np.ones(20)]), delimiter=",",
               header="a,b,c,d,e,f,label", comments="")
    with pytest.raises(DataError, match="column 'label': every label is 1, one class.*the "
                                        "last column, taken as the label"):
        load_user_data(tmp_path / "d.csv")
    for split in ("train", "test"):
        (tmp_path / "img" / split / "cat").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(
                tmp_path / "img" / split / "cat" / f"{i}.png")
    with pytest.raises(DataError, match=r"img/train: one class folder \('cat'\) found"):
        load_user_data(tmp_path / "img")


def test_undecodable_images_are_refused_naming_the_file(tmp_path):
    from PIL import Image
    from archdisc.data import DataError, load_user_data
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "img" / c / f"{i}.png")
    data = load_user_data(tmp_path / "img")
    png = tmp_path / "img" / "dog" / "1.png"
    split = next(s for s in (data.train, data.val, data.test)
                 if str(png) in [p for p, _ in s.samples])
    k = [p for p, _ in split.samples].index(str(png))
    whole = png.read_bytes()
    damaged = [(whole[:len(whole) // 2], "image file is truncated"), (b"", "empty file"),
               (b"not a picture" * 10, "not a known image format")]
    for blob, reason in damaged:
        png.write_bytes(blob)
        # the first scan decodes every image (it sums the pixels for mean and std) ...
        with pytest.raises(DataError, match=rf"dog/1\.png: cannot be decoded as an image "
                                            rf"\({reason}.*\); replace the file"):
            load_user_data(tmp_path / "img")
        # ... and a file damaged later fails where it is read, still naming the file
        with pytest.raises(DataError, match=r"dog/1\.png: cannot be decoded"):
            split[k]
