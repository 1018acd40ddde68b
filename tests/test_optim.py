"""Regularizers and the Bregman optimizers (archdisc.optim)."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from archdisc.errors import ConfigError
from archdisc.optim import (L1, AdaBreg, GroupL2, KernelL2, LinBreg, ProxSGD, Regularizer,
                            TensorL2, optimizer_state_from_tensors, optimizer_state_to_tensors,
                            regularizer_from_config)


# Two implementations of one update (LinBreg with J = 0 and SGD, foreach and loop, fused
# and loop, the update written out) run the same float32 maths in another order: their
# parameters (all |p| < ~2) drift apart by a few ulps (~1e-7) that later steps carry along.
# Measured after 20-60 steps: at most 1.2e-7 (fused vs loop), also with
# ATEN_CPU_CAPABILITY=default. A wrong update (a missing term, another step size) moves
# them by lr * |grad|, ~1e-3.
TOL = 1e-6


# ------------------------------------------------------------------------------------
# helpers
def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3))


class SmallNet(nn.Module):
    """Conv + linear + a scalar gate: one param group per kind of regularizer."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 5 * 5, 12)
        self.fc2 = nn.Linear(12, 6)
        self.head = nn.Linear(6, 3)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(1)
        h = torch.tanh(self.fc1(h))
        h = torch.tanh(self.fc2(h)) * (1 + self.gate)
        return self.head(h)

    def groups(self, lam: float = 0.05):
        return [{"params": [self.conv.weight], "reg": KernelL2(lam)},
                {"params": [self.fc1.weight, self.fc1.bias], "reg": GroupL2(lam)},
                {"params": [self.fc2.weight], "reg": L1(lam / 10)},
                {"params": [self.gate], "reg": TensorL2(lam)},
                {"params": [self.conv.bias, self.fc2.bias, *self.head.parameters()]}]


def mlp_data(n: int = 64):
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def conv_data(n: int = 32):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 2, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(model, opt, data, steps: int, start: int = 0, batch: int = 16, schedule=None):
    """Mini-batch steps start..start+steps-1 (the batch depends on the step index)."""
    X, y = data
    for k in range(start, start + steps):
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = schedule(k)
        i = (k * batch) % len(X)
        opt.zero_grad()
        F.cross_entropy(model(X[i:i + batch]), y[i:i + batch]).backward()
        opt.step()


def layer_groups(model: nn.Module, reg_factory):
    return [{"params": [m.weight, m.bias], "reg": reg_factory()}
            for m in model if isinstance(m, nn.Linear)]


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------------------------
# J = 0 reproduces SGD / Adam
NO_REG = {"none": None, "l1(0)": lambda: L1(0.0), "group_l2(0)": lambda: GroupL2(0.0)}


def _groups(model, reg):
    return model.parameters() if reg is None else layer_groups(model, reg)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("reg", list(NO_REG))
def test_linbreg_without_reg_is_sgd(foreach, reg):
    a, b = mlp(), mlp()
    train(a, LinBreg(_groups(a, NO_REG[reg]), lr=0.1, foreach=foreach), mlp_data(), 50)
    train(b, torch.optim.SGD(b.parameters(), lr=0.1, foreach=foreach), mlp_data(), 50)
    assert max_diff(a, b) <= TOL


def test_linbreg_delta_scales_the_step_without_reg():
    a, b = mlp(), mlp()
    train(a, LinBreg(a.parameters(), lr=0.05, delta=2.0), mlp_data(), 50)
    train(b, torch.optim.SGD(b.parameters(), lr=0.1), mlp_data(), 50)
    assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("reg", ["none", "l1(0)"])
def test_linbreg_momentum_is_dampened_sgd(foreach, reg):
    # m <- b m + (1-b) lr g, v <- v - m  equals torch SGD(momentum=b, dampening=b) up to
    # torch's first step, which starts the buffer at g instead of (1-b) g. A first step
    # with zero gradients makes both buffers 0, and from then on the two agree exactly.
    beta = 0.9
    a, b = mlp(), mlp()
    oa = LinBreg(_groups(a, NO_REG[reg]), lr=0.1, momentum=beta, foreach=foreach)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=beta, dampening=beta,
                         foreach=foreach)
    for model, opt in ((a, oa), (b, ob)):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        train(model, opt, mlp_data(), 50)
    assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("reg", list(NO_REG))
def test_adabreg_without_reg_is_adam(foreach, reg):
    a, b = mlp(), mlp()
    train(a, AdaBreg(_groups(a, NO_REG[reg]), lr=1e-2, foreach=foreach), mlp_data(), 50)
    train(b, torch.optim.Adam(b.parameters(), lr=1e-2, foreach=foreach), mlp_data(), 50)
    assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("foreach", [True, False])
