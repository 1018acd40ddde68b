import subprocess
import sys

import numpy as np
import pytest
import torch

from archdisc import build_space, compile_graph
from archdisc.deploy import formats as export_mod
from archdisc.deploy import ExportError, export, export_run, load, save
from helpers import indexed_graph

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


CASES = {
    "mlp": lambda: build_space("mlp", widths=(20, 16, 4), in_shape=None),
    "convnet": lambda: build_space("convnet", channels=(4, 6), hidden=8, in_shape=(1, 16, 16),
                                   kernel_size=3),
    "skip_mlp": lambda: build_space("skip_mlp", blocks=2, width=12, in_shape=(12,)),
    "resnet": lambda: build_space("resnet18", width_mult=1 / 16, in_shape=(3, 8, 8)),
    "indexed": indexed_graph,
}
BATCHES = (1, 7)


def random_net(graph, seed=0):
    """A compiled net whose gates and BatchNorm statistics are not the defaults."""
    torch.manual_seed(seed)
    net = compile_graph(graph)
    with torch.no_grad():
        for p in net.gates.values():
            p.copy_(torch.randn_like(p))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
    return net.eval()


def inputs(graph, n, seed):
    shape = graph.nodes[graph.input_nodes()[0]]["shape"]
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


# Loads the exports the way a user without archdisc would; any archdisc import fails.
STANDALONE = r"""
import importlib.abc, pathlib, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("archdisc", "search_spaces"):
            raise ImportError(f"{name} must not be needed to load an export")

sys.meta_path.insert(0, Block())
import numpy as np, onnxruntime as ort, torch

for d in sorted(p for p in pathlib.Path(sys.argv[1]).iterdir() if p.is_dir()):
    ts = torch.jit.load(str(d / "model.pt"))
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(d / "model.pt2")).module()
    for b in (1, 7):
        x = np.load(d / f"x{b}.npy")
        with torch.no_grad():
            np.save(d / f"torchscript{b}.npy", ts(torch.from_numpy(x)).numpy())
            np.save(d / f"pt2{b}.npy", program(torch.from_numpy(x)).numpy())
        np.save(d / f"onnx{b}.npy", sess.run(None, {sess.get_inputs()[0].name: x})[0])
assert "archdisc" not in sys.modules and "search_spaces" not in sys.modules
print("standalone ok")
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported once; the standalone loader run once over all of them."""
    root = tmp_path_factory.mktemp("exports")
    refs, paths = {}, {}
    for name, build in CASES.items():
        g = build()
        net = random_net(g)
        paths[name] = export(net, g, root / name)
        for b in BATCHES:
            x = inputs(g, b, seed=100 + b)
            np.save(root / name / f"x{b}.npy", x.numpy())
            with torch.no_grad():
                refs[name, b] = net(x).numpy()
    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(root)], capture_output=True,
                          text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "standalone ok" in proc.stdout
    return root, refs, paths


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_export_reproduces_outputs_without_archdisc(exported, name, fmt):
    root, refs, paths = exported
    assert paths[name][fmt].exists()
    for b in BATCHES:  # dynamic batch: 1 and 7 (the trace used 2)
        got = np.load(root / name / f"{fmt}{b}.npy")
        assert got.shape == refs[name, b].shape
        # another runtime's float32 kernels (ONNX Runtime's, TorchScript's fusions): other
        # summation orders; outputs O(1), measured 2.4e-7 apart
        np.testing.assert_allclose(got, refs[name, b], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_safetensors_round_trip(exported, name):
    root, refs, paths = exported
    assert paths[name]["safetensors"] == root / name / "model.safetensors"
    assert (root / name / "model.json").exists()
    for path in (root / name / "model", paths[name]["safetensors"], root / name / "model.json"):
        net = load(path)
        assert not net.training
        for b in BATCHES:
            x = torch.from_numpy(np.load(root / name / f"x{b}.npy"))
            with torch.no_grad():
                # the same ops on the same weights: equal in practice (measured 0)
                np.testing.assert_allclose(net(x).numpy(), refs[name, b], atol=1e-6, rtol=1e-6)


def test_no_temp_files_left_and_training_mode_restored(tmp_path):
    g = CASES["resnet"]()
    net = random_net(g).train()
    export(net, None, tmp_path, formats=("onnx",), example_input=inputs(g, 3, 0))
    assert net.training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_failed_verification_raises_and_writes_nothing(tmp_path, monkeypatch):
    g = CASES["indexed"]()
    net = random_net(g)

    def corrupt(run):
        return lambda paths, xs: [y + 1e-3 for y in run(paths, xs)]

    for fmt in ("onnx", "torchscript", "safetensors"):
        monkeypatch.setitem(export_mod.RUNNERS, fmt, corrupt(export_mod.RUNNERS[fmt]))
        with pytest.raises(ExportError, match=rf"{fmt} export .*max \|Δ\| = 0\.001"):
            export(net, g, tmp_path / fmt, formats=(fmt,))
        assert list((tmp_path / fmt).iterdir()) == []  # nothing kept, not even temp files
    # a looser tolerance accepts the same difference
    assert export(net, g, tmp_path / "loose", formats=("onnx",), atol=1e-2)["onnx"].exists()


def test_tolerance_follows_the_size_of_the_outputs(tmp_path, monkeypatch):
    g = CASES["indexed"]()
    net = random_net(g)
    with torch.no_grad():  # outputs in the thousands, as --export-best met (~692)
        for p in net.parameters():
            p.mul_(12.0)
    x = inputs(g, 7, 1)
    with torch.no_grad():
        peak = max(float(y.abs().max()) for y in _as_tuple(net(x)))
    assert peak > 500
    assert export(net, g, tmp_path / "big", formats=("onnx",))["onnx"].exists()
    # an error of 1e-3 of the largest output is still refused
    run = export_mod.RUNNERS["onnx"]
    monkeypatch.setitem(export_mod.RUNNERS, "onnx",
                        lambda paths, xs: [y + 1e-3 * peak for y in run(paths, xs)])
    with pytest.raises(ExportError, match="times the largest output"):
        export(net, g, tmp_path / "wrong", formats=("onnx",))


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def test_bad_format_and_missing_files(tmp_path):
    net = random_net(CASES["mlp"]())
    with pytest.raises(ValueError, match="unknown export format"):
        export(net, None, tmp_path, formats=("tflite",))
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load(tmp_path / "nope")


def test_export_run(tmp_path):
    g = CASES["skip_mlp"]()
    net = random_net(g)
    save(net, tmp_path / "compact")
    written = export_run(tmp_path, formats=("safetensors", "onnx"))
    assert written == {"safetensors": tmp_path / "export" / "model.safetensors",
                       "onnx": tmp_path / "export" / "model.onnx"}
    x = inputs(g, 4, 1)
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "export" / "model")(x), net(x), rtol=1e-6,
                                   atol=1e-6)  # same ops, same weights (measured 0)


# ---------------------------------------------------------------------- damaged files
def _saved(tmp_path):
    g = build_space("mlp", widths=(20, 16, 4), in_shape=None)
    return save(random_net(g), tmp_path / "m")


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable safetensors file"),
    ("empty", "not a readable safetensors file"),
    ("width", r"'layers.fc1.bias' has shape \[16\] but m.json needs \[500000\]"),
    ("missing", "'layers.fc2.bias' that m.json needs is missing"),
    ("extra", "'layers.extra' is not part of m.json"),
])
def test_damaged_files_are_refused_before_anything_is_allocated(tmp_path, damage, message):
    import json
    from safetensors.torch import load_file, save_file
    weights, graph_json = _saved(tmp_path)
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "width":  # a crafted width: would allocate 500000 x 20 floats and more
        d = json.loads(graph_json.read_text())
        next(n for n in d["nodes"] if n["name"] == "fc1")["units"] = 500000
        graph_json.write_text(json.dumps(d))
    else:
        t = load_file(str(weights))
        if damage == "missing":
            del t["layers.fc2.bias"]
        else:
            t["layers.extra"] = torch.zeros(3)
        save_file(t, str(weights))
    with pytest.raises(ExportError, match=message):
        load(weights)
