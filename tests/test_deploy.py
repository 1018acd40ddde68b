"""archdisc.deploy: the deployment form computes what the compact model computes, and
its exported ONNX graph has the property it exists for (no gather at the sums)."""
import onnx
import pytest
import torch

from archdisc import build_space, compile_graph
from archdisc.deploy import FeatureMajorNet, deploy, for_runtime, gathers
from archdisc.deploy import export
from archdisc.extract import extract

pytest.importorskip("onnxruntime")


@torch.no_grad()
def compact(graph, seed=0):
    """A supernet with random BatchNorm statistics and half of every searchable node's
    units zeroed (at random, so narrow branches feed wider sums), then extracted."""
    from archdisc.sparsity.groups import unit_members

    torch.manual_seed(seed)
    net = compile_graph(graph)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.normal_()
            m.bias.normal_()
    params = dict(net.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    for names in unit_members(net).values():
        units = params[names[0]].shape[0]
        dead = torch.randperm(units, generator=gen)[: units // 2]
        for name in names:
            params[name][dead] = 0
    return extract(net.eval())[1].eval()


def resnet():
    return compact(build_space("resnet18", width_mult=1 / 8, in_shape=(3, 16, 16)))


def skip_mlp():
    return compact(build_space("skip_mlp", blocks=3, width=24, in_shape=(24,)))


def close(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    tol = 1e-5 * max(1.0, float(yb.abs().max()))
    assert float((ya - yb).abs().max()) <= tol


@pytest.mark.parametrize("pad_to", [1, 8, 16])
def test_widened_resnet_equals_compact(pad_to):
    net = resnet()
    assert gathers(net) > 0  # the case this is for: narrow members of wider sums
    dep = deploy(net, pad_to=pad_to)
    assert gathers(dep) == 0
    close(dep, net, torch.randn(5, 3, 16, 16))
    if pad_to > 1:  # every (C, H, W) width is a multiple of pad_to
        shapes = dep.graph.shapes()
        assert all(s[0] % pad_to == 0 for n, s in shapes.items()
                   if len(s) == 3 and dep.graph.nodes[n]["op"] != "input")


def test_deploy_leaves_the_model_alone():
    net = resnet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    deploy(net, pad_to=16)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert gathers(net) > 0


def test_resnet_onnx_has_no_gather(tmp_path):
    net = resnet()
    ops = lambda p: {n.op_type for n in onnx.load(str(p)).graph.node}  # noqa: E731
    before = export(net, None, tmp_path / "c", formats=("onnx",))["onnx"]
    assert "Gather" in ops(before)
    after = export(for_runtime(net, "onnxruntime"), None, tmp_path / "d",
                   formats=("onnx", "torchscript"))["onnx"]  # export verifies both
    assert not ops(after) & {"Gather", "Concat", "ScatterElements", "ConstantOfShape"}
    # `archdisc export RUN` writes that form (checked against the compact model itself)
    from archdisc.deploy import export_run, load, save
    save(net, tmp_path / "run" / "compact")
    paths = export_run(tmp_path / "run", ("onnx", "torchscript", "safetensors"))
    assert ops(paths["onnx"]) == ops(after)
    assert gathers(load(tmp_path / "run" / "export" / "model")) > 0  # safetensors: as is


def test_feature_major_skip_mlp(tmp_path):
    net = skip_mlp()
    assert gathers(net) > 0
    dep = deploy(net)
    assert isinstance(dep, FeatureMajorNet)
    close(dep, net, torch.randn(7, 24))
    close(feature_major_of(compile_graph(net.graph, net.state_dict()).eval()), net,
          torch.randn(1, 24))
    path = export(dep, None, tmp_path, formats=("onnx", "torchscript", "pt2"))["onnx"]
    nodes = onnx.load(str(path)).graph.node
    gathers_ = [n for n in nodes if n.op_type == "Gather"]
    assert gathers_ and all(a.i == 0 for n in gathers_ for a in n.attribute
                            if a.name == "axis")  # rows, never columns
    # every linear is one Gemm and the batch axis is transposed only at the ends
    assert sum(n.op_type == "Transpose" for n in nodes) == 2


def feature_major_of(net):
    return deploy(net, layout="feature_major")


def test_skip_mlp_widened_is_exact_too():
    net = skip_mlp()
    dep = deploy(net, layout="archnet")
    assert gathers(dep) == 0
    close(dep, net, torch.randn(7, 24))


def test_bad_arguments():
    net = skip_mlp()
    with pytest.raises(ValueError):
        deploy(net, pad_to=0)
    with pytest.raises(ValueError):
        deploy(net, layout="nhwc")
    with pytest.raises(ValueError):
        deploy(resnet(), layout="feature_major")


def test_load_torchscript_optimized(tmp_path):
    from archdisc.deploy import load_torchscript

    net = resnet()
    dep = for_runtime(net, "torchscript")
    path = export(dep, None, tmp_path, formats=("torchscript",))["torchscript"]
    x = torch.randn(3, 3, 16, 16)
    close(load_torchscript(path), net, x)
    close(load_torchscript(path, optimize=False), net, x)


def test_feature_major_is_an_inference_form_in_the_net_dtype():
    from archdisc import ArchGraph
    g = ArchGraph()
    x = g.input("x", [6])
    h = g.add_op("drop", "dropout", [g.act("r", g.linear("fc1", x, 8))], p=0.5)
    g.output("out", g.linear("fc2", h, 3))
    net = compile_graph(g).double().eval()
    fm = FeatureMajorNet(net)
    fm.train()  # dropout stays off: the deployment form is for inference
    x = torch.randn(5, 6, dtype=torch.float64)
    assert next(fm.parameters()).dtype == torch.float64
    torch.testing.assert_close(fm(x), net(x), rtol=1e-12, atol=1e-12)  # float64, same ops
