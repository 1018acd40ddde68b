"""archdisc.extract: the compact model computes the supernet's function, with the size that
the planted zero pattern predicts (computed here by hand, per search space)."""
from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from archdisc import ArchGraph, compile_graph, count_params
from archdisc.extract import (ExtractionError, extract, extraction_report, format_report,
                              verify_equivalent)
from search_spaces import convnet, densenet, mlp, resnet18, skip_mlp

SETTINGS = settings(max_examples=12, deadline=None)
SEEDS = st.integers(0, 2**31 - 1)


# ---------------------------------------------------------------------- helpers
@torch.no_grad()
def supernet(graph, seed=0):
    """Compiled supernet in eval mode with non-trivial BatchNorm (affine and statistics)."""
    torch.manual_seed(seed)
    net = compile_graph(graph).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.3)
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


@torch.no_grad()
def kill(net, node, alive, keep_bias=False):
    """Zero the unit group of every unit of ``node`` not in ``alive``: its weight row /
    filter, bias entry and the affine entries of the BatchNorm right after it."""
    units = net.graph.nodes[node]["units"]
    dead = torch.tensor([u for u in range(units) if u not in alive], dtype=torch.long)
    if not len(dead):
        return
    layer = net.layers[node]
    layer.weight[dead] = 0
    if layer.bias is not None and not keep_bias:
        layer.bias[dead] = 0
    succ = list(net.graph.successors(node))
    if len(succ) == 1 and net.graph.nodes[succ[0]]["op"] == "batchnorm2d":
        net.layers[succ[0]].weight[dead] = 0
        net.layers[succ[0]].bias[dead] = 0


@torch.no_grad()
def zero_at_random(net, gen, *, gates, dead, unread, unread_chance=None):
    """Keep each gate with probability ``gates``; in every searchable parameter zero each
    unit (row) with probability ``dead`` and, in a matrix (only with probability
    ``unread_chance`` when given), each input column with probability ``unread``."""
    for name, p in net.named_parameters():
        if name.startswith("gates."):
            p.mul_((torch.rand(p.shape, generator=gen) < gates).float())
        elif net.graph.nodes[name.split(".")[1]].get("searchable", True):
            p[torch.rand(p.shape[0], generator=gen) < dead] = 0  # dead units
            if p.dim() > 1 and unread and (unread_chance is None or
                                           torch.rand(1, generator=gen) < unread_chance):
                p[:, torch.rand(p.shape[1], generator=gen) < unread] = 0  # unread inputs


def set_gate(net, src, dst, value):
    with torch.no_grad():
        net.gates[f"{src}__{dst}"].fill_(value)


def subset(rng, n, empty=0.0):
    """A random subset of range(n): empty with probability ``empty``, else non-empty."""
    if rng.random() < empty:
        return set()
    k = rng.randint(1, n)
    return set(rng.sample(range(n), k))


def inputs_for(net, batch=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *net.graph.shapes()[net.input_names[0]]), generator=gen)


def check(net, expected_params=None):
    """Extract, then: equivalent on fresh inputs, size as predicted, idempotent, input
    unchanged, JSON + state_dict round trip."""
    before = {k: v.clone() for k, v in net.state_dict().items()}
    graph, compact = extract(net)
    assert not compact.training
    x = inputs_for(net)
    with torch.no_grad():
        ref, got = net(x), compact(x)
    # float32: the same sums over fewer terms, folded constants: rounding relative to |output|
    assert (ref - got).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    n_params = sum(p.numel() for p in compact.parameters())
    assert n_params == count_params(graph)
    if expected_params is not None:
        assert n_params == expected_params
    assert count_params(graph) <= count_params(net.graph)
    for k, v in net.state_dict().items():  # the supernet is untouched
        assert torch.equal(v, before[k]), k
    again, _ = extract(compact)  # idempotent
    assert again.to_dict() == graph.to_dict()
    reloaded = compile_graph(ArchGraph.from_json(graph.to_json()),
                             {k: v.clone() for k, v in compact.state_dict().items()}).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), got)
    return graph, compact


