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
units one to one: activations, normalisation, pooling, a depthwise conv); ``mul`` (the
elementwise product of two tensors with the same units, one of them possibly (C, 1, 1):
a squeeze-excitation gate; its two inputs keep the same units); ``select`` (output unit
*j* is input unit ``channels[j]``: a channel slice or a channel shuffle). The token ops and
attention (kind ``attention``) live in :mod:`archdisc.graph.tokens`, entries of this same
table; a (features, tokens) shape is a token tensor, read by ``linear`` per token.

Sizes (``kernel_size``, ``stride``, ``padding``, ``dilation``, ``output_size``) are an int
or ``[height, width]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from archdisc.errors import GraphError
from archdisc.graph.modules import (ACT_MODULES, ChannelLayerNorm, ChannelRMSNorm, ChannelScale,
                                    ChannelSelect, GlobalAvgPool, Linear, MulConst,
                                    ResponseNorm, StochasticDepth)

REQUIRED = object()  # an attribute without a default


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
    grouped: tuple = ()                      # per-unit tensors joining the unit group of
    #                                          the layer feeding this op (a norm's shift,
    #                                          a depthwise filter): see groups.py
    keeps_zero: Callable = lambda a: False   # maps an exactly zero unit to zero (with its
    #                                          grouped tensors zero): unit groups go on
    mixes: bool = False                      # each output reads every input unit (layer
    #                                          norm): extraction keeps all units or none
    pools: bool = False                      # each output reads a statistic of the input
    #                                          units that are not exactly zero (GRN's mean
    #                                          norm): they are kept while any output is
    folds_into: tuple = ()                   # eval mode, it folds into a layer of these ops
    #                                          before it (BatchNorm into a conv)
    searched: str = "units"                  # the attribute counting its unit groups