def test_proxsgd_without_reg_is_sgd(foreach):
    a, b = mlp(), mlp()
    train(a, ProxSGD(a.parameters(), lr=0.05, momentum=0.9, foreach=foreach), mlp_data(), 50)
    train(b, torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, foreach=foreach),
          mlp_data(), 50)
    assert max_diff(a, b) <= TOL


def _soft(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


@pytest.mark.parametrize("foreach", [True, False])
def test_linbreg_momentum_follows_the_formula_under_an_lr_schedule(foreach):
    """Reference: the update written out literally, with L1 soft-thresholding."""
    lam, delta, beta = 0.02, 1.5, 0.8
    schedule = lambda k: [0.1, 0.1, 0.05, 0.0, 0.0, 0.2, 0.2, 0.07][k % 8]  # noqa: E731
    a, ref = mlp(), mlp()
    opt = LinBreg([{"params": list(a.parameters()), "reg": L1(lam)}], lr=0.1, delta=delta,
                  momentum=beta, foreach=foreach)
    train(a, opt, mlp_data(), 40, schedule=schedule)

    X, y = mlp_data()
    with torch.no_grad():  # v0 = theta0/delta + lam sign(theta0)
        vs = [p / delta + lam * torch.sign(p) for p in ref.parameters()]
    ms = [torch.zeros_like(p) for p in ref.parameters()]
    for k in range(40):
        i = (k * 16) % len(X)
        ref.zero_grad()
        F.cross_entropy(ref(X[i:i + 16]), y[i:i + 16]).backward()
        with torch.no_grad():
            for p, v, m in zip(ref.parameters(), vs, ms):
                m.mul_(beta).add_((1 - beta) * schedule(k) * p.grad)
                v.sub_(m)
                p.copy_(_soft(delta * v, delta * lam))
    assert max_diff(a, ref) <= TOL


# ------------------------------------------------------------------------------------
# regularizers: value, prox, subgradient, against independent references
def ref_groups(kind: str, ts: list[torch.Tensor]):
    """(weight, entries of the group) for every group, written out with loops."""
    out = []
    if kind == "l1":
        for t in ts:
            out += [(1.0, e.reshape(1)) for e in t.reshape(-1)]
    elif kind == "group_l2":
        per_unit = sum(t[0].numel() for t in ts)
        for i in range(ts[0].shape[0]):
            out.append((math.sqrt(per_unit), torch.cat([t[i].reshape(-1) for t in ts])))
    elif kind == "kernel_l2":
        for t in ts:
            for o in range(t.shape[0]):
                for c in range(t.shape[1]):
                    out.append((math.sqrt(t.shape[2] * t.shape[3]), t[o, c].reshape(-1)))
    elif kind == "tensor_l2":
        out = [(math.sqrt(t.numel()), t.reshape(-1)) for t in ts]
    return out


def ref_value(kind, lam, ts):
    return lam * sum(w * float(torch.linalg.vector_norm(g)) for w, g in ref_groups(kind, ts))


def random_input(kind: str, seed: int):
    """A few small float64 tensors of a valid shape for ``kind``, with zero groups."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    n = int(torch.randint(1, 5, (1,), generator=g))
    if kind == "l1":
        ts = [r(n, 3), r(n)]
    elif kind == "group_l2":
        ts = [r(n, 2, 2), r(n), r(n)]
    elif kind == "kernel_l2":
        ts = [r(n, 2, 2, 2)]
    else:
        ts = [r(2, 2), r(n), r(())]
    # zero some groups, shrink others towards the threshold
    for views in group_views(kind, ts):
        u = float(torch.rand((), generator=g))
        for view in views:
            if u < 0.25:
                view.zero_()
            elif u < 0.5:
                view.mul_(0.2)
    return ts


def group_views(kind, ts):
    """In-place views of the entries of every group."""
    if kind == "group_l2":
        return [[t[i] for t in ts] for i in range(ts[0].shape[0])]
    if kind == "kernel_l2":
        return [[t[o, c]] for t in ts for o in range(t.shape[0]) for c in range(t.shape[1])]
    if kind == "tensor_l2":
        return [[t] for t in ts]
    return [[e] for t in ts for e in t.view(-1)]


KINDS = {"l1": L1, "group_l2": GroupL2, "kernel_l2": KernelL2, "tensor_l2": TensorL2}


def brute_force_prox(kind, lam, delta, y):
    """argmin_z 1/2||z - y||^2 + delta J(z) by L-BFGS on a smoothed J (norm -> sqrt(.+eps^2))
    with continuation in eps; no closed form involved."""
    z = [t.clone().requires_grad_() for t in y]
    for eps in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10):
        opt = torch.optim.LBFGS(z, lr=1, max_iter=500, tolerance_grad=1e-14,
                                tolerance_change=1e-16, history_size=50,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            obj = 0.5 * sum(((a - b) ** 2).sum() for a, b in zip(z, y))
            obj = obj + delta * lam * smoothed_J(kind, z, eps)
            obj.backward()
            return obj
        opt.step(closure)
    return [t.detach() for t in z]


def smoothed_J(kind, ts, eps):
    """sum_g w_g sqrt(||x_g||^2 + eps^2), vectorised per kind."""
    s = lambda sq: torch.sqrt(sq + eps ** 2)  # noqa: E731
    if kind == "l1":
        return sum(s(t ** 2).sum() for t in ts)
    if kind == "group_l2":
        sq = sum((t ** 2).reshape(t.shape[0], -1).sum(1) for t in ts)
        return math.sqrt(sum(t[0].numel() for t in ts)) * s(sq).sum()
    if kind == "kernel_l2":
        return sum(math.sqrt(t.shape[2] * t.shape[3]) * s((t ** 2).sum((2, 3))).sum()
                   for t in ts)
    return sum(math.sqrt(t.numel()) * s((t ** 2).sum()) for t in ts)


def objective(kind, lam, delta, z, y):
    return 0.5 * sum(float(((a - b) ** 2).sum()) for a, b in zip(z, y)) + \
        delta * ref_value(kind, lam, z)


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), lam=st.floats(0.0, 1.5),
       delta=st.floats(0.1, 2.0))
def test_prox_is_the_minimiser(kind, seed, lam, delta):
    y = random_input(kind, seed)
    x = [t.clone() for t in y]
    KINDS[kind](lam).prox_(x, delta)
    z = brute_force_prox(kind, lam, delta, y)
    # the objective is 1-strongly convex, so its minimiser x* satisfies
    # f(z) - f(x*) >= |z - x*|^2 / 2 for every z: the numerical minimiser (accurate to
    # ~1e-3 on kinks) may be off, but never by more than its objective gap allows
    fx, fz = objective(kind, lam, delta, x, y), objective(kind, lam, delta, z, y)
    assert fx <= fz + 1e-10
    dist2 = sum(float(((a - b) ** 2).sum()) for a, b in zip(x, z))
    assert dist2 / 2 <= fz - fx + 1e-9
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):  # no nearby point is better
        pert = [a + 1e-3 * torch.randn(a.shape, generator=g, dtype=a.dtype) for a in x]
        assert fx <= objective(kind, lam, delta, pert, y) + 1e-12


@pytest.mark.parametrize("kind", list(KINDS))
def test_prox_is_exactly_zero_below_threshold(kind):
    y = random_input(kind, 3)
    lam, delta = 0.7, 0.9
    x = [t.clone() for t in y]
    KINDS[kind](lam).prox_(x, delta)
    for (w, gy), (_, gx) in zip(ref_groups(kind, y), ref_groups(kind, x)):
        if float(torch.linalg.vector_norm(gy)) <= delta * lam * w:
            assert torch.count_nonzero(gx) == 0
        else:  # shrunk along its own direction
            scale = 1 - delta * lam * w / float(torch.linalg.vector_norm(gy))
            # float64, O(1) entries, a norm and a division: ~1e-16, measured 2e-16
            torch.testing.assert_close(gx, scale * gy, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), lam=st.floats(0.0, 2.0))
def test_value_and_subgradient(kind, seed, lam):
    reg = KINDS[kind](lam)
    x = random_input(kind, seed)
    assert reg.value(x) == pytest.approx(ref_value(kind, lam, x), rel=1e-9, abs=1e-12)
    p = reg.subgrad(x)
    # p = lam w x_g/||x_g|| on non-zero groups, exactly 0 on zero groups
    for (w, gx), (_, gp) in zip(ref_groups(kind, x), ref_groups(kind, p)):
        nx = float(torch.linalg.vector_norm(gx))
        if nx == 0:
            assert torch.count_nonzero(gp) == 0
        else:
            torch.testing.assert_close(gp, lam * w * gx / nx, rtol=1e-9, atol=1e-12)  # float64
    # subgradient inequality J(y) >= J(x) + <p, y - x>
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(10):
        y = [t + torch.randn(t.shape, generator=g, dtype=t.dtype) for t in x]
        inner = sum(float((a * (b - c)).sum()) for a, b, c in zip(p, y, x))
        assert reg.value(y) >= reg.value(x) + inner - 1e-9


def test_group_l2_units_span_all_tensors():
    w = torch.tensor([[3.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([4.0, 0.0, 0.0])
    bn = torch.tensor([0.0, 2.0, 0.0])
    reg = GroupL2(0.5)
    # unit norms 5, 2, sqrt(2); n_i = 4 entries per unit -> weight 2
    # float32 norms of small integers (5 and 2 exact, sqrt(2) rounded): a few ulps
    assert reg.value([w, b, bn]) == pytest.approx(0.5 * 2 * (5 + 2 + math.sqrt(2)), rel=1e-6)
    torch.testing.assert_close(reg.group_norms([w, b, bn]),
                               torch.tensor([5.0, 2.0, math.sqrt(2)]), rtol=1e-6, atol=0)
    x = [w.clone(), b.clone(), bn.clone()]
    reg.prox_(x, 2.0)  # threshold 2 * 0.5 * 2 = 2: unit 0 keeps 1 - 2/5, units 1, 2 die
    # 3 * (1 - 2/5) and 4 * (1 - 2/5) in float32: a few ulps. The zeros are exact on every
    # CPU (atol 0): zero entries times the factor, and dead units' factor clamped to 0 (unit
    # 1's norm is exactly the threshold: sqrt(4) = 2 and 1 - 2/2 = 0 are exact in IEEE)
    torch.testing.assert_close(x[0], torch.tensor([[1.8, 0.0], [0.0, 0.0], [0.0, 0.0]]),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(x[1], torch.tensor([2.4, 0.0, 0.0]), rtol=1e-6, atol=0)
    assert torch.equal(x[2], torch.zeros(3))


def test_group_l2_unit_w_scales_each_units_threshold_and_a_cut_keeps_it():
    """unit_w multiplies w_g unit by unit: prox, value and subgradient follow it, and the
    optimizer's shrink_ / cut_ (raising lam) cut by it, not by the norm alone."""
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)  # norms 5, 1, 1
    reg = GroupL2(0.5)
    reg.unit_w = torch.tensor([4.0, 0.1, 2.0], dtype=torch.float64)
    # w_g = sqrt(2) * unit_w; threshold delta * lam * w_g with delta 1
    thr = 0.5 * math.sqrt(2) * reg.unit_w
    assert reg.value([w]) == pytest.approx(float((thr * torch.tensor([5.0, 1.0, 1.0])).sum()),
                                           rel=1e-12)
    torch.testing.assert_close(reg.subgrad([w])[0], w / w.norm(dim=1, keepdim=True)
                               * thr[:, None], rtol=1e-12, atol=0)
    x = [w.clone()]
    reg.prox_(x, 1.0)  # unit 0: 5 > 2.83 shrinks; unit 1: 1 > 0.07 shrinks; unit 2 dies
    factor = (1 - thr / torch.tensor([5.0, 1.0, 1.0], dtype=torch.float64)).clamp(min=0)
    torch.testing.assert_close(x[0], w * factor[:, None], rtol=1e-12, atol=0)
    assert torch.equal(x[0][2], torch.zeros(2, dtype=torch.float64))
    p = nn.Parameter(w.clone())
    opt = AdaBreg([{"params": [p], "reg": reg}], lr=0.1)
    opt.cut_(opt.param_groups[0], 0.5)  # the weakest unit by norm (1) survives, unit 2 dies
    assert torch.equal(p.detach(), torch.cat([w[:2], torch.zeros(1, 2, dtype=w.dtype)]))