def units_of(graph, node):
    return graph.nodes[node]["units"] if node in graph else 0


# ---------------------------------------------------------------------- mlp
@SETTINGS
@given(seed=SEEDS, scenario=st.sampled_from(["random", "layer_dead"]))
@example(seed=3, scenario="layer_dead")
def test_mlp_random_patterns(seed, scenario):
    rng = random.Random(seed)
    a1, a2 = subset(rng, 16), subset(rng, 12)
    if scenario == "layer_dead":
        (a1, a2)[rng.randint(0, 1)].clear()
    net = supernet(mlp((20, 16, 12, 5), in_shape=None), seed)
    kill(net, "fc1", a1)
    kill(net, "fc2", a2)
    if a1 and a2:
        expected = 21 * len(a1) + (len(a1) + 1) * len(a2) + 5 * len(a2) + 5
    else:  # the output is a constant: a chain of single units (documented)
        expected = 21 + 2 + 10
    graph, _ = check(net, expected)
    if a1 and a2:
        assert units_of(graph, "fc1") == len(a1) and units_of(graph, "fc2") == len(a2)


def test_relu_bias_constants_fold_into_next_bias():
    net = supernet(mlp((20, 16, 12, 5), in_shape=None))
    with torch.no_grad():
        net.layers["fc1"].bias[:4] = torch.tensor([0.5, 1.0, -0.3, 2.0])
    kill(net, "fc1", alive=set(range(4, 16)), keep_bias=True)  # rows 0-3 zero, bias kept
    # units 0, 1, 3 output relu(b) > 0: constants, folded; unit 2 outputs 0
    graph, compact = check(net, 21 * 12 + 13 * 12 + 12 * 5 + 5)
    assert units_of(graph, "fc1") == 12
    with torch.no_grad():  # the fold really changed fc2's bias
        assert not torch.allclose(compact.layers["fc2"].bias, net.layers["fc2"].bias)


def test_unread_unit_is_removed():
    net = supernet(mlp((20, 16, 12, 5), in_shape=None))
    with torch.no_grad():
        net.layers["fc2"].weight[:, [3, 7]] = 0  # nobody reads fc1 units 3 and 7
    graph, _ = check(net, 21 * 14 + 15 * 12 + 12 * 5 + 5)
    assert units_of(graph, "fc1") == 14


def test_unread_chain_reaches_fixed_point():
    net = supernet(mlp((20, 16, 12, 10, 5), in_shape=None))
    with torch.no_grad():
        net.layers["fc3"].weight[:, 0] = 0  # fc2 unit 0 unread ...
        net.layers["fc2"].weight[1:, 5] = 0  # ... and it was the only reader of fc1 unit 5
    graph, _ = check(net)
    assert units_of(graph, "fc2") == 11 and units_of(graph, "fc1") == 15


@pytest.mark.parametrize("bias", [0.0, 0.7])
def test_all_paths_dead_gives_constant_model(bias):
    net = supernet(mlp((20, 16, 12, 5), in_shape=None))
    with torch.no_grad():
        for n in ("fc1", "fc2"):
            net.layers[n].weight.zero_()
            net.layers[n].bias.fill_(bias)
    graph, compact = check(net, 21 + 2 + 10)
    with torch.no_grad():
        y = compact(inputs_for(net, seed=5))
    # a constant function: every row is the same ops on exactly zero contributions
    torch.testing.assert_close(y, y[:1].expand_as(y), rtol=0, atol=1e-6)


@pytest.mark.parametrize("space", ["convnet", "densenet", "resnet18"])
def test_dead_stem_never_crashes(space):
    net = supernet(SPACES[space]())
    first = "conv1" if space == "convnet" else "stem"
    kill(net, first, set())  # nothing flows: the output is a constant
    _, compact = check(net)
    with torch.no_grad():
        y = compact(inputs_for(net, seed=5))
    torch.testing.assert_close(y, y[:1].expand_as(y), rtol=0, atol=1e-6)  # constant


