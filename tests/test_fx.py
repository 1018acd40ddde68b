"""archdisc.from_module: a user's nn.Module traced with torch.fx into an ArchNet."""
import pytest
import torch
import torchvision
from torch import nn

import archdisc
from archdisc import ArchdiscError, extract, from_module, sparse_init

import helpers


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
    # the traced graph runs the module's own float32 ops: equal up to rounding (measured 0)
    torch.testing.assert_close(net.eval()(x), m(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in m.parameters())
    assert [n for n, a in net.graph.nodes(data=True) if a.get("searchable") is False] == ["fc"]


def test_torchvision_resnet18_imports_and_extracts_exactly():
    torch.manual_seed(0)
    m = _trained_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    net = from_module(m, x)
    torch.testing.assert_close(net.eval()(x), m(x), rtol=1e-5, atol=1e-4)  # 20 convs deep
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
    torch.testing.assert_close(net.eval()(x), m(x), rtol=1e-5, atol=1e-5)  # same float32 ops
    fns = [a.get("fn") for _, a in net.graph.nodes(data=True) if a["op"] == "activation"]
    assert fns == ["relu6", "silu", "hardswish", "hardsigmoid", "leaky_relu"]
    sparse_init(net, density=0.5, seed=2)
    extract(net, inputs=x)  # exact on the new ops (verified inside)


# ---------------------------------------------------------------------- torchvision patterns
# Small modules that mimic each family's pattern (tiny widths: CI stays fast). Each check
# zeroes a random half of every unit group, extracts, and compares the compact model with
# the zeroed supernet; BatchNorms have random statistics, so zeroed units are non-zero
# constants that extraction must fold or keep.

def _half_dead_extracts_exactly(m, x, seed=0, trained=False):
    """Import ``m``, zero half of every unit group, extract; returns (supernet, compact
    graph, compact model) after checking outputs and that parameters went down.
    ``trained``: the running means of a dead unit's grouped BatchNorm are 0, as training
    leaves them (the batch mean of a zero channel is 0)."""
    torch.manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.bias.data.uniform_(-0.2, 0.2)
    m.eval()
    net = from_module(m, x)
    torch.testing.assert_close(net.eval()(x), m(x), rtol=1e-5, atol=1e-5)  # same float32 ops
    gen = torch.Generator().manual_seed(seed)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for names in archdisc.sparsity.groups.unit_members(net).values():
            units = params[names[0]].shape[0]
            dead = torch.randperm(units, generator=gen)[: units // 2]
            for p in names:
                params[p][dead] = 0
                bn = net.layers[p.split(".")[1]]
                if trained and isinstance(bn, nn.BatchNorm2d):
                    bn.running_mean[dead] = 0
    x2 = torch.randn(5, *x.shape[1:])
    small, compact = extract(net, inputs=x2)
    with torch.no_grad():
        want, got = net(x2), compact(x2)
    assert want.abs().max() > 1e-3  # a real signal, not zeros
    # float32, the compact model's sums over fewer terms: rounding, measured <= 6e-8
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert archdisc.count_params(small) < archdisc.count_params(net.graph)
    return net, small, compact


def _ops(g):
    return [a["op"] for _, a in g.nodes(data=True)]


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet / MnasNet: expand, depthwise, squeeze-excitation, project."""

    def __init__(self, c=8, e=16, gate=nn.Sigmoid):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e),
                                    nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(e, e, (3, 5), padding=(1, 2), groups=e,
                                          bias=False), nn.BatchNorm2d(e), nn.SiLU())
        self.se = torchvision.ops.SqueezeExcitation(e, 4, scale_activation=gate)
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.stem, self.head = nn.Conv2d(3, c, 3, padding=1), nn.Linear(c, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def test_depthwise_separable_block_with_squeeze_excitation():
    x = torch.randn(3, 3, 8, 8)
    _half_dead_extracts_exactly(InvertedResidual(), x)
    net, small, compact = _half_dead_extracts_exactly(InvertedResidual(), x, trained=True)
    ops = _ops(net.graph)
    assert ops.count("dwconv2d") == 1 and ops.count("mul") == 1
    assert net.graph.nodes["dw_0"]["kernel_size"] == [3, 5]
    # the depthwise filters and the second BatchNorm's shift join the expand conv's group
    assert archdisc.sparsity.groups.unit_members(net)["expand_0"] == [
        "layers.expand_0.weight", "layers.expand_1.bias", "layers.dw_0.weight",
        "layers.dw_1.bias"]
    # the depthwise conv keeps exactly the expand conv's channels, the gate the same
    assert small.units()["dw_0"] == small.units()["expand_0"] == small.units()["se_fc2"] < 16


def test_an_exactly_zero_gate_keeps_both_sides_of_the_product_aligned():
    m = InvertedResidual(gate=nn.Hardsigmoid).eval()
    net = from_module(m, torch.randn(2, 3, 8, 8))
    with torch.no_grad():  # gates 0..4 are hardsigmoid(-4) = 0: products exactly zero
        net.layers["se_fc2"].weight[:5] = 0
        net.layers["se_fc2"].bias[:5] = -4
    x = torch.randn(4, 3, 8, 8)
    small, compact = extract(net, inputs=x)  # the gated tensor is still read by se_fc1
    assert small.units()["se_fc2"] == small.units()["dw_0"] == 16
    torch.testing.assert_close(compact(x), net.eval()(x), rtol=1e-5, atol=1e-6)  # measured 0


def test_dead_depthwise_filter_frees_its_input_channel():
    m = InvertedResidual().eval()
    net = from_module(m, torch.randn(2, 3, 8, 8))
    with torch.no_grad():  # channels 0..5: depthwise filter and shift zero, expand alive
        net.layers["dw_0"].weight[:6] = 0
        net.layers["dw_1"].bias[:6] = 0
    small, _ = extract(net, inputs=torch.randn(4, 3, 8, 8))
    assert small.units()["expand_0"] == 10  # read by nothing alive: removed


class ShuffleBlock(nn.Module):
    """ShuffleNetV2: split the channels, one branch through a depthwise block, concat,
    shuffle (torchvision's view / transpose / view), then nn.ChannelShuffle."""

    def __init__(self, c=8):
        super().__init__()
        h = c // 2
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
            nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())
        self.shuffle, self.conv = nn.ChannelShuffle(2), nn.Conv2d(c, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat((x1, self.branch(x2)), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        x = self.conv(self.shuffle(x))
        return self.head(x.mean([2, 3]))


def test_channel_split_and_shuffle_block():
    net, small, _ = _half_dead_extracts_exactly(ShuffleBlock(), torch.randn(2, 3, 6, 6))
    assert _ops(net.graph).count("select") == 4  # two pieces, two shuffles
    assert _ops(small).count("select") >= 3


class DenseBlock(nn.Module):
    """DenseNet / GoogLeNet / Inception: concatenations, pre-activation BN-ReLU-conv,
    functional pools with ceil_mode, non-square and dilated convs, grouped convs."""

    def __init__(self, c=6, k=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.l1 = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, k, 3, padding=1))
        self.l2 = nn.Sequential(nn.BatchNorm2d(c + k), nn.ReLU(),
                                nn.Conv2d(c + k, k, (1, 3), padding=(0, 1)))
        self.branch = nn.Conv2d(c + 2 * k, 8, 3, padding=2, dilation=2)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # ResNeXt / RegNet
        self.bn, self.pool = nn.BatchNorm2d(c + 2 * k), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.head = nn.Linear(8 + c + 2 * k, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        b = torch.relu(self.grouped(torch.relu(self.branch(x))))
        x = torch.relu(self.bn(x))  # dead channels: non-zero constants, avg-padded
        x = torch.cat([nn.functional.avg_pool2d(x, 3, stride=1, padding=1), b], 1)
        x = nn.functional.adaptive_max_pool2d(self.pool(x), (1, 1))
        return self.head(torch.flatten(x, 1))


def test_dense_concat_block_grouped_and_dilated_convs():
    net, small, _ = _half_dead_extracts_exactly(DenseBlock(), torch.randn(2, 3, 8, 8))
    g = net.graph
    assert g.nodes["branch"]["dilation"] == 2 and g.nodes["l2_2"]["kernel_size"] == [1, 3]
    assert g.nodes["grouped"]["groups"] == 2 and not g.nodes["grouped"]["searchable"]
    assert small.units()["grouped"] == 8 and small.units()["branch"] == 8  # kept whole
    assert small.units()["l1_2"] < 4 or small.units()["l2_2"] < 4


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, permute to channels-last, LayerNorm, Linear, GELU, Linear,
    permute back, layer scale, stochastic depth, residual; a channels-first LayerNorm
    written with F.layer_norm (torchvision's LayerNorm2d) before a downsampling conv."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), \
            nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1))
        self.depth = torchvision.ops.StochasticDepth(0.1, "row")
        self.ln_w, self.ln_b = nn.Parameter(torch.rand(c)), nn.Parameter(torch.rand(c))
        self.down, self.head = nn.Conv2d(c, 6, 2, stride=2), nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.depth(self.gamma * y)
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.ln_w,
                                     self.ln_b, 1e-6)
        x = self.down(x.permute(0, 3, 1, 2))
        return self.head(x.mean((2, 3)))


def test_convnext_block_layernorm_layer_scale_stochastic_depth():
    m = ConvNeXtBlock()
    net, small, compact = _half_dead_extracts_exactly(m, torch.randn(2, 3, 8, 8))
    ops = _ops(net.graph)
    assert ops.count("layernorm") == 2 and "scale" in ops and "stochastic_depth" in ops
    assert net.graph.nodes["fc1"]["op"] == "conv2d"  # a Linear on channels-last: 1x1 conv
    assert small.units()["fc1"] < 32  # the MLP's hidden units are pruned
    assert small.units()["stem"] == 8  # the layer norms keep their channels all or none
    m.train()  # stochastic depth: drops whole samples in training, as torchvision's does
    net.train()
    torch.manual_seed(3)
    x = torch.randn(64, 3, 8, 8)
    (sd,) = [n for n, op in zip(net.graph, _ops(net.graph)) if op == "stochastic_depth"]
    kept = (net.activations(x)[sd].flatten(1) != 0).any(1).float().mean()
    assert 0.75 < float(kept) < 1.0


@pytest.mark.parametrize("window", ["avgpool", "dwconv"])
def test_zero_padding_makes_a_constant_channel_vary(window):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
            self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
            self.head = nn.Linear(6 * 4 * 4, 2)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            x = nn.functional.avg_pool2d(x, 3, 1, 1) if window == "avgpool" else self.dw(x)
            return self.head(x.flatten(1))

    net = from_module(Net().eval(), torch.randn(2, 3, 4, 4))
    with torch.no_grad():  # channels 0..2 are the constant relu(bn shift) = 0.5 ...
        net.layers["conv"].weight[:3] = 0
        net.layers["conv"].bias[:3] = 0
        net.layers["bn"].bias[:] = 0.5
    x = torch.randn(5, 3, 4, 4)
    small, compact = extract(net, inputs=x)  # ... except at the borders
    assert small.units()["conv"] == 6
    torch.testing.assert_close(compact(x), net.eval()(x), rtol=1e-5, atol=1e-6)  # measured 0


def test_layernorm_keeps_all_its_channels_or_none():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 8, 1), nn.LayerNorm(8)
            self.out, self.head = nn.Conv2d(8, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            x = self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.head(self.out(x).mean((2, 3)))

    net = from_module(Net().eval(), torch.randn(2, 3, 4, 4))
    with torch.no_grad():  # channels 0..3: zero, and the norm's scale zero (a constant)
        for p in (net.layers["conv"].weight, net.layers["conv"].bias, net.layers["norm"].weight):
            p[:4] = 0
    x = torch.randn(5, 3, 4, 4)
    small, compact = extract(net, inputs=x)  # dropping them would change mean and variance
    assert small.units()["conv"] == 8
    torch.testing.assert_close(compact(x), net.eval()(x), rtol=1e-5, atol=1e-6)  # measured 0


def test_unsupported_permute_and_layernorm_are_clear_errors():
    class WrongNorm(nn.Module):  # LayerNorm over the width, not the channels
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(6)

        def forward(self, x):
            return self.norm(x)

    with pytest.raises(ArchdiscError, match=r"node 'norm' .*only over the channels"):
        from_module(WrongNorm(), torch.randn(2, 3, 6, 6))

    class Transposed(nn.Module):
        def forward(self, x):
            return x.permute(0, 1, 3, 2)

    with pytest.raises(ArchdiscError, match=r"node 'permute' .*permute \[0, 1, 3, 2\]"):
        from_module(Transposed(), torch.randn(2, 3, 6, 6))


class FunctionalForms(nn.Module):
    """timm's way: BatchNorm subclasses calling F.batch_norm, a Linear subclass calling
    F.linear, a layer scale of shape (1, C, 1, 1), a training-only branch."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.gamma = nn.Parameter(torch.rand(8))
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x, scale=None):
        b = self.bn
        x = nn.functional.batch_norm(self.conv(x), b.running_mean, b.running_var, b.weight,
                                     b.bias, self.training, 0.1, b.eps)
        x = torch.relu(x.mul(self.gamma.reshape(1, -1, 1, 1))).mean((2, 3))
        if self.training:  # traced in eval mode: not part of the function
            x = x * 0
        return self.fc2(nn.functional.relu(nn.functional.linear(x, self.fc1.weight,
                                                                 self.fc1.bias)))


def test_functional_batchnorm_and_linear_import_and_extract_exactly():
    torch.manual_seed(0)
    m = _trained_bn(FunctionalForms()).train()  # a module in training mode is traced in eval
    x = torch.randn(4, 3, 6, 6)
    net = from_module(m, x)
    assert m.training and [net.graph.nodes[n]["op"] for n in net.graph].count("batchnorm2d") == 1
    assert torch.allclose(net(x), m.eval()(x), atol=1e-6)
    params = dict(net.named_parameters())
    with torch.no_grad():
        params["layers.linear.weight"][:3] = 0
        params["layers.linear.bias"][:3] = 0
    graph, compact = extract(net, inputs=x)
    assert graph.nodes["linear"]["units"] == 3
    assert torch.allclose(compact(x), net(x), atol=1e-6)
    assert from_module(m, x, searchable=["fc1"]).graph.nodes["linear"]["searchable"]


class SliceUpsample(nn.Module):
    """GhostNet's channel slice (``x[:, :n]``) and HRNet's nearest upsampling."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up, self.head = nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x)[:, :6], self.up(self.b(x))], 1)
        return self.head(torch.relu(y)).mean((2, 3))


def test_channel_slice_and_upsample_extract_exactly():
    torch.manual_seed(0)
    m, x = SliceUpsample().eval(), torch.randn(2, 3, 8, 8)
    net = from_module(m, x)
    ops = [net.graph.nodes[n]["op"] for n in net.graph]
    assert "upsample" in ops and "select" in ops and torch.allclose(net(x), m(x), atol=1e-6)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for conv in ("a", "b"):
            params[f"layers.{conv}.weight"][1] = 0
            params[f"layers.{conv}.bias"][1] = 0
        params["layers.a.weight"][7] = 1e3  # a channel the slice drops: not read
    graph, compact = extract(net, inputs=x)
    assert (graph.nodes["a"]["units"], graph.nodes["b"]["units"]) == (5, 3)
    assert torch.allclose(compact(x), net(x), atol=1e-5)


def test_multiplying_or_dividing_by_a_number_is_exact():
    class Heads(nn.Module):  # DeiT's distilled heads: their average
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return (self.a(x) + 0.5 * self.b(x)) / 2

    torch.manual_seed(0)
    m, x = Heads().eval(), torch.randn(5, 4)
    net = from_module(m, x)
    assert [net.graph.nodes[n]["op"] for n in net.graph].count("mulconst") == 2
    assert torch.allclose(net(x), m(x), atol=1e-6)


class SamePadConv(nn.Conv2d):
    """TensorFlow's "same" padding, as timm's Conv2dSame: the padding computed from the
    input's size (an ``if`` on it), then ``F.conv2d`` with the module's own weight."""

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max((-(-h // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - h, 0)
        pw = max((-(-w // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - w, 0)
        if ph > 0 or pw > 0:
            x = nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0)


class PoolMixer(nn.Module):
    """A same-padded strided stem, then PoolFormer's token mixer ``pool(x) - x`` with an
    average over the real pixels only (``count_include_pad=False``)."""

    def __init__(self):
        super().__init__()
        self.stem = SamePadConv(3, 8, 3, stride=2)
        self.bn, self.pool = nn.BatchNorm2d(8), nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn(self.stem(x))
        x = x + (self.pool(x) - x)
        return self.head(x.mean((2, 3)))


def test_shape_branch_same_padding_and_pool_mixer_extract_exactly(tmp_path):
    from archdisc.deploy.formats import FORMATS, export
    x = torch.randn(2, 3, 9, 10)  # 9 x 10, stride 2, kernel 3: pad 1 + 1 rows, 0 + 1 columns
    net, small, compact = _half_dead_extracts_exactly(PoolMixer(), x)
    assert sorted(export(compact, small, tmp_path)) == sorted(FORMATS)  # each reloaded, checked
    assert _ops(net.graph).count("pad2d") == 1 and net.graph.nodes["pad"]["pads"] == [0, 1, 1, 1]
    assert net.graph.nodes["pool"]["count_include_pad"] is False
    assert small.nodes["conv2d"]["units"] == 4  # the functional conv's units are cut
    net = from_module(PoolMixer(), x, searchable=["stem"])  # named by its module
    assert net.graph.nodes["conv2d"]["searchable"]
    with pytest.raises(ArchdiscError, match="cannot trace Branchy.*control flow"):
        from_module(helpers.untraceable(), torch.randn(2, 64))  # an if on values stays refused

    class Batchy(nn.Module):  # a shape that is the batch size, or that values decide
        def __init__(self, rule):
            super().__init__()
            self.rule, self.fc = rule, nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x * 2 if self.rule(x) else x)

    for rule in (lambda x: x.shape[0] > 1, lambda x: x[x > 0].numel() > 4):
        with pytest.raises(ArchdiscError, match="batch size or on the input's values"):
            from_module(Batchy(rule), torch.ones(2, 4))


def test_group_norm_keeps_its_channels_and_extracts_exactly():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 6, 1),
                      nn.GroupNorm(1, 6), nn.Conv2d(6, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for gn in (m[1], m[4]):
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.uniform_(-0.5, 0.5)
    net, small, _ = _half_dead_extracts_exactly(m, torch.randn(2, 3, 7, 7))
    assert _ops(net.graph).count("groupnorm") == 2
    # the norms read every channel: the convs feeding them keep all theirs
    assert [net.graph.nodes[n]["searchable"] for n in ("_0", "_3", "_5")] == [False, False, True]
    assert small.nodes["_5"]["units"] == 2 and small.nodes["_0"]["units"] == 8
