"""archdisc.from_module: a user's nn.Module traced with torch.fx into an ArchNet."""
import pytest
import torch
import torchvision
from torch import nn

import archdisc
from archdisc import ArchdiscError, extract, from_module, sparse_init


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.pool = nn.Conv2d(8, 16, 3), nn.MaxPool2d(2)
        self.drop, self.fc = nn.Dropout(0.3), nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.b1(self.c1(x))))
        x = self.pool(nn.functional.relu(self.c2(x)))
        return self.fc(self.drop(x.view(x.size(0), -1)))


def _trained_bn(m):
    """Non-trivial BatchNorm statistics, so that eval mode really differs from train."""
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def test_small_cnn_same_function_and_weights():
    torch.manual_seed(0)
    m = _trained_bn(SmallCNN())
    net = from_module(m, torch.randn(4, 1, 12, 12))
    x = torch.randn(16, 1, 12, 12)  # not the example input
    assert torch.allclose(net.eval()(x), m(x), atol=1e-5)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in m.parameters())
    assert [n for n, a in net.graph.nodes(data=True) if a.get("searchable") is False] == ["fc"]


def test_torchvision_resnet18_imports_and_extracts_exactly():
    torch.manual_seed(0)
    m = _trained_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    net = from_module(m, x)
    assert torch.allclose(net.eval()(x), m(x), atol=1e-4)
    assert archdisc.count_params(net.graph) == sum(p.numel() for p in m.parameters())
    ops = [a["op"] for _, a in net.graph.nodes(data=True)]
    assert ops.count("add") == 8 and ops.count("conv2d") == 20
    sparse_init(net, density=0.3, seed=1)
    small, compact = extract(net, inputs=torch.randn(4, 3, 32, 32))  # verified inside
    assert archdisc.count_params(small) < 0.8 * archdisc.count_params(net.graph)


def test_searchable_option_and_relu_passes_gradient_at_zero():
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    net = from_module(m, torch.randn(2, 5), searchable=["0"])
    assert net.graph.nodes["_0"]["searchable"] and not net.graph.nodes["_2"]["searchable"]
    with torch.no_grad():  # a dead unit: zero row and bias, output exactly 0
        net.layers["_0"].weight[1] = 0
        net.layers["_0"].bias[1] = 0
    net.train()
    net(torch.randn(8, 5)).sum().backward()
    assert net.layers["_0"].weight.grad[1].abs().sum() > 0  # it can switch on
    with pytest.raises(ArchdiscError, match=r"searchable: \['nope'\]"):
        from_module(m, torch.randn(2, 5), searchable=["nope"])


def test_unsupported_op_and_untraceable_module_are_clear_errors():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.softmax(self.fc(x), dim=1)

    with pytest.raises(ArchdiscError, match=r"node 'softmax' .*not supported.*supported: "):
        from_module(Gated(), torch.randn(2, 4))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ArchdiscError, match="cannot trace Branchy.*control flow"):
        from_module(Branchy(), torch.randn(2, 4))


def test_more_activations_batchnorm1d_and_spatial_mean():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.acts = nn.ModuleList([nn.ReLU6(), nn.SiLU(), nn.Hardswish()])
            self.fc, self.bn = nn.Linear(8, 12), nn.BatchNorm1d(12)
            self.leaky, self.head = nn.LeakyReLU(), nn.Linear(12, 5)

        def forward(self, x):
            x = self.conv(x)
            for act in self.acts:
                x = act(x)
            x = nn.functional.hardsigmoid(x).mean((2, 3))
            return self.head(self.leaky(self.bn(self.fc(x))))

    torch.manual_seed(0)
    m = Net().eval()
    m.bn.running_mean.uniform_(-0.3, 0.3)
    m.bn.running_var.uniform_(0.5, 2.0)
    net = from_module(m, torch.randn(4, 3, 6, 6))
    x = torch.randn(9, 3, 6, 6)
    assert torch.allclose(net.eval()(x), m(x), atol=1e-5)
    fns = [a.get("fn") for _, a in net.graph.nodes(data=True) if a["op"] == "activation"]
    assert fns == ["relu6", "silu", "hardswish", "hardsigmoid", "leaky_relu"]
    sparse_init(net, density=0.5, seed=2)
    extract(net, inputs=x)  # exact on the new ops (verified inside)