# ---------------------------------------------------------------------- skip_mlp
@SETTINGS
@given(seed=SEEDS, scenario=st.sampled_from(["random", "layer_dead", "out_gates_dead"]))
@example(seed=1, scenario="layer_dead")
@example(seed=2, scenario="out_gates_dead")
def test_skip_mlp_random_patterns(seed, scenario):
    rng, J, W = random.Random(seed), 3, 12
    alive = {j: subset(rng, W, empty=0.2) for j in range(1, J + 1)}
    gate = {(i, j): rng.random() < 0.5 for j in range(1, J + 1) for i in range(j)}
    if scenario == "layer_dead":
        alive[rng.randint(1, J - 1)] = set()
    if scenario == "out_gates_dead":
        gate.update({(i, J): False for i in range(J)})
        alive[J] = alive[J] or {0}
    for j in range(1, J + 1):  # every sum varies with the input (no constant layers)
        if not alive[j] and not any(gate[i, j] for i in range(j)):
            gate[0, j] = True
    net = supernet(skip_mlp(blocks=J, width=W, in_shape=(W,)), seed)
    names = {0: "x", **{j: f"sum{j}" for j in range(1, J + 1)}}
    for (i, j), on in gate.items():
        set_gate(net, names[i], f"sum{j}", rng.choice([-1.5, 0.4, 1.0]) if on else 0.0)
    for j in range(1, J + 1):
        kill(net, f"fc{j}", alive[j])
    # by hand: varying units of every sum, which sums are used, what each layer keeps
    var = {0: set(range(W))}
    for j in range(1, J + 1):
        var[j] = alive[j].union(*(var[i] for i in range(j) if gate[i, j]))
    used = {J: True}
    for j in range(J - 1, 0, -1):
        used[j] = (used[j + 1] and bool(alive[j + 1])) or \
            any(gate[j, k] and used[k] for k in range(j + 1, J + 1))
    live = [(i, j) for (i, j), on in gate.items() if on and used[j]]
    expected = len(live) + len(var[J]) * W + W
    for j in range(1, J + 1):
        if used[j] and alive[j]:
            expected += ((W if j == 1 else len(var[j - 1])) + 1) * len(alive[j])
    graph, _ = check(net, expected)
    kept_edges = {(u, v) for u, v in graph.candidate_edges()}
    assert kept_edges == {(names[i], f"sum{j}") for i, j in live}


# ---------------------------------------------------------------------- convnet
@SETTINGS
@given(seed=SEEDS, scenario=st.sampled_from(["random", "layer_dead"]))
@example(seed=4, scenario="layer_dead")
def test_convnet_random_patterns(seed, scenario):
    rng = random.Random(seed)
    a = {"conv1": subset(rng, 4), "conv2": subset(rng, 6), "fc1": subset(rng, 8)}
    if scenario == "layer_dead":
        a[rng.choice(sorted(a))] = set()
    net = supernet(convnet(channels=(4, 6), hidden=8, in_shape=(1, 16, 16), kernel_size=3),
                   seed)
    for n, s in a.items():
        kill(net, n, s)
    c1, c2, h = (len(a[n]) for n in ("conv1", "conv2", "fc1"))
    if c1 and c2 and h:  # 16 -conv3-> 14 -pool-> 7 -conv3-> 5 -pool-> 2: 4 pixels / channel
        expected = 10 * c1 + (9 * c1 + 1) * c2 + (4 * c2 + 1) * h + 10 * h + 10
    elif c1 and c2 == 6:  # fc1 dead; the kept conv2 channel varies and reads conv1
        expected = 10 * c1 + (9 * c1 + 1) + 5 + 20
    else:  # constant output: one channel / neuron per layer
        expected = 10 + 10 + 5 + 20
    check(net, expected)