def pair(v) -> tuple:
    """``(height, width)`` of a size given as an int or a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)


def padded(a) -> bool:
    return any(p > 0 for p in pair(a.get("padding", 0)))


def _window(a, s):
    """Output shape of a sliding window (conv, pool) over a (C, H, W) input, with
    PyTorch's rule for ``ceil_mode`` (the last window starts inside the input or its
    left padding)."""
    out = []
    for d, k, st, p, dil in zip(s[1:], pair(a["kernel_size"]),
                                pair(a["stride"] or a["kernel_size"]), pair(a["padding"]),
                                pair(a.get("dilation", 1))):
        span = d + 2 * p - dil * (k - 1) - 1
        n = (-(-span // st) if a.get("ceil_mode") else span // st) + 1
        if a.get("ceil_mode") and (n - 1) * st >= d + p:
            n -= 1
        out.append(n)
    if min(out) < 1:
        raise GraphError(f"input {s} is too small for kernel {a['kernel_size']}")
    return (a.get("units", s[0]), *out)


def _size_text(v) -> str:
    h, w = pair(v)
    return f"{h}×{w}"


def _conv_label(a, w):
    text = f"conv {_size_text(a['kernel_size'])}"
    text += f" /{_stride_text(a['stride'])}" if pair(a["stride"]) != (1, 1) else ""
    text += f" dil {_stride_text(a['dilation'])}" if pair(a.get("dilation", 1)) != (1, 1) else ""
    text += f" g{a['groups']}" if a.get("groups", 1) != 1 else ""
    return f"{text} {w}"


def _stride_text(v) -> str:
    h, w = pair(v)
    return str(h) if h == w else f"{h}×{w}"


def _conv_shape(a, s):
    g = a["groups"]
    if s[0] % g or a["units"] % g:
        raise GraphError(f"groups={g} must divide the input channels ({s[0]}) and the "
                         f"units ({a['units']})")
    return _window(a, s)


def _dw_constant(a, param, var, val):
    """A depthwise conv of a constant channel c: c * sum(filter) + bias, except that
    zero padding makes a non-zero constant vary at the borders."""
    w, b = param("weight"), param("bias")
    nz = (w != 0).flatten(1).any(1)
    out = val * w.sum((1, 2, 3), dtype=torch.float64)
    if b is not None:
        out = out + b.double()
    new = var & nz
    if padded(a):
        new |= nz & (val != 0)
    return new, out


def _ln_constant(a, param, var, val):
    """Layer norm over the units: a unit with zero weight is its bias; with no varying
    input every unit is a constant, computed here."""
    w, b = param("weight").double(), param("bias").double()
    if var.any():
        return w != 0, torch.where(w != 0, 0.0, b)
    mean = val.mean()
    return var, (val - mean) / torch.sqrt(((val - mean) ** 2).mean() + a["eps"]) * w + b


def _rms_constant(a, param, var, val):
    """RMS norm over the units: a unit with zero weight is 0; with no varying input every
    unit is a constant, computed here."""
    w = param("weight").double()
    if var.any():
        return w != 0, torch.zeros_like(w)
    return var, val / torch.sqrt((val ** 2).mean() + a["eps"]) * w


def _gn_constant(a, param, var, val):
    """Group norm: per group, as a layer norm over its channels (a spatially constant
    group is its bias; an exact zero-variance group normalises to 0)."""
    out_var, out_val = var.clone(), val.clone()
    for grp in torch.arange(len(val)).chunk(a["groups"]):
        sub = {k: param(k)[grp] for k in ("weight", "bias")}
        out_var[grp], out_val[grp] = _ln_constant(a, sub.__getitem__, var[grp], val[grp])
    return out_var, out_val


def kernel_sums(w, groups: int = 1):
    """Which weights are non-zero, and their sums, per (output unit, input unit) of a
    linear or conv weight (kernel sums for a conv); a grouped conv's blocks lie on the
    diagonal."""
    if w.dim() == 2:
        return w != 0, w.double()
    nz, ws = (w != 0).flatten(2).any(2), w.sum((2, 3), dtype=torch.float64)
    if groups > 1:
        per = w.shape[0] // groups
        nz = torch.block_diag(*nz.double().split(per)) != 0
        ws = torch.block_diag(*ws.split(per))
    return nz, ws


def first_true(*masks) -> int:
    """Index of the first True entry of the first mask that has one (else 0)."""
    for m in masks:
        if m.any():
            return int(m.nonzero()[0])
    return 0


def _features(s, name):
    if len(s) != 1:
        raise GraphError(f"{name} needs a (features,) input, got {s}")
    return s


def _bn_constant(a, param, var, val):
    w, b = param("weight").double(), param("bias").double()
    mean, v = param("running_mean").double(), param("running_var").double()
    return var & (w != 0), (val - mean) / torch.sqrt(v + a["eps"]) * w + b


def _select_shape(a, s):
    if max(a["channels"]) >= s[0]:
        raise GraphError(f"channel {max(a['channels'])} is out of range for {s[0]} channels")
    return (len(a["channels"]), *s[1:])


def _pool(kind):
    """Max or average pooling; an average over the window's input pixels only
    (``count_include_pad`` false, PoolFormer's token mixer) is ``avgpool2d`` with that
    attribute."""
    extra = {"count_include_pad": True} if kind == "avg" else {}

    def module(a, cin):
        if kind == "max":
            return nn.MaxPool2d(a["kernel_size"], a["stride"], a["padding"],
                                ceil_mode=a["ceil_mode"])
        return nn.AvgPool2d(a["kernel_size"], a["stride"], a["padding"], ceil_mode=a["ceil_mode"],
                            count_include_pad=a["count_include_pad"])

    def constant(a, param, var, val):  # avg padding counts zeros; max pads with -inf
        counted = kind == "avg" and padded(a) and a["count_include_pad"]
        return (var | (val != 0) if counted else var), val
    return Op(f"{kind}pool2d", {"kernel_size": REQUIRED, "stride": None, "padding": 0,
                                "ceil_mode": False, **extra},
              module=module, label=lambda a, w: f"{kind}pool {a['kernel_size']}", spatial=True,
              out_shape=_window, constant=constant, keeps_zero=lambda a: True,
              check=lambda a: (None if isinstance(a["ceil_mode"], bool) and isinstance(
                  a.get("count_include_pad", True), bool)
                  else "'ceil_mode' and 'count_include_pad' must be true or false"))


def _pad_shape(a, s):
    left, right, top, bottom = a["pads"]
    return (s[0], s[1] + top + bottom, s[2] + left + right)


def _adaptive_pool(kind):
    modules = {"max": nn.AdaptiveMaxPool2d, "avg": nn.AdaptiveAvgPool2d}
    return Op(f"adaptive_{kind}pool2d", {"output_size": REQUIRED},
              module=lambda a, cin: modules[kind](pair(a["output_size"])),
              label=lambda a, w: f"adaptive {kind}pool {_size_text(a['output_size'])}",
              spatial=True, out_shape=lambda a, s: (s[0], *pair(a["output_size"])),
              keeps_zero=lambda a: True)  # a constant stays the same constant


OPS: dict[str, Op] = {op.name: op for op in [
    Op("input", {"shape": REQUIRED}, arity=(0, 0), kind="input",
       label=lambda a, w: "input " + "×".join(str(s) for s in a["shape"]),
       check=lambda a: (None if isinstance(a["shape"], (list, tuple))
                        and len(a["shape"]) in (1, 3)
                        and all(isinstance(s, int) and s >= 1 for s in a["shape"])
                        else "'shape' must be [features] or [channels, height, width] of "
                             f"positive ints, got {a['shape']!r}")),
    Op("linear", {"units": REQUIRED, "bias": True, "searchable": True}, kind="layer",
       module=lambda a, cin: Linear(cin, a["units"], bias=a["bias"]),
       params=lambda a, cin, shape: (cin + a["bias"]) * a["units"],
       macs=lambda a, cin, shape: cin * math.prod(shape),
       label=lambda a, w: f"linear {w}", out_shape=lambda a, s: (a["units"], *s[1:])),
    # groups > 1: a grouped conv keeps all its units and reads all its input channels
    # (extraction cannot drop a channel inside a group); a depthwise conv is dwconv2d.
    Op("conv2d", {"units": REQUIRED, "kernel_size": 3, "stride": 1, "padding": 0,
                  "dilation": 1, "groups": 1, "bias": True, "searchable": True},
       kind="layer",
       module=lambda a, cin: nn.Conv2d(cin, a["units"], a["kernel_size"], a["stride"],
                                       a["padding"], a["dilation"], a["groups"],
                                       bias=a["bias"]),
       params=lambda a, cin, shape: ((cin // a["groups"]) * math.prod(pair(a["kernel_size"]))
                                     + a["bias"]) * a["units"],
       macs=lambda a, cin, shape: ((cin // a["groups"]) * math.prod(pair(a["kernel_size"]))
                                   * math.prod(shape)),
       label=_conv_label, spatial=True, out_shape=_conv_shape,
       check=lambda a: ("a grouped conv (groups > 1) cannot be searchable: its units are "
                        "kept all or none" if a["groups"] != 1 and a["searchable"] else None)),
    # depthwise conv: output channel i filters input channel i only, so it keeps its
    # input's units one to one; its filters join the unit group of the layer feeding it
    Op("dwconv2d", {"kernel_size": 3, "stride": 1, "padding": 0, "dilation": 1,
                    "bias": True},
       module=lambda a, cin: nn.Conv2d(cin, cin, a["kernel_size"], a["stride"], a["padding"],
                                       a["dilation"], groups=cin, bias=a["bias"]),
       params=lambda a, cin, shape: (math.prod(pair(a["kernel_size"])) + a["bias"]) * cin,
       macs=lambda a, cin, shape: math.prod(pair(a["kernel_size"])) * math.prod(shape),
       label=lambda a, w: _conv_label(a, w).replace("conv", "dwconv", 1),
       spatial=True, out_shape=_window, constant=_dw_constant, sliced=("weight", "bias"),
       grouped=("weight", "bias"), keeps_zero=lambda a: True),
    Op("batchnorm2d", {"eps": 1e-5, "momentum": 0.1},
       module=lambda a, cin: nn.BatchNorm2d(cin, eps=a["eps"], momentum=a["momentum"]),
       params=lambda a, cin, shape: 2 * cin, label=lambda a, w: "bn", spatial=True,
       constant=_bn_constant, sliced=("weight", "bias", "running_mean", "running_var"),
       copied=("num_batches_tracked",), grouped=("bias",), keeps_zero=lambda a: True,
       folds_into=("conv2d",)),
    Op("batchnorm1d", {"eps": 1e-5, "momentum": 0.1},
       module=lambda a, cin: nn.BatchNorm1d(cin, eps=a["eps"], momentum=a["momentum"]),
       params=lambda a, cin, shape: 2 * cin, label=lambda a, w: "bn",
       out_shape=lambda a, s: _features(s, "batchnorm1d"),
       constant=_bn_constant, sliced=("weight", "bias", "running_mean", "running_var"),
       copied=("num_batches_tracked",), grouped=("bias",), keeps_zero=lambda a: True),
    # layer norm over the channels (ConvNeXt): every unit reads all of them, so it keeps
    # all its units or none (the mean and variance would change otherwise)
    Op("layernorm", {"eps": 1e-5}, module=lambda a, cin: ChannelLayerNorm(cin, a["eps"]),
       params=lambda a, cin, shape: 2 * cin, label=lambda a, w: "layernorm",
       constant=_ln_constant, sliced=("weight", "bias"), mixes=True),
    # RMS norm over the channels (Llama's): as a layer norm, all its units or none
    Op("rmsnorm", {"eps": 1e-6}, module=lambda a, cin: ChannelRMSNorm(cin, a["eps"]),
       params=lambda a, cin, shape: cin, label=lambda a, w: "rmsnorm",
       constant=_rms_constant, sliced=("weight",), mixes=True),
    # group norm (PoolFormer's, over all channels with 1 group): as a layer norm, its
    # channels are kept all or none
    Op("groupnorm", {"groups": REQUIRED, "eps": 1e-5},
       module=lambda a, cin: nn.GroupNorm(a["groups"], cin, a["eps"]),
       params=lambda a, cin, shape: 2 * cin, label=lambda a, w: f"groupnorm {a['groups']}",
       constant=_gn_constant, sliced=("weight", "bias"), mixes=True,
       check=lambda a: (None if isinstance(a["groups"], int) and a["groups"] >= 1
                        else f"'groups' must be an int >= 1, got {a['groups']!r}")),
    # ConvNeXt-V2's global response norm: a zero channel becomes its bias (joining the
    # unit group, as a BatchNorm's shift); the mean over channels keeps the original count
    Op("grn", {"count": REQUIRED, "eps": 1e-6},
       module=lambda a, cin: ResponseNorm(cin, a["count"], a["eps"]),
       params=lambda a, cin, shape: 2 * cin, label=lambda a, w: "grn", spatial=True,
       constant=lambda a, param, var, val: (var | (val != 0), torch.where(
           val == 0, param("bias").double(), val)),
       sliced=("weight", "bias"), grouped=("bias",), keeps_zero=lambda a: True, pools=True,
       check=lambda a: (None if isinstance(a["count"], int) and a["count"] >= 1
                        else f"'count' must be an int >= 1, got {a['count']!r}")),
    Op("activation", {"fn": "relu"}, module=lambda a, cin: ACT_MODULES[a["fn"]](),
       label=lambda a, w: a["fn"],
       constant=lambda a, param, var, val: (var, ACT_MODULES[a["fn"]]()(val)),
       keeps_zero=lambda a: a["fn"] not in ("sigmoid", "hardsigmoid"),
       check=lambda a: (None if isinstance(a["fn"], str) and a["fn"] in ACT_MODULES else
                        f"fn {a['fn']!r} unknown; choose one of {tuple(ACT_MODULES)}")),
    _pool("max"),
    _pool("avg"),
    _adaptive_pool("max"),
    _adaptive_pool("avg"),
    Op("dropout", {"p": 0.5}, module=lambda a, cin: nn.Dropout(a["p"]),
       label=lambda a, w: f"dropout {a['p']:g}", keeps_zero=lambda a: True,
       check=lambda a: (None if isinstance(a["p"], (int, float))
                        and not isinstance(a["p"], bool) and 0 <= a["p"] < 1
                        else f"'p' must be a number in [0, 1), got {a['p']!r}")),
    Op("stochastic_depth", {"p": 0.0, "mode": "row"},
       module=lambda a, cin: StochasticDepth(a["p"], a["mode"]),
       label=lambda a, w: f"stochastic depth {a['p']:.3g}", keeps_zero=lambda a: True,
       check=lambda a: (None if isinstance(a["p"], (int, float)) and 0 <= a["p"] <= 1
                        and a["mode"] in ("row", "batch")
                        else f"'p' must be in [0, 1] and 'mode' 'row' or 'batch', got "
                             f"{a['p']!r}, {a['mode']!r}")),
    Op("scale", module=lambda a, cin: ChannelScale(cin), params=lambda a, cin, shape: cin,
       label=lambda a, w: "scale", sliced=("weight",), keeps_zero=lambda a: True,
       constant=lambda a, param, var, val: (var & (param("weight") != 0),
                                            val * param("weight").double())),
    Op("mulconst", {"factor": REQUIRED}, module=lambda a, cin: MulConst(a["factor"]),
       label=lambda a, w: f"x {a['factor']:.3g}", keeps_zero=lambda a: True,
       constant=lambda a, param, var, val: (var, val * a["factor"]),
       check=lambda a: (None if isinstance(a["factor"], (int, float)) and not isinstance(
           a["factor"], bool) and math.isfinite(a["factor"])
           else f"'factor' must be a finite number, got {a['factor']!r}")),
    Op("upsample", {"scale": REQUIRED},  # nearest: each pixel repeated scale x scale
       module=lambda a, cin: nn.Upsample(scale_factor=a["scale"], mode="nearest"),
       label=lambda a, w: f"upsample x{a['scale']}", spatial=True, keeps_zero=lambda a: True,
       out_shape=lambda a, s: (s[0], s[1] * a["scale"], s[2] * a["scale"]),
       check=lambda a: (None if isinstance(a["scale"], int) and a["scale"] >= 1
                        else f"'scale' must be an int >= 1, got {a['scale']!r}")),
    # zero padding (left, right, top, bottom) of the image: a conv's asymmetric "same"
    # padding (TensorFlow's, timm's pad_same); a non-zero constant then varies at the borders
    Op("pad2d", {"pads": REQUIRED}, module=lambda a, cin: nn.ZeroPad2d(tuple(a["pads"])),
       label=lambda a, w: "pad " + " ".join(map(str, a["pads"])), spatial=True,
       out_shape=_pad_shape, keeps_zero=lambda a: True,
       constant=lambda a, param, var, val: (var | (val != 0), val),
       check=lambda a: (None if isinstance(a["pads"], list) and len(a["pads"]) == 4 and all(
           isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in a["pads"])
           else f"'pads' must be [left, right, top, bottom] of ints >= 0, got {a['pads']!r}")),
    Op("gap", module=lambda a, cin: GlobalAvgPool(), spatial=True,
       out_shape=lambda a, s: (s[0],), keeps_zero=lambda a: True),
    Op("flatten", kind="flatten", module=lambda a, cin: nn.Flatten(),
       out_shape=lambda a, s: (math.prod(s),)),
    Op("add", {"units": REQUIRED}, arity=(1, None), kind="add"),
    Op("concat", arity=(1, None), kind="concat"),
    Op("mul", arity=(2, 2), kind="mul", label=lambda a, w: f"× {w}"),
    Op("select", {"channels": REQUIRED}, kind="select",
       module=lambda a, cin: ChannelSelect(a["channels"]),
       label=lambda a, w: f"select {w}", out_shape=_select_shape,
       check=lambda a: (None if isinstance(a["channels"], list) and a["channels"] and all(
           isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in a["channels"])
           else "'channels' must be a non-empty list of channel indices")),
    Op("output", {"tokens_last": False}, kind="output"),  # (N, D, L) tokens as (N, L, D)
]}


def spec(op: str) -> Op:
    return OPS[op]


def width(a: dict) -> int:
    """How many unit groups a searchable node has: its units, an attention node's heads."""
    return a[OPS[a["op"]].searched]


def label(a: dict, width: str) -> str:
    """The one-line label of a node with attributes ``a`` and width text ``width``."""
    op = OPS[a["op"]]
    return op.label(a, width) if op.label is not None else f"{op.name} {width}"
