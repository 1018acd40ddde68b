"""Bring your own supernet and data: ``--model pkg.mod:callable``, ``--space FILE.json`` and
``run_discover(config, out, data=Dataset)`` (issue 14)."""
import json
import tomllib

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from archdisc.deploy import formats as export
from archdisc.cli import main
from archdisc.recipe.config import Config
from archdisc.recipe.discover import run_discover
from helpers import assert_same_accuracy

FAST = ["--epochs", "1", "--finetune", "0", "--select", "none", "--quiet", "--device", "cpu",
        "--batch-size", "32"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """60 grey 8x8 images of 3 classes (class = brightest third of the image)."""
    g = np.random.default_rng(0)
    x = g.normal(size=(60, 1, 8, 8)).astype(np.float32)
    y = np.arange(60) % 3
    for k in range(3):
        x[y == k, :, :, 2 * k:2 * k + 3] += 2.0
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, x=x, y=y)
    return path


def test_model_from_a_dotted_path_runs_and_resumes(tmp_path, npz, capsys):
    out = tmp_path / "run"
    args = ["discover", "--model", "helpers:tiny_cnn", "--model-option", "width=6",
            "--data", str(npz), "--out", str(out), *FAST]
    assert main(args) == 0, capsys.readouterr().err
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["model"] == "helpers:tiny_cnn" and cfg["space"] == "helpers:tiny_cnn"
    assert cfg["model_options"] == {"width": 6}
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["supernet"] == sum(  # the module's own size
        p.numel() for p in __import__("helpers").tiny_cnn(width=6).parameters())
    assert report["params"]["compact"] <= report["params"]["supernet"]
    assert_same_accuracy(report["test"]["compact"], report["test"]["supernet"],
                         report["data"]["sizes"][2])  # exact extraction
    model = export.load(out / "compact")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    # the config hash covers the model: another option is another run
    assert main([*args, "--model-option", "width=4"]) == 2
    assert "differs in: model_options" in capsys.readouterr().err
    # --resume alone rebuilds the model from config.toml
    assert main(["discover", "--out", str(out), "--resume", "--quiet"]) == 0