def test_prox_into_scales_the_input():
    g = torch.Generator().manual_seed(0)
    for reg in (L1(0.3), GroupL2(0.3)):
        v = [torch.randn(5, 3, generator=g), torch.randn(5, generator=g)]
        out = [torch.empty_like(t) for t in v]
        reg.prox_into(out, v, delta=0.7, scale=0.7)
        ref = [0.7 * t for t in v]
        reg.prox_(ref, 0.7)
        # float32 O(1) values, thresholds 0.3 vs 0.21 applied before / after the scaling:
        # a few ulps apart (measured 6e-8), also at the kink (the prox is continuous)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_regularizer_config_roundtrip_and_repr():
    for reg in (L1(0.1), GroupL2(0.25), KernelL2(1.0), TensorL2(0.0)):
        cfg = reg.to_config()
        assert json.loads(json.dumps(cfg)) == cfg
        back = regularizer_from_config(cfg)
        assert type(back) is type(reg) and back.lam == reg.lam and back == reg
        assert repr(reg) == f"{type(reg).__name__}(lam={reg.lam!r})"
    assert GroupL2(0.1).to_config() == {"kind": "group_l2", "lam": 0.1}
    assert regularizer_from_config(None) is None
    with pytest.raises(ValueError, match="unknown regularizer kind 'l3'"):
        regularizer_from_config({"kind": "l3", "lam": 1.0})
    with pytest.raises(ValueError, match="exactly the keys"):
        regularizer_from_config({"kind": "l1", "lam": 1.0, "mu": 2})


