"""Depth for imported models: from_module(depth=True) gates every residual block x + f(x);
a dead gate removes the block whole, the function unchanged."""
import json

import pytest
import torch
import torchvision

from archdisc import Config, ConfigError, extract, from_module
from archdisc.data import load_data
from archdisc.graph.archgraph import count_params
from archdisc.recipe.byo import model_net, python_model
from archdisc.sparsity.groups import coupled, param_groups, sparse_init


def _resnet18():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    return from_module(torchvision.models.resnet18(num_classes=10).eval(), x, depth=True), x


def test_an_imported_resnet18_loses_a_block_whose_gate_dies():
    net, x = _resnet18()
    g = net.graph
    gated = sorted(v for u, v in g.candidate_edges())
    # the identity blocks (a shortcut conv's block keeps its branch): 2 + 1 + 1 + 1
    assert gated == ["add", "add_1", "add_3", "add_5", "add_7"]
    assert all(g.edges[u, v]["gate"] == "block" and u.endswith("bn2")
               for u, v in g.candidate_edges())
    assert len(coupled(net)) == 4  # block gates leave the residual channels coupled
    edge = [grp for grp in param_groups(net) if grp["kind"] == "edge"]
    assert len(edge) == 1 and len(edge[0]["params"]) == 5  # regularized like skip gates
    want = net(x)
    with torch.no_grad():
        net.gates["layer3_1_bn2__add_5"].zero_()
    graph, compact = extract(net, inputs=x)
    block = [n for n in g if n.startswith("layer3_1_") and n != "layer3_1_relu_1"]
    assert len(block) == 5 and not any(n in graph for n in block)  # conv, bn, relu, conv, bn
    assert all(n in graph for n in g if n not in block)
    assert torch.allclose(compact(x), net(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(compact(x), want, atol=1e-3)  # the block did contribute
    lost = sum(p.numel() for n in block for p in net.layers[n].parameters()) + 1
    assert count_params(graph) == count_params(g) - lost


def test_block_gates_start_open_from_a_sparse_init():
    net, _ = _resnet18()
    sparse_init(net, 0.2, gate_init=0.0, seed=0)
    assert all(torch.equal(p.detach(), torch.ones(1)) for p in net.gates.values())


def test_mobilenet_v2_inverted_residuals_are_gated_and_removable():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    net = from_module(torchvision.models.mobilenet_v2(num_classes=10).eval(), x, depth=True)
    edges = list(net.graph.candidate_edges())
    assert len(edges) == 10  # the blocks whose input and output widths match
    u, v = edges[-1]
    with torch.no_grad():
        net.gates[f"{u}__{v}"].zero_()
    graph, compact = extract(net, inputs=x)
    gone = set(net.graph) - set(graph)
    assert len(gone) == 8 and u in gone  # expand conv-bn-relu6, dw conv-bn-relu6, project
    assert torch.allclose(compact(x), net(x), atol=1e-4, rtol=1e-4)


def test_depth_belongs_to_an_imported_model():
    with pytest.raises(ConfigError, match="'depth'"):
        Config(depth=True).validate()


def test_depth_defaults_to_on_for_a_search_from_weights():
    model = "torchvision.models:resnet18"  # None: gated unless the model has attention
    assert Config(model=model, weights="w.safetensors").gated() is None
    assert Config(model=model, start="weights").gated() is None
    assert Config(model=model).gated() is False  # a sparse start: no trained blocks to rank
    assert Config(model=model, weights="w.safetensors", depth=False).gated() is False
    assert Config(model=model, depth=True).gated() is True


class _ResidualConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.f = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.f(x)).mean((2, 3)))


def _vit_1ch():
    m = torchvision.models.VisionTransformer(image_size=28, patch_size=7, num_layers=1,
                                             num_heads=2, hidden_dim=8, mlp_dim=16,
                                             num_classes=10)
    m.conv_proj = torch.nn.Conv2d(1, 8, 7, 7)
    return m


@pytest.mark.parametrize("attention", [False, True])
def test_a_search_from_weights_gates_blocks_unless_the_model_has_attention(attention):
    """RESULTS.md 13 / 14: gated blocks won on resnet18 and lost on the ViT at 25%."""
    data = load_data("fashion-mnist", limit=50)
    torch.manual_seed(0)
    module = _vit_1ch() if attention else _ResidualConv()
    blocks = 2 if attention else 1  # a ViT layer: its attention and its MLP branch
    for depth, gates in ((None, 0 if attention else blocks), (True, blocks), (False, 0)):
        config = python_model(module, Config(depth=depth))
        assert config.from_weights()
        net = model_net(config, data, module)
        assert len(list(net.graph.candidate_edges())) == gates


class _Bottleneck(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.f = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                     torch.nn.Conv2d(16, 8, 3, padding=1))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.f(x)).mean((2, 3)))


@pytest.mark.parametrize("hold", [True, False])
def test_a_cut_holds_the_block_gates_where_a_dying_block_would_drop_below_the_band(hold):
    """The block's gate is the weakest group, and the block is 90% of the MACs: raising lam
    until MACs <= the target kills it, far below the band. The settle then holds the gates'
    lam and cuts the block's inner channels instead: MACs land in [0.9, 1] of the target."""
    from archdisc.graph.archgraph import count_macs
    from archdisc.recipe.setup import make_optimizer
    from archdisc.sparsity.budget import LamControl, compact_params
    torch.manual_seed(0)
    x = torch.randn(2, 1, 12, 12)
    net = from_module(_Bottleneck().eval(), x, depth=True)
    with torch.no_grad():
        (gate,) = net.gates.values()
        gate.fill_(1e-3)
    full = count_macs(net.graph)
    config = Config(model="m:f", target_macs=int(0.96 * full), weights="w.safetensors",
                    select="none")
    control = LamControl(net, make_optimizer(net, config), config, 10, anchor=True)
    if not hold:  # the settle before the hold: every group's lam raised together
        for g in control.groups:
            if g["kind"] == "edge":
                g["kind"] = "not a gate"
    control.set(1)
    macs = control.settle(net)
    assert macs == compact_params(net, "macs")[0]
    if hold:
        assert float(gate.detach()) != 0 and 0.9 * config.target_macs <= macs <= config.target_macs
        assert control.hold == {"blocks": pytest.approx(1 / control.mult)}
        again = LamControl(net, make_optimizer(net, config), config, 10, anchor=True)
        again.load_state(json.loads(json.dumps(control.state())))  # the checkpoint's way
        assert again.hold == control.hold
    else:  # what the hold prevents
        assert float(gate.detach()) == 0 and macs < 0.2 * full
