import json

import pytest
import torch
from torch import nn

from archdisc import ArchGraph, GraphError, build_space, compile_graph, count_macs, count_params
from helpers import indexed_graph

SMALL = {
    "mlp": {},
    "skip_mlp": {"blocks": 3, "width": 16, "in_shape": (16,)},
    "convnet": {"channels": (4, 6), "hidden": 8, "in_shape": (1, 16, 16), "kernel_size": 3},
    "densenet": {"layers": 3, "growth": 4, "stem": 4, "in_shape": (1, 8, 8)},
    "resnet18": {"width_mult": 1 / 16, "in_shape": (3, 16, 16)},
}


def example_input(g, n=3):
    return torch.randn(n, *g.nodes[g.input_nodes()[0]]["shape"])


def test_mlp_equals_hand_written_sequential():
    g = build_space("mlp", widths=(784, 200, 80, 10))
    net = compile_graph(g)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 80),
                        nn.ReLU(), nn.Linear(80, 10))
    with torch.no_grad():
        for lin, name in zip([seq[1], seq[3], seq[5]], ["fc1", "fc2", "fc3"]):
            lin.weight.copy_(net.layers[name].weight)
            lin.bias.copy_(net.layers[name].bias)
    x = torch.randn(5, 1, 28, 28)
    # the same float32 linear layers on the same weights: equal up to rounding (measured 0)
    torch.testing.assert_close(net(x), seq(x), rtol=1e-5, atol=1e-6)
    assert count_params(g) == sum(p.numel() for p in seq.parameters()) == 173_890


def test_resnet18_size():
    g = build_space("resnet18")
    assert abs(count_params(g) - 11.17e6) / 11.17e6 < 1e-3
    assert count_params(g) == sum(p.numel() for p in compile_graph(g).parameters())
    # conv MACs of the CIFAR ResNet-18: about 0.56 G per image
    assert 0.55e9 < count_macs(g) < 0.56e9


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builtin_compiles_runs_traces_and_round_trips(name):
    g = build_space(name, **SMALL[name])
    assert ArchGraph.from_json(g.to_json()).to_dict() == g.to_dict()
    net = compile_graph(g)
    assert count_params(g) == sum(p.numel() for p in net.parameters())
    x = example_input(g)
    y = net(x)
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    traced = torch.jit.trace(net, x)
    x2 = example_input(g, 5)
    torch.testing.assert_close(traced(x2), net(x2), rtol=1e-5, atol=1e-6)  # same ops: measured 0


def test_default_spaces_build():
    for name in SMALL:
        build_space(name).validate()
    with pytest.raises(GraphError, match="unknown search space 'nope'"):
        build_space("nope")
    with pytest.raises(GraphError, match="bad option"):
        build_space("mlp", depth=3)


def test_user_graph_with_indexed_add_and_gates():
    g = indexed_graph()
    net = compile_graph(g)
    with torch.no_grad():
        net.gates["b__s"].copy_(torch.tensor([2.0, -1.0]))
    x = torch.randn(7, 6)
    ya, yb = net.layers["a"](x), net.layers["b"](x) * torch.tensor([2.0, -1.0])
    s_ref = ya.clone()
    s_ref[:, 3] += yb[:, 0]
    s_ref[:, 1] += yb[:, 1]
    # float32 O(1) values, the same adds in the same order by hand (measured 0)
    torch.testing.assert_close(net(x), net.layers["head"](torch.relu(s_ref)), rtol=1e-5,
                               atol=1e-6)
    assert count_params(g) == sum(p.numel() for p in net.parameters())
    assert ArchGraph.from_json(g.to_json()).to_dict() == g.to_dict()


def _mlp():
    g = ArchGraph()
    x = g.input("x", [4])
    g.output("out", g.linear("fc", x, 2))
    return g


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g.add_edge("out", "fc", slot=1, gate=None, index=None), "cycle"),
    (lambda g: g.add_op("lonely", "linear", ["x"], units=3), "dangling node 'lonely'"),
    (lambda g: g.add_node("y", op="input", shape=[2]), "input 'y' has no path"),
    (lambda g: g.add_node("fc2", op="softmaxx"), "unknown op 'softmaxx'"),
    (lambda g: g.nodes["fc"].update(width=3), r"unknown attribute\(s\) \['width'\]"),
    (lambda g: g.nodes["fc"].update(units=0), "'units' must be an integer >= 1"),
    (lambda g: g.nodes["fc"].update(bias="yes"), "'bias' must be true or false"),
    (lambda g: g.edges["x", "fc"].update(gate="maybe"), "gate must be one of"),
])
def test_validation_errors_name_the_culprit(mutate, message):
    g = _mlp()
    with pytest.raises(GraphError, match=message):
        mutate(g)
        g.validate()


