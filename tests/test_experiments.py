"""The experiment scripts' CI modes run from a fresh checkout and write their JSON."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import assert_same_accuracy

ROOT = Path(__file__).resolve().parent.parent


def test_cifar10_resnet18_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "cifar10_resnet18.py"),
                           "--smoke", "--out", str(out), "--work", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    for key in ("command", "seeds", "machine", "torch", "wall_seconds", "config",
                "test_accuracy", "params", "macs", "supernet_nonzero", "epochs"):
        assert key in doc, key
    assert doc["config"]["space"] == "resnet18" and doc["config"]["data"] == "cifar10"
    assert len(doc["epochs"]) == 1
    assert 0 <= doc["test_accuracy"]["compact"] <= 100
    # the compact model computes the supernet's function (on the smoke run's 100 test
    # images: at most one near-tie decided the other way by the other float computation)
    assert_same_accuracy(doc["test_accuracy"]["compact"], doc["test_accuracy"]["supernet"], 100)
    assert 0 < doc["params"]["compact"] <= doc["params"]["supernet"]
    assert 0 < doc["supernet_nonzero"]["kernels_pct"] <= 100
    # counted on the final model, folded-away kernels drop out: never more than the supernet's
    assert 0 < doc["final_nonzero"]["kernels_pct"] <= doc["supernet_nonzero"]["kernels_pct"]


def _mlp_script():
    sys.path.insert(0, str(ROOT / "experiments"))
    import mlp
    return mlp


def test_torch_pruning_baseline_keeps_the_top_groups_and_the_dense_function():
    pytest.importorskip("torch_pruning")
    mlp = _mlp_script()
    torch.manual_seed(0)
    dense = mlp.mlp((20, 12))
    small = mlp.tp_prune(dense, (7, 5))
    assert [m.out_features for m in small if isinstance(m, nn.Linear)] == [7, 5, 10]
    assert mlp.n_params(small) == (784 + 1) * 7 + (7 + 1) * 5 + (5 + 1) * 10
    lin, slin = ([m for m in net if isinstance(m, nn.Linear)] for net in (dense, small))
    reference = copy.deepcopy(dense)
    with torch.no_grad():
        for i, k in enumerate((7, 5)):
            # Torch-Pruning's group L2 importance: squared norms of the incoming row and of
            # the outgoing column (bias not counted), computed on the dense model
            score = lin[i].weight.pow(2).sum(1) + lin[i + 1].weight.pow(2).sum(0)
            # no near-tie at the cut, which Torch-Pruning's own float sums could break the
            # other way (measured: the k-th and (k+1)-th scores 2.4% apart)
            top = score.sort(descending=True).values
            assert top[k - 1] - top[k] > 1e-4 * top[k]
            expected = sorted(score.topk(k).indices.tolist())
            kept = [lin[i].bias.tolist().index(b) for b in slin[i].bias.tolist()]
            assert kept == expected
            dropped = [j for j in range(lin[i].out_features) if j not in kept]
            ref = [m for m in reference if isinstance(m, nn.Linear)][i]
            ref.weight[dropped] = 0
            ref.bias[dropped] = 0
        x = torch.randn(16, 1, 28, 28)
        # float32, O(1) outputs, the same sums with the pruned (zero) terms left out
        torch.testing.assert_close(small(x), reference(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(dense(x), reference(x), atol=1e-3)  # something was removed


def test_mlp_torch_pruning_on_fake_mnist(tmp_path):
    pytest.importorskip("torch_pruning")
    from test_data import write_fake_idx_dataset
    write_fake_idx_dataset(tmp_path / "MNIST" / "raw", n_train=60, n_test=20)
    script, out = ROOT / "experiments" / "mlp.py", tmp_path / "results"
    for extra in (["--methods", "torch_pruning", "--seeds", "0"], ["--merge"]):
        proc = subprocess.run([sys.executable, str(script), "--data", "mnist", "--data-root",
                               str(tmp_path), "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "mlp_mnist_parts" / "torch_pruning_s0.json").read_text())["rows"]
    mlp = _mlp_script()
    assert [(r["method"], r["params"], tuple(r["widths"])) for r in rows] == [
        ("torch_pruning", size, widths) for size, widths in mlp.SIZES.items()]
    doc = json.loads((out / "mlp_mnist.json").read_text())
    assert "MNIST" in doc["notes"] and len(doc["summary"]) == 3
    assert (out / "mlp_mnist.png").is_file() and not (out / "mlp.json").exists()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_fmnist_convnet_parts_and_merge(tmp_path, monkeypatch):
    """A tiny run of two methods writes one part file per run and merges them; the
    fine-tune keeps the search's zero kernels, so the final model has no more non-zero
    kernels than the searched supernet, and dense Adam trains search + fine-tune epochs."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import fmnist_convnet as fc
    monkeypatch.setattr(fc, "RESULTS", tmp_path)
    monkeypatch.setattr(fc, "PARTS", tmp_path / "parts")
    fc.main(["--limit", "300", "--epochs", "1", "--finetune", "1", "--seeds", "0",
             "--methods", "LinBreg, kernel groups", "dense Adam", "--work", str(tmp_path / "w")])
    assert sorted(f.name for f in (tmp_path / "parts").iterdir()) == [
        "dense_adam_unit_s0.json", "linbreg_kernel_s0.json"]
    doc = json.loads((tmp_path / "fmnist_convnet.json").read_text())
    runs = {r["method"]: r for r in doc["runs"]}
    sparse, dense = runs["LinBreg, kernel groups"], runs["dense Adam"]
    assert 0 < sparse["kernels_pct"] <= sparse["supernet_nonzero"]["kernels_pct"] < 100
    assert dense["kernels_pct"] == 100 and len(dense["val_accuracy_per_epoch"]) == 2
    assert sparse["config"]["finetune"] == 1 and len(sparse["val_accuracy_per_epoch"]) == 1
    assert (tmp_path / "fmnist_convnet.png").stat().st_size > 0
