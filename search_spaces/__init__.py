"""Built-in search spaces. Each is a function returning an ArchGraph supernet; archdisc finds
them through the ``archdisc.spaces`` entry point, as it finds any package's spaces."""
from __future__ import annotations

import math

from archdisc.graph import ArchGraph, GraphError


def _flat_input(g: ArchGraph, in_shape) -> tuple[str, int]:
    x = g.input("x", in_shape)
    if len(in_shape) == 3:
        x = g.add_op("flat", "flatten", [x])
    return x, math.prod(in_shape)


def mlp(widths=(784, 200, 80, 10), in_shape=(1, 28, 28), act="relu") -> ArchGraph:
    """Fully connected net; every hidden neuron searchable, the output layer not."""
    widths = [int(w) for w in widths]
    if len(widths) < 2:
        raise GraphError(f"mlp widths {widths}: give at least [in, out]")
    in_shape = tuple(in_shape) if in_shape else (widths[0],)
    g = ArchGraph(name="mlp")
    x, d = _flat_input(g, in_shape)
    if d != widths[0]:
        raise GraphError(f"mlp: in_shape {list(in_shape)} has {d} features but widths[0] is "
                         f"{widths[0]}; make them agree")
    for i, w in enumerate(widths[1:-1], 1):
        x = g.act(f"act{i}", g.linear(f"fc{i}", x, w), act)
    g.output("out", g.linear(f"fc{len(widths) - 1}", x, widths[-1], searchable=False))
    return g


def skip_mlp(blocks=6, width=784, in_shape=(1, 28, 28), task="denoising", classes=10,
             act="relu") -> ArchGraph:
    """Fully skip-connected MLP (Bregman NAS paper): block j computes
    act(W_j x_{j-1} + b_j) + sum_i s_ij x_i over every earlier state x_i (the input
    included when its width matches), each skip behind a searchable scalar gate s_ij.
    ``task="denoising"`` reads out ``prod(in_shape)`` features, ``"classification"``
    a ``classes``-way head."""
    if task not in ("denoising", "classification"):
        raise GraphError(f"skip_mlp task {task!r}: choose 'denoising' or 'classification'")
    g = ArchGraph(name="skip_mlp")
    x, d = _flat_input(g, in_shape)
    states = [x] if d == width else []
    last = x
    for j in range(1, int(blocks) + 1):
        h = g.act(f"act{j}", g.linear(f"fc{j}", last, width), act)
        last = g.add_op(f"sum{j}", "add", [h] + states, units=width,
                        gates={s: "scalar" for s in states})
        states.append(last)
    out = d if task == "denoising" else classes
    g.output("out", g.linear("head", last, out, searchable=False))
    return g


def convnet(channels=(64, 64), hidden=128, in_shape=(1, 28, 28), classes=10,
            kernel_size=5) -> ArchGraph:
    """The reference Fashion-MNIST ConvNet: 2 x (conv 5x5, relu, maxpool 2), then
    linear hidden layer and head; channels and hidden neurons searchable."""
    g = ArchGraph(name="convnet")
    x = g.input("x", in_shape)
    for i, c in enumerate(channels, 1):
        x = g.conv(f"conv{i}", x, c, kernel_size=kernel_size, padding=0)
        x = g.add_op(f"pool{i}", "maxpool2d", [g.act(f"relu{i}", x)], kernel_size=2)
    x = g.add_op("flat", "flatten", [x])
    x = g.act("relu_fc", g.linear("fc1", x, hidden))
    g.output("out", g.linear("fc2", x, classes, searchable=False))
    return g


def densenet(layers=4, growth=16, stem=16, in_shape=(1, 28, 28), classes=10) -> ArchGraph:
    """A conv dense block: every layer reads the concatenation of all earlier feature
    maps, every connection behind a searchable scalar gate; channels searchable."""
    g = ArchGraph(name="densenet")
    x = g.input("x", in_shape)
    feats = [g.act("stem_relu", g.bn("stem_bn", g.conv("stem", x, stem, bias=False)))]
    for i in range(1, int(layers) + 1):
        cat = g.add_op(f"cat{i}", "concat", feats, gates={f: "scalar" for f in feats})
        h = g.conv(f"conv{i}", cat, growth, bias=False)
        feats.append(g.act(f"relu{i}", g.bn(f"bn{i}", h)))
    cat = g.add_op("cat_out", "concat", feats, gates={f: "scalar" for f in feats})
    g.output("out", g.linear("head", g.add_op("pool", "gap", [cat]), classes,
                             searchable=False))
    return g


def resnet18(width_mult=1.0, in_shape=(3, 32, 32), classes=10) -> ArchGraph:
    """CIFAR-style ResNet-18 (3x3 stem, 4 stages of 2 basic blocks, 64-512 channels);
    every conv's channels searchable, channels coupled across each residual add."""
    widths = [max(1, round(c * width_mult)) for c in (64, 128, 256, 512)]
    g = ArchGraph(name="resnet18")
    x = g.input("x", in_shape)
    x = g.act("stem_relu", g.bn("stem_bn", g.conv("stem", x, widths[0], bias=False)))
    cin = widths[0]
    for s, c in enumerate(widths, 1):
        for b in (1, 2):
            p, stride = f"s{s}b{b}_", 2 if (b == 1 and s > 1) else 1
            h = g.act(p + "relu1", g.bn(p + "bn1", g.conv(p + "conv1", x, c, stride=stride,
                                                          bias=False)))
            h = g.bn(p + "bn2", g.conv(p + "conv2", h, c, bias=False))
            short = x
            if stride != 1 or cin != c:
                short = g.bn(p + "sbn", g.conv(p + "sconv", x, c, kernel_size=1,
                                               stride=stride, padding=0, bias=False))
            x = g.act(p + "relu2", g.add_op(p + "add", "add", [h, short], units=c))
            cin = c
    x = g.add_op("pool", "gap", [x])
    g.output("out", g.linear("fc", x, classes, searchable=False))
    return g


# What archdisc lists as its built-in spaces: name -> (builder, description). archdisc finds
# this table through the "archdisc.spaces" entry point (pyproject.toml), never by import.
SPACES = {
    "mlp": (mlp, "fully connected MLP (default 784-200-80-10), hidden neurons searchable"),
    "skip_mlp": (skip_mlp, "fully skip-connected MLP (6 x 784), neurons and skip gates "
                           "searchable; denoising or classification"),
    "convnet": (convnet, "reference Fashion-MNIST ConvNet (2 conv + 2 linear), channels "
                         "searchable"),
    "densenet": (densenet, "conv dense block, every connection gated, channels searchable"),
    "resnet18": (resnet18, "CIFAR ResNet-18 (11.17M params), channels coupled across "
                           "residual adds; width_mult for CPU runs"),
}
