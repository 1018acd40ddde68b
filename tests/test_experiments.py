"""The experiment scripts' CI modes run from a fresh checkout and write their JSON."""
import json
import subprocess
import sys
from pathlib import Path

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
    # the compact model computes the supernet's function
    assert abs(doc["test_accuracy"]["compact"] - doc["test_accuracy"]["supernet"]) < 1e-6
    assert 0 < doc["params"]["compact"] <= doc["params"]["supernet"]
    assert 0 < doc["supernet_nonzero"]["kernels_pct"] <= 100