def test_conv_constant_folds_through_pool_and_flatten():
    net = supernet(convnet(channels=(4, 6), hidden=8, in_shape=(1, 16, 16), kernel_size=3))
    with torch.no_grad():
        net.layers["conv2"].bias[:2] = torch.tensor([0.8, 1.3])  # relu(b) > 0 constants
    kill(net, "conv2", alive={2, 3, 4, 5}, keep_bias=True)
    graph, compact = check(net, 10 * 4 + 37 * 4 + 17 * 8 + 90)
    assert units_of(graph, "conv2") == 4


# ---------------------------------------------------------------------- densenet
@SETTINGS
@given(seed=SEEDS, scenario=st.sampled_from(["random", "layer_dead", "out_gates_dead"]))
@example(seed=5, scenario="layer_dead")
@example(seed=6, scenario="out_gates_dead")
def test_densenet_random_patterns(seed, scenario):
    rng, L, G = random.Random(seed), 3, 4
    alive = {0: subset(rng, 4), **{i: subset(rng, G, empty=0.2) for i in range(1, L + 1)}}
    if scenario == "layer_dead":
        alive[rng.randint(1, L)] = set()
    dsts = list(range(1, L + 1)) + ["out"]
    gate = {(k, i): rng.random() < 0.6 for i in dsts for k in range(i if i != "out" else L + 1)}
    for i in range(1, L + 1):  # every alive layer reads a varying input
        if alive[i] and not any(gate[k, i] and alive[k] for k in range(i)):
            gate[0, i] = True
    if scenario == "out_gates_dead":
        gate.update({(k, "out"): False for k in range(L + 1)})
    elif not any(gate[k, "out"] and alive[k] for k in range(L + 1)):
        gate[0, "out"] = True
    net = supernet(densenet(layers=L, growth=G, stem=4, in_shape=(1, 8, 8)), seed)
    feat = {0: "stem_relu", **{i: f"relu{i}" for i in range(1, L + 1)}}
    cat = {**{i: f"cat{i}" for i in range(1, L + 1)}, "out": "cat_out"}
    for (k, i), on in gate.items():
        set_gate(net, feat[k], cat[i], rng.choice([-1.2, 0.5, 1.0]) if on else 0.0)
    kill(net, "stem", alive[0])
    for i in range(1, L + 1):
        kill(net, f"conv{i}", alive[i])
    if scenario == "out_gates_dead":  # constant output: stem unit -> cat_out -> head
        expected = 9 + 2 + 1 + 20
    else:
        live = {(k, "out") for k in range(L + 1) if gate[k, "out"] and alive[k]}
        read = {k for k, _ in live}
        for i in range(L, 0, -1):
            if i in read:
                live |= {(k, i) for k in range(i) if gate[k, i] and alive[k]}
                read |= {k for k, j in live if j == i}
        expected = len(live) + 10 * sum(len(alive[k]) for k, i in live if i == "out") + 10
        expected += 11 * len(alive[0])
        for i in sorted(read - {0}):
            cin = sum(len(alive[k]) for k, j in live if j == i)
            expected += (9 * cin + 2) * len(alive[i])
    check(net, expected)


# ---------------------------------------------------------------------- resnet18
def resnet_blocks(widths=(4, 8, 16, 32)):
    for s, c in enumerate(widths, 1):
        for b in (1, 2):
            yield f"s{s}b{b}_", c, s > 1 and b == 1