# ------------------------------------------------------------------------------------
# Bregman-specific behaviour
ALL_REGS = [lambda: L1(0.05), lambda: GroupL2(0.05)]


@pytest.mark.parametrize("opt_cls", [LinBreg, AdaBreg])
@pytest.mark.parametrize("delta", [1.0, 0.3])
@pytest.mark.parametrize("foreach", [True, False])
def test_first_step_with_zero_gradient_keeps_theta(opt_cls, delta, foreach):
    net = SmallNet()
    with torch.no_grad():  # some exact zeros: a dead unit, dead kernels, a zero gate
        net.fc1.weight[3].zero_()
        net.fc1.bias[3] = 0
        net.conv.weight[0, 1].zero_()
    before = [p.detach().clone() for p in net.parameters()]
    opt = opt_cls(net.groups(lam=0.2), lr=0.1, delta=delta, foreach=foreach)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, q in zip(net.parameters(), before):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-6)
        assert torch.equal(p == 0, q == 0)  # zeros stay exactly zero, nothing dies


def test_inverse_scale_space_entries_wake_up_only_when_v_leaves_the_ball():
    g = torch.Generator().manual_seed(0)
    A, b = torch.randn(100, 20, generator=g), torch.randn(100, generator=g)
    lam = 0.5
    theta = torch.zeros(20, requires_grad=True)
    opt = LinBreg([theta], lr=0.05, reg=L1(lam))
    seen_zero = seen_active = False
    for _ in range(60):
        opt.zero_grad()
        (0.5 * ((A @ theta - b) ** 2).mean()).backward()
        opt.step()
        v = opt.state[theta]["v"]
        # exact in IEEE on every CPU: theta = v - clamp(v, -lam, lam) is 0 iff |v| <= lam
        assert torch.equal(theta != 0, v.abs() > lam)
        torch.testing.assert_close(theta, _soft(v, lam), rtol=1e-6, atol=1e-7)  # measured 0
        seen_zero |= bool((theta == 0).any())
        seen_active |= bool((theta != 0).any())
    assert seen_zero and seen_active


