"""The op registry: what every ArchGraph op means, declared once.

An :class:`Op` says which attributes a node of that op has, how many inputs it takes,
its output shape, the torch module it compiles to, its parameter and MAC counts, its
label in drawings, and how extraction treats it (its ``kind``; for a per-channel op, how
an exact constant passes through it and which per-unit tensors are sliced). graph,
compile, groups, extract and render read this table; adding an op is one entry here
plus its tests.

Kinds: ``input`` and ``output``; ``layer`` (linear / conv: defines its width, its units
may be searchable, weights sliced by kept rows and read columns); ``add`` (a shared unit
space, see graph.py); ``concat``; ``flatten``; ``channelwise`` (keeps its input's
units one to one: activations, normalisation, pooling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .errors import GraphError

REQUIRED = object()  # an attribute without a default
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "identity", "relu6", "silu", "hardswish",
               "hardsigmoid", "leaky_relu")


class ReLU(nn.Module):
    """ReLU whose gradient at exactly 0 is 1 (a valid subgradient; forward unchanged).

    A dead unit (zero weights and bias) sits at exactly 0: with PyTorch's choice of
    0 there, it would never see a gradient, and the inverse scale space could never
    switch it on. Passing the gradient at 0 lets Bregman iterations grow units from zero.
    """

    def forward(self, x):
        if self.training:
            return torch.where(x >= 0, x, 0.0)
        return torch.relu(x)


class ReLU6(nn.Module):
    """ReLU6 whose gradient at exactly 0 is 1, for the same reason as :class:`ReLU`."""

    def forward(self, x):
        if self.training:
            return torch.where(x >= 0, x.clamp(max=6.0), 0.0)
        return nn.functional.relu6(x)


ACT_MODULES = {"relu": ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "identity": nn.Identity, "relu6": ReLU6, "silu": nn.SiLU,
               "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
               "leaky_relu": nn.LeakyReLU}  # leaky_relu: torch's slope 0.01


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


@dataclass(frozen=True)
class Op:
    """One op. Callables take the node's attribute dict ``a``; ``cin`` is the channel /
    feature count of its (first) input, ``shape`` its output shape (without batch)."""
    name: str
    attrs: dict = field(default_factory=dict)
    arity: tuple = (1, 1)                     # (min, max) inputs; None: unbounded
    kind: str = "channelwise"
    module: Callable | None = None           # (a, cin) -> nn.Module
    params: Callable = lambda a, cin, shape: 0
    macs: Callable = lambda a, cin, shape: 0
    label: Callable = None                   # (a, width: str) -> str
    spatial: bool = False                    # needs a (C, H, W) input
    out_shape: Callable | None = None        # (a, in_shape) -> shape; None: unchanged
    constant: Callable | None = None         # extraction: (a, param, var, val) -> var, val
    sliced: tuple = ()                       # per-unit tensors sliced by the kept units
    copied: tuple = ()                       # other tensors copied as they are
    check: Callable | None = None            # (a) -> a complaint about an attribute, or None


def _window(a, s):
    k, st, p = a["kernel_size"], a["stride"] or a["kernel_size"], a["padding"]
    h, w = ((d + 2 * p - k) // st + 1 for d in s[1:])
    if h < 1 or w < 1:
        raise GraphError(f"input {s} is too small for kernel {k}")
    return (a.get("units", s[0]), h, w)


def _features(s, name):
    if len(s) != 1:
        raise GraphError(f"{name} needs a (features,) input, got {s}")
    return s


def _bn_constant(a, param, var, val):
    w, b = param("weight").double(), param("bias").double()
    mean, v = param("running_mean").double(), param("running_var").double()
    return var & (w != 0), (val - mean) / torch.sqrt(v + a["eps"]) * w + b


def _pool(kind):
    modules = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}

    def constant(a, param, var, val):  # avg padding counts zeros; max pads with -inf
        return (var | (val != 0) if kind == "avg" and a["padding"] > 0 else var), val
    return Op(f"{kind}pool2d", {"kernel_size": REQUIRED, "stride": None, "padding": 0},
              module=lambda a, cin: modules[kind](a["kernel_size"], a["stride"], a["padding"]),
              label=lambda a, w: f"{kind}pool {a['kernel_size']}", spatial=True,
              out_shape=_window, constant=constant)


OPS: dict[str, Op] = {op.name: op for op in [
    Op("input", {"shape": REQUIRED}, arity=(0, 0), kind="input",
       label=lambda a, w: "input " + "×".join(str(s) for s in a["shape"])),
    Op("linear", {"units": REQUIRED, "bias": True, "searchable": True}, kind="layer",
       module=lambda a, cin: nn.Linear(cin, a["units"], bias=a["bias"]),
       params=lambda a, cin, shape: (cin + a["bias"]) * a["units"],
       macs=lambda a, cin, shape: cin * a["units"],
       label=lambda a, w: f"linear {w}", out_shape=lambda a, s: (a["units"],)),
    Op("conv2d", {"units": REQUIRED, "kernel_size": 3, "stride": 1, "padding": 0,
                  "bias": True, "searchable": True}, kind="layer",
       module=lambda a, cin: nn.Conv2d(cin, a["units"], a["kernel_size"], a["stride"],
                                       a["padding"], bias=a["bias"]),
       params=lambda a, cin, shape: (cin * a["kernel_size"] ** 2 + a["bias"]) * a["units"],
       macs=lambda a, cin, shape: cin * a["kernel_size"] ** 2 * math.prod(shape),
       label=lambda a, w: (f"conv {a['kernel_size']}×{a['kernel_size']}"
                           f"{' /%d' % a['stride'] if a['stride'] != 1 else ''} {w}"),
       spatial=True, out_shape=_window),
    Op("batchnorm2d", {"eps": 1e-5, "momentum": 0.1},
       module=lambda a, cin: nn.BatchNorm2d(cin, eps=a["eps"], momentum=a["momentum"]),
       params=lambda a, cin, shape: 2 * cin, label=lambda a, w: "bn", spatial=True,
       constant=_bn_constant, sliced=("weight", "bias", "running_mean", "running_var"),
       copied=("num_batches_tracked",)),
    Op("batchnorm1d", {"eps": 1e-5, "momentum": 0.1},
       module=lambda a, cin: nn.BatchNorm1d(cin, eps=a["eps"], momentum=a["momentum"]),
       params=lambda a, cin, shape: 2 * cin, label=lambda a, w: "bn",
       out_shape=lambda a, s: _features(s, "batchnorm1d"),
       constant=_bn_constant, sliced=("weight", "bias", "running_mean", "running_var"),
       copied=("num_batches_tracked",)),
    Op("activation", {"fn": "relu"}, module=lambda a, cin: ACT_MODULES[a["fn"]](),
       label=lambda a, w: a["fn"],
       constant=lambda a, param, var, val: (var, ACT_MODULES[a["fn"]]()(val))),
    _pool("max"),
    _pool("avg"),
    Op("dropout", {"p": 0.5}, module=lambda a, cin: nn.Dropout(a["p"]),
       label=lambda a, w: f"dropout {a['p']:g}",
       check=lambda a: (None if isinstance(a["p"], (int, float))
                        and not isinstance(a["p"], bool) and 0 <= a["p"] < 1
                        else f"'p' must be a number in [0, 1), got {a['p']!r}")),
    Op("gap", module=lambda a, cin: GlobalAvgPool(), spatial=True,
       out_shape=lambda a, s: (s[0],)),
    Op("flatten", kind="flatten", module=lambda a, cin: nn.Flatten(),
       out_shape=lambda a, s: (math.prod(s),)),
    Op("add", {"units": REQUIRED}, arity=(1, None), kind="add"),
    Op("concat", arity=(1, None), kind="concat"),
    Op("output", kind="output"),
]}


def spec(op: str) -> Op:
    return OPS[op]


def label(a: dict, width: str) -> str:
    """The one-line label of a node with attributes ``a`` and width text ``width``."""
    op = OPS[a["op"]]
    return op.label(a, width) if op.label is not None else f"{op.name} {width}"