@SETTINGS
@given(seed=SEEDS, scenario=st.sampled_from(["random", "branch_dead"]))
@example(seed=7, scenario="branch_dead")
def test_resnet18_random_patterns(seed, scenario):
    rng = random.Random(seed)
    blocks = list(resnet_blocks())
    dead_branch = rng.choice(blocks)[0] if scenario == "branch_dead" else None
    alive = {"stem": subset(rng, 4)}
    for p, c, sc in blocks:
        c2 = set() if p == dead_branch else subset(rng, c, empty=0.15)
        c1 = set() if p == dead_branch else subset(rng, c, empty=0.0 if c2 else 0.5)
        alive[p + "conv1"], alive[p + "conv2"] = c1, c2
        if sc:
            alive[p + "sconv"] = subset(rng, c, empty=0.0 if not c2 else 0.3)
    net = supernet(resnet18(width_mult=1 / 16, in_shape=(3, 16, 16)), seed)
    for n, s in alive.items():
        kill(net, n, s)
    # by hand: an add keeps the union of its members; a branch whose conv2 is dead vanishes
    v, expected, adds = alive["stem"], 29 * len(alive["stem"]), {}
    for p, c, sc in blocks:
        c2 = alive[p + "conv2"]
        c1 = alive[p + "conv1"] if c2 else set()
        expected += (9 * len(v) + 2) * len(c1) + (9 * len(c1) + 2) * len(c2)
        if sc:
            expected += (len(v) + 2) * len(alive[p + "sconv"])
            v = c2 | alive[p + "sconv"]
        else:
            v = c2 | v
        adds[p + "add"] = len(v)
    expected += 10 * len(v) + 10
    graph, _ = check(net, expected)
    assert {n: units_of(graph, n) for n in adds} == adds
    if dead_branch:
        assert dead_branch + "conv1" not in graph and dead_branch + "conv2" not in graph
        assert graph.in_degree(dead_branch + "add") == 1


def test_resnet_bn_constant_before_padded_conv_is_kept():
    net = supernet(resnet18(width_mult=1 / 16, in_shape=(3, 16, 16)))
    with torch.no_grad():  # channel 0: zero filter, BN output the constant relu(0.5) = 0.5
        net.layers["s1b1_conv1"].weight[0] = 0
        net.layers["s1b1_bn1"].running_mean[0] = 0.0
        net.layers["s1b1_bn1"].bias[0] = 0.5
    graph, _ = check(net)
    assert units_of(graph, "s1b1_conv1") == 4  # conv2 pads: not exactly foldable, kept


@pytest.mark.parametrize("build", [
    lambda: resnet18(width_mult=1 / 16, in_shape=(3, 16, 16)),
    lambda: densenet(layers=3, growth=4, stem=4, in_shape=(1, 8, 8))])