def test_space_from_a_graph_file(tmp_path, npz, capsys):
    first = tmp_path / "first"
    assert main(["discover", "--model", "helpers:tiny_cnn", "--data", str(npz),
                 "--out", str(first), *FAST]) == 0
    out = tmp_path / "again"
    assert main(["discover", "--space", str(first / "supernet.json"), "--data", str(npz),
                 "--out", str(out), *FAST]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["space"] == str(first / "supernet.json")
    assert report["params"]["supernet"] == json.loads(
        (first / "report.json").read_text())["params"]["supernet"]
    assert export.load(out / "compact")(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    # the hash covers the file's contents: an edited graph is another run
    graph = first / "supernet.json"
    before = Config(space=str(graph)).hash()
    graph.write_text(graph.read_text().replace('"name": "', '"name": "edited ', 1))
    assert Config(space=str(graph)).hash() != before
    assert main(["discover", "--space", str(graph), "--data", str(npz), "--out", str(out),
                 "--resume", *FAST]) == 2
    assert "belongs to another config" in capsys.readouterr().err  # the checkpoint


class Pairs(Dataset):
    """A map-style Dataset of (tensor, int) pairs, as a user writes one."""
    classes = ["a", "b", "c"]

    def __init__(self, n=60, bad=None):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 12, generator=g)
        self.y = [i % 3 for i in range(n)]
        self.x[torch.arange(n), torch.tensor(self.y)] += 3
        self.bad = bad

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x, y = self.x[i], self.y[i]
        if self.bad == "shape" and i == 5:
            x = x[:10]
        if self.bad == "label" and i == 7:
            y = 3
        if self.bad == "list" and i == 2:
            x = x.tolist()
        return x, y


CONFIG = dict(space="mlp", space_options={"widths": [12, 16, 3]}, epochs=2, finetune=0,
              select="none", lr=0.01, batch_size=16)


def test_run_discover_takes_a_dataset(tmp_path):
    rep = run_discover(Config(**CONFIG), tmp_path / "one", progress=False, data=Pairs())
    assert rep["data"]["name"] == "python:Pairs"
    assert rep["data"]["sizes"] == [48, 6, 6]  # split by seed like a .npz
    assert_same_accuracy(rep["test"]["compact"], rep["test"]["supernet"], 6)
    assert tomllib.loads((tmp_path / "one" / "config.toml").read_text())["data"] == \
        "python:Pairs"
    # a tuple (train, val, test) is used as it is
    x, y = torch.randn(30, 12), torch.arange(30) % 3
    parts = (TensorDataset(x, y), TensorDataset(x[:9], y[:9]), TensorDataset(x[:6], y[:6]))
    rep = run_discover(Config(**CONFIG), tmp_path / "three", progress=False, data=parts)
    assert rep["data"]["sizes"] == [30, 9, 6] and rep["data"]["name"] == "python:TensorDataset"
    assert (tmp_path / "three" / "compact.safetensors").exists()
    # int64 features (not token ids: no embedding reads them) are used as floats
    rep = run_discover(Config(**CONFIG), tmp_path / "ints", progress=False,
                       data=TensorDataset((x * 3).round().long(), y))
    assert rep["data"]["sizes"] == [24, 3, 3] and rep["test"]["compact"] >= 0


class Counted(Pairs):
    """Pairs that count how often items are read (shared with DataLoader workers)."""

    def __init__(self):
        super().__init__(n=100)
        self.reads = torch.zeros((), dtype=torch.int64).share_memory_()

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_is_streamed_every_epoch_not_held(tmp_path, workers):
    """Items are read on access in every epoch (one checking pass, then each epoch's
    batches and the evaluations), and the result equals the same samples as tensors."""
    ds = Counted()
    cfg = Config(**{**CONFIG, "epochs": 3, "loader_workers": workers})
    streamed = run_discover(cfg, tmp_path / "s", progress=False, data=ds)
    reads = int(ds.reads)
    assert reads >= 100 + 3 * 80  # the check, then 3 epochs of the 80 training items
    held = run_discover(Config(**{**CONFIG, "epochs": 3}), tmp_path / "t", progress=False,
                        data=TensorDataset(ds.x, torch.tensor(ds.y)))
    assert int(ds.reads) == reads  # tensors are indexed, not read item by item
    assert held["data"]["sizes"] == streamed["data"]["sizes"] == [80, 10, 10]
    assert held["units"] == streamed["units"]
    # the same samples in the same order through the same float ops: equal, not just close
    assert held["test"]["supernet"] == pytest.approx(streamed["test"]["supernet"])


@pytest.mark.parametrize("bad, message", [
    ("shape", "item 5's input has shape [10]"),
    ("label", "label 3 is out of range: the dataset declares 3 classes"),
    ("list", "item 2's input is list, not a numeric tensor"),
])
def test_bad_datasets_are_refused_before_the_folder_is_touched(tmp_path, bad, message):
    from archdisc.errors import ArchdiscError
    with pytest.raises(ArchdiscError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_discover(Config(**CONFIG), tmp_path / "run", progress=False, data=Pairs(bad=bad))
    assert not (tmp_path / "run").exists()


def test_the_command_line_cannot_resume_a_python_dataset(tmp_path, capsys):
    out = tmp_path / "run"
    run_discover(Config(**CONFIG), out, progress=False, data=Pairs())
    assert main(["discover", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "run_discover(data=...)" in capsys.readouterr().err
    rep = run_discover(Config(**CONFIG), out, resume=True, progress=False, data=Pairs())
    assert rep["data"]["name"] == "python:Pairs"


def test_the_hash_of_an_unchanged_config_is_stable():
    """Pinned for this version: a field added or removed changes every hash (a run of an
    older version is then refused on resume, not silently mixed). Every field but
    loader_workers is part of it, set or not; validating or a TOML round trip keep it."""
    assert Config().hash() == "7e9500f855922863"
    assert Config(space="convnet", lr=0.5).hash() == "5711375b317184a9"
    assert Config(loader_workers=4).hash() == Config().hash()
    assert Config(fused=False).hash() != Config().hash()
    assert Config().validate().hash() == Config().hash()
    assert Config.from_dict(tomllib.loads(Config().to_toml())).hash() == Config().hash()