def test_linbreg_recovers_a_planted_sparse_support():
    n, d = 200, 50
    g = torch.Generator().manual_seed(0)
    A = torch.randn(n, d, generator=g)
    support = torch.randperm(d, generator=g)[:5]
    x_true = torch.zeros(d)
    x_true[support] = torch.tensor([1.5, -2.0, 1.0, -1.2, 2.5])
    b = A @ x_true + 0.01 * torch.randn(n, generator=g)
    theta = torch.zeros(d, requires_grad=True)
    opt = LinBreg([theta], lr=0.3, reg=L1(1.0))
    losses, sizes, exact = [], [], []
    for k in range(100):
        opt.zero_grad()
        loss = 0.5 * ((A @ theta - b) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        active = set(torch.nonzero(theta).flatten().tolist())
        sizes.append(len(active))
        exact.append(active == set(support.tolist()))
    assert sizes[0] == 0  # starts from nothing
    assert any(exact) and exact[-1]
    assert losses[-1] < 1e-3 * losses[0]
    assert float((theta.detach() - x_true).abs().max()) < 0.05


@pytest.mark.parametrize("make", [
    lambda ps: LinBreg(ps, lr=0.05, momentum=0.9),
    lambda ps: AdaBreg(ps, lr=1e-2, delta=0.5),
    lambda ps: ProxSGD(ps, lr=0.05, momentum=0.9),
], ids=["linbreg", "adabreg", "proxsgd"])
def test_foreach_and_loop_paths_agree(make):
    a, b = SmallNet(), SmallNet()
    oa, ob = make(a.groups()), make(b.groups())
    for group in ob.param_groups:
        group["foreach"] = False
    sched = lambda k: 0.05 if k < 20 else (0.02 if k < 40 else 0.0)  # noqa: E731
    if isinstance(oa, AdaBreg):
        sched = None
    train(a, oa, conv_data(), 60, schedule=sched)
    train(b, ob, conv_data(), 60, schedule=sched)
    assert max_diff(a, b) <= TOL
    for pa, pb in zip(a.parameters(), b.parameters()):
        for key, value in oa.state[pa].items():
            if isinstance(value, torch.Tensor):
                assert float((value - ob.state[pb][key]).abs().max()) <= TOL
            else:
                assert value == ob.state[pb][key]


FUSED_CASES = {
    "linbreg": lambda ps, **kw: LinBreg(ps, lr=0.05, momentum=0.9, delta=0.8, **kw),
    "linbreg_m0": lambda ps, **kw: LinBreg(ps, lr=0.05, **kw),
    "adabreg": lambda ps, **kw: AdaBreg(ps, lr=1e-2, delta=0.5, **kw),
    "proxsgd": lambda ps, **kw: ProxSGD(ps, lr=0.05, momentum=0.9, **kw),
}


@pytest.fixture(scope="module")
def dynamo_counters():
    """torch.compile is slow (~5-10 s per optimizer here): each fused optimizer compiles
    once, for SmallNet's groups (KernelL2, GroupL2, L1, TensorL2 and an unregularized
    group); the lr / lam changes below must not compile again."""
    from torch._dynamo.utils import counters
    return counters


@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_and_loop_paths_agree(name, dynamo_counters):
    make = FUSED_CASES[name]
    a, b = SmallNet(), SmallNet()
    oa, ob = make(a.groups(), fused=True), make(b.groups(), foreach=False)
    sched = lambda k: 0.05 if k < 8 else (0.02 if k < 16 else 0.0)  # noqa: E731
    graphs = None
    for start, steps in ((0, 4), (4, 20)):
        train(a, oa, conv_data(), steps, start=start, schedule=sched)
        train(b, ob, conv_data(), steps, start=start, schedule=sched)
        if graphs is None:  # after the first (compiling) steps: a lam change
            graphs = dynamo_counters["stats"]["unique_graphs"]
            oa.param_groups[1]["reg"].lam = ob.param_groups[1]["reg"].lam = 0.08
    assert dynamo_counters["stats"]["unique_graphs"] == graphs  # lr / lam: no recompile
    assert max_diff(a, b) <= TOL
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert set(oa.state[pa]) == set(ob.state[pb])  # same state, same checkpoint
        for key, value in oa.state[pa].items():
            if isinstance(value, torch.Tensor):
                assert float((value - ob.state[pb][key]).abs().max()) <= TOL
            else:
                assert value == ob.state[pb][key]
    (ta, ma), (tb, mb) = optimizer_state_to_tensors(oa), optimizer_state_to_tensors(ob)
    assert ta.keys() == tb.keys()
    for g in mb["param_groups"]:
        g["foreach"] = None  # the only difference: how ob was built
    assert json.dumps(ma) == json.dumps(mb)


def test_fused_options():
    net = SmallNet()
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        AdaBreg(net.groups(), fused=True, foreach=True)
    with pytest.raises(ValueError, match="Invalid fused"):
        LinBreg(net.groups(), lr=0.1, fused="yes")
    # fused=None on CPU: the foreach path, nothing is compiled
    opt = LinBreg(net.groups(), lr=0.1)
    assert opt.fused is None and not opt._use_fused(
        [(g, g["params"]) for g in opt.param_groups])
    # fused=True needs every group: a loop group is refused with the reason
    opt = ProxSGD(net.groups(), lr=0.1, fused=True)
    opt.param_groups[0]["foreach"] = False
    net(conv_data()[0]).sum().backward()
    with pytest.raises(RuntimeError, match="fused=True.*foreach=False"):
        opt.step()

    class MyL1(L1):
        pass
    with pytest.raises(RuntimeError, match="MyL1 has no fused prox"):
        opt = ProxSGD([{"params": [net.fc2.weight], "reg": MyL1(0.1)}], lr=0.1, fused=True)
        opt.step()


def test_fused_none_falls_back_when_compile_fails(monkeypatch):
    from archdisc.optim import base  # the torch.compile plumbing of the fused step

    def broken(fn, **kw):
        def call(*args):
            raise RuntimeError("no C compiler")
        return call
    monkeypatch.setattr(base, "_COMPILED", {})
    monkeypatch.setattr(base, "_COMPILE_ERROR", [])
    monkeypatch.setattr(base.torch, "compile", broken)
    a, b = mlp(), mlp()
    oa = AdaBreg(layer_groups(a, lambda: GroupL2(0.01)), lr=1e-2, fused=True)
    with pytest.raises(RuntimeError, match=r"fused=True\): torch.compile .*no C compiler"):
        train(a, oa, mlp_data(), 1)
    a = mlp()
    oa = AdaBreg(layer_groups(a, lambda: GroupL2(0.01)), lr=1e-2, fused=None)
    ob = AdaBreg(layer_groups(b, lambda: GroupL2(0.01)), lr=1e-2, fused=False)
    monkeypatch.setattr(oa, "_use_fused", lambda jobs: oa._fused_reason(jobs) is None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        train(a, oa, mlp_data(), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: foreach from now on
        train(a, oa, mlp_data(), 2, start=1)
    train(b, ob, mlp_data(), 3)
    assert max_diff(a, b) == 0.0  # both ran the foreach path: the same ops, bit for bit
    assert base._COMPILE_ERROR


@pytest.mark.parametrize("opt_cls", [LinBreg, AdaBreg, ProxSGD])
def test_lam_change_takes_effect_at_the_next_step(opt_cls):
    net = SmallNet()
    opt = opt_cls(net.groups(), lr=1e-3)
    train(net, opt, conv_data(), 3)
    assert torch.count_nonzero(net.fc1.weight) > 0
    opt.param_groups[1]["reg"].lam = 1e6
    train(net, opt, conv_data(), 1, start=3)
    assert torch.count_nonzero(net.fc1.weight) == 0 and torch.count_nonzero(net.fc1.bias) == 0


@pytest.mark.parametrize("opt_cls", [LinBreg, AdaBreg, ProxSGD])
def test_missing_grads_in_a_regularized_group_count_as_zero(opt_cls):
    a, b = mlp(), mlp()
    oa = opt_cls([{"params": [a[0].weight, a[0].bias], "reg": GroupL2(0.02)},
                  {"params": [a[2].weight, a[2].bias], "reg": GroupL2(0.02)}], lr=0.05)
    ob = opt_cls([{"params": [b[0].weight, b[0].bias], "reg": GroupL2(0.02)},
                  {"params": [b[2].weight, b[2].bias], "reg": GroupL2(0.02)}], lr=0.05)
    X, y = mlp_data()
    for model, opt, explicit in ((a, oa, False), (b, ob, True)):
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(X), y).backward()
            model[0].bias.grad = torch.zeros_like(model[0].bias) if explicit else None
            model[2].weight.grad = model[2].bias.grad = None  # whole group without grads
            opt.step()
    assert max_diff(a, b) == 0.0  # a zero gradient adds exact zeros: bit for bit
    assert len(oa.state[a[2].weight]) == 0  # the group without any grad was skipped
    assert torch.equal(a[2].weight, mlp()[2].weight)


def test_reg_none_group_skips_params_without_grad():
    model = mlp()
    w0 = model[4].weight.detach().clone()
    opt = LinBreg(model.parameters(), lr=0.1, momentum=0.5)
    X, y = mlp_data()
    F.cross_entropy(model(X), y).backward()
    model[4].weight.grad = None
    opt.step()
    assert torch.equal(model[4].weight, w0) and len(opt.state[model[4].weight]) == 0


# ------------------------------------------------------------------------------------
# state: state_dict, pickle-free save / load, bit-identical resume
OPTS = {
    "linbreg": lambda ps: LinBreg(ps, lr=0.05, momentum=0.9, delta=0.8),
    "adabreg": lambda ps: AdaBreg(ps, lr=1e-2, betas=(0.8, 0.99)),
    "proxsgd": lambda ps: ProxSGD(ps, lr=0.05, momentum=0.9),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_resume_through_tensors_and_json_is_bit_identical(name, tmp_path):
    from safetensors.torch import load_file, save_file

    sched = lambda k: 0.05 if k < 14 else 0.03  # noqa: E731  (lr changes after the resume)
    straight = SmallNet()
    opt = OPTS[name](straight.groups())
    train(straight, opt, conv_data(), 20, schedule=sched)

    first = SmallNet()
    opt1 = OPTS[name](first.groups())
    train(first, opt1, conv_data(), 10, schedule=sched)
    tensors, meta = optimizer_state_to_tensors(opt1)
    save_file(tensors, tmp_path / "opt.safetensors")
    (tmp_path / "opt.json").write_text(json.dumps(meta))
    save_file({k: v.detach().contiguous() for k, v in first.state_dict().items()},
              tmp_path / "model.safetensors")

    resumed = SmallNet(seed=99)  # different init, overwritten by the load
    resumed.load_state_dict(load_file(tmp_path / "model.safetensors"))
    opt2 = OPTS[name](resumed.groups(lam=123.0))  # lam comes from the saved state
    optimizer_state_from_tensors(opt2, load_file(tmp_path / "opt.safetensors"),
                                 json.loads((tmp_path / "opt.json").read_text()))
    assert opt2.param_groups[1]["reg"].lam == 0.05
    train(resumed, opt2, conv_data(), 10, start=10, schedule=sched)

    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        for key, value in opt.state[p].items():
            other = opt2.state[q][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) \
                else value == other


def test_state_dict_holds_plain_data_and_keeps_the_reg_object(tmp_path):
    net = SmallNet()
    opt = AdaBreg(net.groups(), lr=1e-2)
    train(net, opt, conv_data(), 3)
    sd = opt.state_dict()
    assert sd["param_groups"][1]["reg"] == {"kind": "group_l2", "lam": 0.05}
    assert isinstance(opt.param_groups[1]["reg"], GroupL2)  # not modified by state_dict
    torch.save(sd, tmp_path / "sd.pt")
    loaded = torch.load(tmp_path / "sd.pt", weights_only=True)

    net2 = SmallNet()
    opt2 = AdaBreg(net2.groups(lam=1.0), lr=1e-2)
    reg = opt2.param_groups[1]["reg"]
    opt2.load_state_dict(loaded)
    assert opt2.param_groups[1]["reg"] is reg and reg.lam == 0.05  # a schedule's handle survives
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)


def test_load_rejects_a_different_optimizer():
    net = SmallNet()
    opt = LinBreg(net.groups(), lr=0.1)
    train(net, opt, conv_data(), 2)
    tensors, meta = optimizer_state_to_tensors(opt)
    with pytest.raises(ValueError, match="saved from a LinBreg"):
        optimizer_state_from_tensors(AdaBreg(SmallNet().groups()), tensors, meta)
    with pytest.raises(ValueError, match="not an archdisc optimizer state"):
        optimizer_state_from_tensors(LinBreg(SmallNet().groups(), lr=0.1), tensors, {})


@pytest.mark.parametrize("make", [lambda ps: torch.optim.Adam(ps, lr=1e-2),
                                  lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)],
                         ids=["adam", "sgd"])
def test_state_to_tensors_also_serves_torch_optimizers(make):
    straight, first = mlp(), mlp()
    opt, opt1 = make(straight.parameters()), make(first.parameters())
    train(straight, opt, mlp_data(), 20)
    train(first, opt1, mlp_data(), 10)
    tensors, meta = optimizer_state_to_tensors(opt1)
    resumed = mlp(seed=5)
    resumed.load_state_dict(first.state_dict())
    opt2 = make(resumed.parameters())
    optimizer_state_from_tensors(opt2, tensors, json.loads(json.dumps(meta)))
    train(resumed, opt2, mlp_data(), 10, start=10)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))