def test_fold_bn(build):
    net = supernet(build())
    kill(net, "stem", {0, 2})
    graph, compact = extract(net, fold_bn=True)
    assert not any(graph.nodes[n]["op"] == "batchnorm2d" for n in graph)
    x = inputs_for(net)
    with torch.no_grad():
        # BatchNorm folded into the conv (w * gamma / sqrt(var + eps)): float32 rounding
        torch.testing.assert_close(compact(x), net(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in compact.parameters()) == count_params(graph)
    assert graph.nodes["stem"]["units"] == 2 and graph.nodes["stem"]["bias"]


# ---------------------------------------------------------------------- gates and indices
def test_channel_gate_zero_entries_kill_channels_on_that_edge():
    g = ArchGraph(name="gated")
    x = g.input("x", [6])
    a0 = g.act("a0", g.linear("fc0", x, 6))
    a1 = g.act("a1", g.linear("fc1", a0, 6))
    s = g.add_op("sum", "add", [a1, a0], units=6, gates={a0: "channel"})
    g.output("out", g.linear("head", s, 3, searchable=False))
    net = supernet(g)
    kill(net, "fc1", {2, 3, 4, 5})
    with torch.no_grad():
        net.layers["fc1"].weight[:, :2] = 0  # fc1 does not read fc0 units 0, 1 ...
        net.gates["a0__sum"][:2] = 0  # ... and the sum does not take them either
    graph, compact = check(net, 28 + 20 + 4 + 15)
    assert graph.nodes["sum"]["units"] == 4 and compact.gates["a0__sum"].shape == (4,)


def test_narrow_members_with_explicit_index():
    g = ArchGraph(name="indexed")
    x = g.input("x", [5])
    a = g.act("a", g.linear("fa", x, 4))
    b = g.act("b", g.linear("fb", x, 3))
    s = g.add_op("sum", "add", [a, b], units=6, index={a: [0, 1, 2, 3], b: [5, 3, 4]})
    g.output("out", g.linear("head", g.act("r", s), 2, searchable=False))
    net = supernet(g)
    kill(net, "fa", {0, 3})
    kill(net, "fb", {1, 2})  # fb units 1, 2 land on sum positions 3, 4
    graph, compact = check(net, 6 * 2 + 6 * 2 + 3 * 2 + 2)  # sum keeps {0, 3, 4}
    assert graph.nodes["sum"]["units"] == 3
    assert graph.edges["b", "sum"]["index"] == [1, 2] and graph.edges["a", "sum"]["index"] \
        == [0, 1]


# ---------------------------------------------------------------------- verification, report
def test_verify_names_the_diverging_node():
    net = supernet(mlp((20, 16, 12, 5), in_shape=None))
    _, compact = extract(net)
    with torch.no_grad():
        compact.layers["fc2"].weight[0, 0] += 1.0
    with pytest.raises(ExtractionError, match="'out'"):
        verify_equivalent(net, compact)
    mapping = {n: (n, None) for n in compact.graph}
    with pytest.raises(ExtractionError, match="'fc2'"):
        verify_equivalent(net, compact, mapping=mapping)
    assert issubclass(ExtractionError, ValueError)


def test_training_mode_and_given_inputs():
    net = supernet(convnet(channels=(4, 6), hidden=8, in_shape=(1, 16, 16), kernel_size=3))
    kill(net, "conv2", {0, 1, 2})
    net.train()
    graph, compact = extract(net, inputs=inputs_for(net, batch=3))
    assert net.training and all(m.training for m in net.modules())
    assert not compact.training


def test_report():
    net = supernet(skip_mlp(blocks=3, width=12, in_shape=(12,)))
    kill(net, "fc2", {0, 1, 2})
    set_gate(net, "x", "sum3", 0.0)
    graph, _ = extract(net)
    r = extraction_report(net.graph, graph)
    json.dumps(r)  # plain data
    assert r["params"]["supernet"] == count_params(net.graph)
    assert r["params"]["compact"] == count_params(graph) < r["params"]["supernet"]
    assert r["units"]["fc2"] == {"op": "linear", "alive": 3, "supernet": 12}
    assert ["x", "sum3"] in r["edges"]["removed"] and ["x", "sum1"] in r["edges"]["kept"]
    text = format_report(r)
    assert "fc2" in text and "x -> sum3" in text and "params" in text


# ---------------------------------------------------------------------- messy patterns
SPACES = {
    "mlp": lambda: mlp((20, 16, 12, 5), in_shape=None),
    "skip_mlp": lambda: skip_mlp(blocks=3, width=12, in_shape=(12,)),
    "convnet": lambda: convnet(channels=(4, 6), hidden=8, in_shape=(1, 16, 16), kernel_size=3),
    "densenet": lambda: densenet(layers=3, growth=4, stem=4, in_shape=(1, 8, 8)),
    "resnet18": lambda: resnet18(width_mult=1 / 16, in_shape=(3, 16, 16)),
}


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, space=st.sampled_from(sorted(SPACES)))
def test_messy_patterns_with_constants(seed, space):
    """Rows, biases, BatchNorm entries, input columns and gates zeroed independently:
    dead units leave non-zero constants (folded or kept), and extraction stays exact."""
    net = supernet(SPACES[space](), seed)
    zero_at_random(net, torch.Generator().manual_seed(seed), gates=0.6, dead=0.4, unread=0.3,
                   unread_chance=0.3)
    graph, _ = check(net)
    folded, _ = extract(net, fold_bn=True)  # verified inside
    assert set(folded) == {n for n in graph if graph.nodes[n]["op"] != "batchnorm2d"}