def test_add_width_mismatch_and_bad_json():
    g = ArchGraph()
    x = g.input("x", [4])
    a, b = g.linear("a", x, 3), g.linear("b", x, 2)
    g.output("out", g.add_op("s", "add", [a, b], units=3))
    with pytest.raises(GraphError, match="add node 's': input 'b' has shape"):
        g.validate()
    good = _mlp().to_dict()
    with pytest.raises(GraphError, match="field 'schema'"):
        ArchGraph.from_dict({**good, "schema": 99})
    with pytest.raises(GraphError, match=r"edges\[0\]: node 'ghost' does not exist"):
        ArchGraph.from_dict({**good, "edges": [{"src": "ghost", "dst": "fc"}]})
    with pytest.raises(GraphError, match="not valid ArchGraph JSON"):
        ArchGraph.from_json("{nope")
    with pytest.raises(GraphError, match="needs a .C, H, W. input"):
        g2 = ArchGraph()
        g2.output("out", g2.conv("c", g2.input("x", [4]), 2))
        g2.validate()
    assert json.loads(_mlp().to_json())["schema"] == 1


@pytest.mark.parametrize("g", [build_space("skip_mlp", **SMALL["skip_mlp"]), indexed_graph()])
def test_onnx_export_of_compiled_graph(tmp_path, g):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = compile_graph(g).eval()
    x = example_input(g, 4)
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = example_input(g, 9)
    y = sess.run(None, {"x": x2.numpy()})[0]
    assert abs(torch.from_numpy(y) - net(x2)).max() < 1e-5


def test_readme_example_builds_trains_and_extracts():
    import archdisc
    from archdisc.optim import AdaBreg
    g = ArchGraph(name="my_supernet")
    x = g.input("x", [64])
    h1 = g.act("r1", g.linear("fc1", x, 256))
    h2 = g.act("r2", g.linear("fc2", h1, 256))
    s = g.add_op("sum", "add", [h2, h1], units=256, gates={h1: "scalar"})
    g.output("out", g.linear("head", s, 10, searchable=False))
    net = archdisc.sparse_init(compile_graph(g), density=0.1)
    opt = AdaBreg(archdisc.param_groups(net, lam=0.1), lr=1e-3)
    xs, ys = torch.randn(64, 64), torch.randint(0, 10, (64,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xs), ys).backward()
        opt.step()
    graph, compact = archdisc.extract(net)
    assert graph.nodes["fc1"]["units"] < 256
    net.eval()  # float32, the compact sums over fewer terms: rounding, measured 2.4e-7
    torch.testing.assert_close(compact(xs), net(xs), rtol=1e-5, atol=1e-5)


def test_an_op_is_one_registry_entry_dropout():
    """dropout is declared only in archdisc.graph.ops: the graph validates it, the compiler
    builds it, extraction stays exact (eval mode: identity), drawings label it."""
    import torch
    from archdisc import extract, sparse_init
    from archdisc.render import to_dot
    g = ArchGraph(name="drop")
    h = g.act("a1", g.linear("fc1", g.input("x", [10]), 12))
    h = g.add_op("drop", "dropout", [h], p=0.25)
    g.output("out", g.linear("head", h, 3, searchable=False))
    assert ArchGraph.from_json(g.to_json()).nodes["drop"]["p"] == 0.25
    net = sparse_init(compile_graph(g), density=0.5, seed=1).eval()
    assert isinstance(net.layers["drop"], torch.nn.Dropout)
    small, compact = extract(net, inputs=torch.randn(32, 10))
    assert small.units()["drop"] == small.units()["fc1"] < 12
    assert "dropout 0.25" in to_dot(small).source
    with pytest.raises(GraphError, match=r"node 'bad' \(dropout\): 'p' must be a number in \[0, 1\)"):
        g2 = ArchGraph()
        g2.output("out", g2.add_op("bad", "dropout", [g2.input("x", [4])], p=1.5))
        g2.validate()


def test_an_activation_fn_that_is_not_a_name_is_a_graph_error():
    d = {"schema": 1, "name": "a", "edges": [{"src": "x", "dst": "r"}, {"src": "r", "dst": "o"}],
         "nodes": [{"name": "x", "op": "input", "shape": [3]},
                   {"name": "r", "op": "activation", "fn": ["relu"]},
                   {"name": "o", "op": "output"}]}
    with pytest.raises(GraphError, match="fn .* unknown"):
        ArchGraph.from_dict(d)


def test_a_broken_entry_point_warns_and_keeps_the_built_in_spaces(monkeypatch):
    import importlib
    from importlib.metadata import EntryPoint
    registry = importlib.import_module("archdisc.spaces")  # (archdisc.spaces: the function)
    eps = [EntryPoint("acme", "no_such_package_here:SPACES", "archdisc.spaces"),
           EntryPoint("builtin", "search_spaces:SPACES", "archdisc.spaces")]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    monkeypatch.setattr(registry, "_SPACES", {})
    monkeypatch.setattr(registry, "_entry_points_read", False)
    with pytest.warns(UserWarning, match="'acme'"):
        assert "mlp" in registry.spaces()


def test_forward_drops_each_activation_after_its_last_reader():
    """forward keeps only what is still to be read (activations() keeps everything), and
    computes the same outputs."""
    net = compile_graph(build_space("resnet18", width_mult=0.125, in_shape=[3, 16, 16])).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        env = net._run((x,), keep=False)
        assert set(env) == set(net.output_names)
        full = net.activations(x)
        assert len(full) == net.graph.number_of_nodes()
        torch.testing.assert_close(net(x), full[net.output_names[0]], rtol=0, atol=0)  # same ops
