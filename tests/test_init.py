"""Sparse initialisation (archdisc.sparsity.init)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from archdisc.errors import ConfigError
from archdisc.sparsity.groups import param_groups, sparse_init
from archdisc.sparsity.init import bias_init_, density_report, sparse_init_


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("density", [0.05, 0.3, 1.0])
def test_element_mode_density_and_kaiming_std(density):
    w = torch.empty(400, 500)
    mask = sparse_init_(w, density, mode="element", generator=gen())
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert torch.equal(mask, w != 0)
    assert (w != 0).float().mean().item() == pytest.approx(density, abs=0.01)
    survivors = w[mask]
    std = math.sqrt(2 / (density * 500))
    assert survivors.std().item() == pytest.approx(std, rel=0.03)
    assert survivors.mean().item() == pytest.approx(0.0, abs=0.05 * std)
    # Kaiming variance in expectation over all entries
    assert w.pow(2).mean().item() == pytest.approx(2 / 500, rel=0.05)


def test_unit_mode_zeros_whole_rows():
    w = torch.empty(2000, 30)
    mask = sparse_init_(w, 0.2, mode="unit", generator=gen(1))
    assert mask.shape == (2000,)
    rows_alive = (w != 0).any(1)
    assert torch.equal(rows_alive, mask)
    assert bool((w[mask] != 0).all())  # survivors are dense rows
    assert mask.float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert w[mask].std().item() == pytest.approx(math.sqrt(2 / (0.2 * 30)), rel=0.05)


def test_unit_mode_on_a_conv_zeros_whole_filters():
    w = torch.empty(64, 8, 3, 3)
    mask = sparse_init_(w, 0.5, mode="unit", generator=gen(2))
    assert mask.shape == (64,)
    assert torch.equal(w.reshape(64, -1).ne(0).any(1), mask)
    assert torch.count_nonzero(w[~mask]) == 0


def test_kernel_mode_zeros_whole_kernels():
    w = torch.empty(64, 32, 3, 3)
    mask = sparse_init_(w, 0.1, mode="kernel", damping=0.5, generator=gen(3))
    assert mask.shape == (64, 32)
    assert torch.equal(w.ne(0).any((2, 3)), mask)
    assert bool(w[mask].ne(0).all())
    assert mask.float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert w[mask].std().item() == pytest.approx(0.5 * math.sqrt(2 / (0.1 * 32 * 9)), rel=0.05)


@pytest.mark.parametrize("mode", ["element", "unit", "kernel"])
def test_at_least_one_survives(mode):
    for seed in range(20):
        w = torch.empty(3, 2, 1, 1)
        mask = sparse_init_(w, 1e-6, mode=mode, generator=gen(seed))
        assert int(mask.sum()) >= 1 and torch.count_nonzero(w) >= 1


def test_generator_makes_it_reproducible_and_fan_in_override():
    a, b = torch.empty(10, 20), torch.empty(10, 20)
    sparse_init_(a, 0.5, generator=gen(5))
    sparse_init_(b, 0.5, generator=gen(5))
    assert torch.equal(a, b)
    gate = torch.empty(4000)
    sparse_init_(gate, 0.5, mode="unit", fan_in=8, generator=gen(6))
    assert gate[gate != 0].std().item() == pytest.approx(math.sqrt(2 / (0.5 * 8)), rel=0.05)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(density=0.0), r"density must be in \(0, 1\], got 0.0"),
    (dict(density=1.5), r"density must be in \(0, 1\], got 1.5"),
    (dict(density=0.5, mode="row"), r"mode must be one of"),
    (dict(density=0.5, damping=-1.0), r"damping must be"),
])
def test_sparse_init_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        sparse_init_(torch.empty(4, 4), **kwargs)


def test_sparse_init_shape_errors():
    with pytest.raises(ValueError, match="mode='kernel' needs a conv weight"):
        sparse_init_(torch.empty(4, 4), 0.5, mode="kernel")
    with pytest.raises(ValueError, match="cannot infer fan_in.*pass fan_in="):
        sparse_init_(torch.empty(4), 0.5)
    with pytest.raises(ValueError, match="floating point"):
        sparse_init_(torch.empty(4, 4, dtype=torch.int32), 0.5)


def test_bias_init_range_and_mask():
    b = torch.empty(5000)
    bias_init_(b, fan_in=100, r=2.0, generator=gen(7))
    assert float(b.min()) >= 0.0 and float(b.max()) <= 2.0 / 10
    assert float(b.mean()) == pytest.approx(0.1, rel=0.05)
    mask = torch.zeros(5000, dtype=torch.bool)
    mask[::3] = True
    bias_init_(b, fan_in=100, mask=mask, generator=gen(7))
    assert torch.count_nonzero(b[~mask]) == 0 and bool((b[mask] > 0).all())
    with pytest.raises(ValueError, match="fan_in must be > 0"):
        bias_init_(b, fan_in=0)
    with pytest.raises(ValueError, match="r must be"):
        bias_init_(b, fan_in=3, r=-1.0)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        bias_init_(b, fan_in=3, mask=torch.ones(3, dtype=torch.bool))


def test_dead_units_are_exactly_zero_invariant():
    lin = nn.Linear(10, 50)
    with torch.no_grad():
        keep = sparse_init_(lin.weight, 0.3, mode="unit", generator=gen(8))
        bias_init_(lin.bias, 10, mask=keep, generator=gen(8))
    out = lin(torch.randn(7, 10))
    assert torch.count_nonzero(out[:, ~keep]) == 0


def test_density_report():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].weight[1].zero_()          # a dead filter
        net[0].weight[2, 0].zero_()       # a dead kernel
        net[0].bias.zero_()
        net[3].weight.zero_()
        net[3].weight[0, 1] = 2.0         # one alive neuron
        net[3].bias.fill_(1.0)
    rep = density_report(net)
    assert rep["params"]["0.weight"] == {"numel": 72, "nonzero": 45, "density": 45 / 72}
    assert rep["params"]["3.bias"]["density"] == 1.0
    assert rep["layers"]["0"] == {"type": "Conv2d", "alive": 3, "total": 4, "density": 0.75,
                                  "kernels_alive": 5, "kernels_total": 8}
    assert rep["layers"]["3"]["alive"] == 1 and rep["layers"]["3"]["total"] == 3
    total = 72 + 4 + 12 + 3
    assert rep["total"] == {"numel": total, "nonzero": 45 + 1 + 3,
                            "density": (45 + 1 + 3) / total}


@pytest.mark.parametrize("call, pattern", [
    (lambda net: sparse_init(net, density=2), r"density must be in \(0, 1\], got 2"),
    (lambda net: sparse_init(net, mode="x"), r"mode 'x': choose one of"),
    (lambda net: sparse_init(net, bias_r=-1.0), r"bias_r must be"),
    (lambda net: param_groups(net, mode="x"), r"mode 'x': choose one of"),
    (lambda net: param_groups(net, lam=-1.0), r"lam must be a finite number >= 0"),
    (lambda net: param_groups(net, lam_edge=float("nan")), r"lam_edge must be"),
    (lambda net: sparse_init_(torch.empty(4, 4), 0.5, mode="row"), r"mode must be one of"),
])
def test_bad_arguments_raise_config_error(call, pattern):
    from archdisc import compile_graph
    from search_spaces import mlp
    net = compile_graph(mlp(widths=[6, 5, 3], in_shape=None))
    with pytest.raises(ConfigError, match=pattern):  # an ArchdiscError and a ValueError
        call(net)
