"""Coupled groups: the channels of a residual stream are regularized as one group."""
import torch
import torchvision
from torch import nn

from archdisc import extract, from_module
from archdisc.graph.compile import compile_graph
from archdisc.spaces import build_space
from archdisc.sparsity.groups import alive, clear_dead_means, coupled, param_groups, sparse_init


def _layers(space):
    return [n for n in space if not n.endswith("add") and not n.startswith("add")]


def test_resnet18_space_couples_each_stage_and_gated_sums_do_not():
    net = compile_graph(build_space("resnet18", width_mult=0.25))
    got = [_layers(s) for s in coupled(net)]
    # written out from the builder: the stem and the blocks' last convs, the shortcut convs
    want = [["stem", "s1b1_conv2", "s1b2_conv2"]] + [
        [f"s{k}b1_conv2", f"s{k}b1_sconv", f"s{k}b2_conv2"] for k in (2, 3, 4)]
    assert got == want
    groups = {g["name"]: g for g in param_groups(net) if g["kind"] == "unit"}
    assert "stem+s1b1_conv2+s1b2_conv2" in groups and "stem" not in groups
    assert groups["s1b1_conv1"]["nodes"] == ["s1b1_conv1"]
    assert groups["stem+s1b1_conv2+s1b2_conv2"]["nodes"] == coupled(net)[0]
    # a skip MLP whose sums read gated candidate skips: each layer keeps its own group
    skip = compile_graph(build_space("skip_mlp", width=50))
    assert coupled(skip) == []
    assert all(len(g["nodes"]) == 1 for g in param_groups(skip) if g["kind"] == "unit")


def test_sparse_init_draws_one_mask_per_coupled_space():
    net = sparse_init(compile_graph(build_space("resnet18", width_mult=0.25)), 0.3, seed=1)
    units, params = alive(net)["units"], dict(net.named_parameters())
    for space in coupled(net):
        masks = [params[f"layers.{n}.weight"].flatten(1).ne(0).any(1) for n in _layers(space)]
        assert all(torch.equal(m, masks[0]) for m in masks)
        assert 0 < units[_layers(space)[0]] < masks[0].numel()


@torch.no_grad()
def test_a_dead_coupled_channel_leaves_an_imported_resnet18_exactly():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    for mod in m.modules():  # trained-looking statistics, zero mean: a dead channel stays 0
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.uniform_(-0.2, 0.2)
    net = from_module(m.eval(), torch.randn(2, 3, 32, 32)).eval()
    x = torch.randn(8, 3, 32, 32)
    group = next(g for g in param_groups(net) if "layer2_0_downsample_0" in g["nodes"])
    adds = [n for n in group["nodes"] if net.graph.nodes[n]["op"] == "add"]
    assert len(adds) == 2
    dead = torch.tensor([0, 5, 17, 100])
    # one member alone: the stream's channel lives on through the others
    net.layers["layer2_0_conv2"].weight[dead] = 0
    net.layers["layer2_0_bn2"].bias[dead] = 0
    g1, _ = extract(net, inputs=x)
    assert all(g1.nodes[a]["units"] == 128 for a in adds)
    # the whole coupled group: gone from every add, every reader, the function unchanged
    for p in group["params"]:
        p[dead] = 0
    g2, compact = extract(net, inputs=x)
    assert [g2.nodes[a]["units"] for a in adds] == [124] * len(adds)
    assert compact.layers["layer3_0_conv1"].weight.shape[1] == 124
    assert torch.allclose(compact(x), net(x), atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in compact.parameters()) < \
        sum(p.numel() for p in net.parameters())


def test_a_unit_that_dies_after_training_has_its_stale_batchnorm_mean_cleared():
    """A channel killed in a trained net keeps its BatchNorm running mean, so in evaluation
    it is a constant that extraction must keep; clear_dead_means zeroes that mean (the batch
    mean the dead channel sees in training: the training function is unchanged) and the
    channel leaves the compact model, whose function equals the supernet's."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 36, 4))
    x = torch.randn(16, 3, 6, 6)
    m[1].running_mean.uniform_(-1.0, -0.1)  # trained-looking, negative: after the ReLU the
    net = from_module(m.eval(), x)          # constant of a dead channel is positive
    dead = torch.tensor([1, 4, 9])
    group = next(g for g in param_groups(net) if g["name"] == "_0")
    with torch.no_grad():
        for p in group["params"]:
            p[dead] = 0
    assert extract(net.eval(), inputs=x)[0].nodes["_0"]["units"] == 16  # kept as constants
    before = net.train()(x)
    clear_dead_means(net)
    assert torch.equal(net(x), before)  # training mode: batch statistics, unchanged
    assert torch.count_nonzero(net.layers["_1"].running_mean) == 13
    graph, compact = extract(net.eval(), inputs=x)
    assert graph.nodes["_0"]["units"] == 13
    assert torch.allclose(compact(x), net(x), atol=1e-5, rtol=1e-5)