# ---------------------------------------------------------------------- round_to
def widths(graph):
    """Kept width of every node whose width extraction chooses (searchable layers, adds)."""
    return {n: a["units"] for n, a in graph.nodes(data=True)
            if a["op"] == "add" or (a["op"] in ("linear", "conv2d") and a["searchable"])}


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, space=st.sampled_from(sorted(SPACES)), messy=st.booleans())
def test_round_to_multiple(seed, space, messy):
    """round_to=8 keeps widths at multiples of 8 (or the supernet width), stays exact (the
    node-by-node verification inside extract), and round_to=1 is the default."""
    net = supernet(SPACES[space](), seed)
    zero_at_random(net, torch.Generator().manual_seed(seed), gates=0.7, dead=0.5,
                   unread=0.2 if messy else 0.0)
    base, _ = extract(net)
    graph, compact = extract(net, round_to=8)
    assert extract(net, round_to=1)[0].to_dict() == base.to_dict()
    full = net.graph.units()
    for n, w in widths(graph).items():
        assert w % 8 == 0 or w == full[n], (n, w, full[n])
        assert w >= widths(base).get(n, 0)
    heads = [n for n in net.graph if not net.graph.nodes[n].get("searchable", True)]
    assert all(graph.nodes[n]["units"] == full[n] for n in heads if n in graph)
    x = inputs_for(net)
    with torch.no_grad():
        ref, got = net(x), compact(x)
    assert (ref - got).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert sum(p.numel() for p in compact.parameters()) == count_params(graph)
    assert count_params(base) <= count_params(graph) <= count_params(net.graph)


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, space=st.sampled_from(sorted(SPACES)))
def test_min_units_keeps_at_least_that_many(seed, space):
    """min_units keeps at least n units of a searchable node (zeros where the search
    left fewer: the function stays exact), together with round_to."""
    net = supernet(SPACES[space](), seed)
    zero_at_random(net, torch.Generator().manual_seed(seed), gates=0.7, dead=0.8, unread=0.0)
    base, _ = extract(net)
    full = net.graph.units()
    searched = [n for n, a in net.graph.nodes(data=True)
                if a["op"] in ("linear", "conv2d") and a["searchable"]]
    mins = {n: max(1, full[n] // 3) for n in searched}
    for r in (1, 4):
        graph, compact = extract(net, min_units=mins, round_to=r)  # verified inside
        for n in searched:  # a branch the function does not need can still go whole
            if n in graph:
                assert graph.nodes[n]["units"] >= mins[n], (n, r)
                assert graph.nodes[n]["units"] % r == 0 or graph.nodes[n]["units"] == full[n]
        assert count_params(base) <= count_params(graph)
        assert sum(p.numel() for p in compact.parameters()) == count_params(graph)


def test_round_to_pads_with_dead_units_first():
    net = supernet(mlp((20, 16, 12, 5), in_shape=None))
    kill(net, "fc1", {0, 1, 2})
    graph, _ = check(net)
    assert graph.nodes["fc1"]["units"] == 3
    graph, compact = extract(net, round_to=4)
    assert graph.nodes["fc1"]["units"] == 4 and graph.nodes["fc2"]["units"] == 12
    assert graph.nodes["fc1"]["units"] == compact.layers["fc1"].weight.shape[0]
    assert extract(net, round_to=32)[0].nodes["fc1"]["units"] == 16  # capped


@pytest.mark.parametrize("bad", [0, -8, 2.0, True, "8"])
def test_round_to_rejects_bad_values(bad):
    net = supernet(mlp((20, 16, 12, 5), in_shape=None))
    with pytest.raises(ValueError, match="round_to"):
        extract(net, round_to=bad)