# ------------------------------------------------------------------------------------
# errors
def _p(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype, requires_grad=dtype.is_floating_point)


ERRORS = [
    (lambda: LinBreg([_p(2)], lr=-0.1), r"lr=-0.1.*>= 0"),
    (lambda: LinBreg([_p(2)], lr=0.1, delta=0.0), r"delta=0.0.*> 0"),
    (lambda: LinBreg([_p(2)], lr=0.1, delta=-1.0), r"delta=-1.0.*> 0"),
    (lambda: LinBreg([_p(2)], lr=0.1, momentum=1.0), r"momentum=1.0.*\[0, 1\)"),
    (lambda: LinBreg([_p(2)], lr=0.1, momentum=-0.1), r"momentum=-0.1.*\[0, 1\)"),
    (lambda: AdaBreg([_p(2)], lr=-1.0), r"lr=-1.0"),
    (lambda: AdaBreg([_p(2)], betas=(1.0, 0.9)), r"betas\[0\]=1.0.*\[0, 1\)"),
    (lambda: AdaBreg([_p(2)], betas=(0.9, -0.5)), r"betas\[1\]=-0.5.*\[0, 1\)"),
    (lambda: AdaBreg([_p(2)], eps=-1e-8), r"eps=-1e-08.*>= 0"),
    (lambda: AdaBreg([_p(2)], delta=0), r"delta=0.*> 0"),
    (lambda: ProxSGD([_p(2)], lr=-0.5), r"lr=-0.5"),
    (lambda: ProxSGD([_p(2)], lr=0.1, momentum=2.0), r"momentum=2.0"),
    (lambda: L1(-0.1), r"L1: lam must be .*>= 0, got -0.1"),
    (lambda: GroupL2(float("nan")), r"GroupL2: lam must be"),
    (lambda: LinBreg([{"params": [_p(3, 2), _p(4)], "reg": GroupL2(0.1)}], lr=0.1),
     r"agree on dim 0.*\(3, 2\), \(4,\).*separate param groups"),
    (lambda: AdaBreg([{"params": [_p(3, 2, 3, 3), _p(3)], "reg": KernelL2(0.1)}]),
     r"4-D conv weights.*shape \(3,\)"),
    (lambda: LinBreg([_p(3, dtype=torch.int64)], lr=0.1), r"floating point.*torch.int64"),
    (lambda: LinBreg([{"params": [_p(3)], "reg": 0.1}], lr=0.1), r"Regularizer"),
    (lambda: L1(0.1).prox_([_p(3)], 0.0), r"delta must be > 0"),
    (lambda: GroupL2(0.1).prox_([_p(3, 2), _p(2)], 1.0), r"agree on dim 0"),
    (lambda: L1("x"), r"L1: lam must be .*got 'x'"),
    (lambda: LinBreg([_p(2)], lr=0.1, fused="yes"), r"Invalid fused='yes'"),
    (lambda: regularizer_from_config({"kind": "l3", "lam": 0.1}), r"unknown regularizer kind"),
    (lambda: optimizer_state_from_tensors(LinBreg([_p(2)], lr=0.1), {"x": _p(2)},
                                          optimizer_state_to_tensors(
                                              LinBreg([_p(2)], lr=0.1))[1]),
     r"unexpected tensor name 'x'"),
]


@pytest.mark.parametrize("case", range(len(ERRORS)))
def test_error_messages(case):
    fn, pattern = ERRORS[case]
    with pytest.raises(ConfigError, match=pattern):  # an archdisc error, and a ValueError
        fn()


def test_lam_setter_validates():
    reg = GroupL2(0.1)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        reg.lam = -1
    assert reg.lam == 0.1
    assert isinstance(reg, Regularizer)


def test_bad_group_is_not_added():
    opt = LinBreg([_p(2)], lr=0.1)
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [_p(2)], "lr": -1.0})
    assert len(opt.param_groups) == 1
