"""The fx importer: each traced call becomes an op of the registry, through a table
from module type (graph/import_modules.py) and torch function to the op it is read as.

The module is traced with ``torch.fx.symbolic_trace``; every call is mapped to an op of
the registry (:mod:`archdisc.graph.ops`), the weights are copied, and the compiled ArchNet is
checked to compute the module's eval-mode function on the example input. ``nn.ReLU``
becomes archdisc's ReLU, whose gradient at exactly 0 is 1, so that dead units can switch
on again under Bregman iterations (forward and eval are unchanged).

A few values of the traced program are not graph nodes of their own (:class:`_View`):
a tensor permuted to channels-last (ConvNeXt's ``permute -> LayerNorm -> Linear ->
permute``: the Linear becomes a 1x1 conv, the LayerNorm a layer norm over channels), a
transformer's (N, L, D) tokens (held as (N, D, L) token nodes, graph/tokens.py), the
pieces of a ``chunk`` / ``split`` along the channels (each piece read becomes a ``select``
node), the (N, groups, C / groups, H, W) view of a channel shuffle (the shuffle becomes a
``select`` node), and a parameter read with ``get_attr`` (a layer scale, a LayerNorm's
affine tensors). Shapes come from running the traced program on the example input.
"""
from __future__ import annotations

import math
import operator

import torch
from torch import nn

from archdisc.errors import ModelImportError
from archdisc.graph.archgraph import ArchGraph
from archdisc.graph.import_modules import ACTS, MODULES, SUPPORTED, named, size
from archdisc.graph.import_transformer import TransformerReader, mean_dims
from archdisc.graph.import_transformer import View as _View
from archdisc.graph.modules import ACTIVATIONS

_ACT_FUNCTIONS = {f: name for name, (_, _, fns) in ACTIVATIONS.items() for f in fns}
F = nn.functional
_POOL_FUNCTIONS = {F.max_pool2d: "maxpool2d", F.avg_pool2d: "avgpool2d",
                   F.adaptive_avg_pool2d: "adaptive_avgpool2d",
                   F.adaptive_max_pool2d: "adaptive_maxpool2d"}
_ADD = (operator.add, operator.iadd, torch.add, "add", "add_")
_SUB = (operator.sub, operator.isub, torch.sub, "sub")
_MUL = (operator.mul, operator.imul, torch.mul, "mul", "mul_")


def main_output(out):
    """A model's main output: itself, Hugging Face's ``logits`` (or the first field of its
    output dict), or a tuple's first item."""
    if isinstance(out, dict):
        return out["logits"] if "logits" in out else next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


def _channel_slice(key) -> bool:
    """Whether ``x[key]`` takes a range of channels: ``x[:, a:b]`` (``, :`` / ``...`` after)."""
    every, known = slice(None), (int, type(None))
    return isinstance(key, tuple) and len(key) >= 2 and key[0] == every and \
        isinstance(key[1], slice) and key[1].step in (None, 1) and \
        isinstance(key[1].start, known) and isinstance(key[1].stop, known) and \
        all(k == every or k is Ellipsis for k in key[2:])


class Importer(TransformerReader):
    """Builds the ArchGraph ``g``, its state dict ``weights`` and ``layer_of`` (graph node
    -> qualified name of the searchable-candidate Linear / Conv2d) from a traced module."""

    def __init__(self, gm):
        self.gm, self.g = gm, ArchGraph(name=type(gm).__name__)
        self.weights, self.layer_of, self.val, self.batchy = {}, {}, {}, {}
        for node in gm.graph.nodes:
            self.val[node.name] = self.visit(node)

    # ---- helpers
    def shape(self, node):
        return tuple(node.meta["tensor_meta"].shape[1:])

    def unsupported(self, node, what):
        raise ModelImportError(f"node {node.name!r} ({node.op} {what}) is not supported by "
                            f"archdisc.from_module; supported: {', '.join(SUPPORTED)}")

    def tensor(self, node, i=0):
        """The graph node holding the i-th argument of ``node`` (NCHW or features)."""
        v = self.val[node.args[i].name] if isinstance(node.args[i], torch.fx.Node) else None
        if not isinstance(v, str):
            self.unsupported(node, f"{self.what(node)} reading {node.args[i]}")
        return v

    def what(self, node):
        if node.op == "call_module":
            return f"{node.target}: {type(self.gm.get_submodule(node.target)).__name__}"
        return str(getattr(node.target, "__name__", node.target))

    def store(self, n, tensors: dict):
        for key, t in tensors.items():
            self.weights[f"layers.{n}.{key}"] = t.detach().clone()

    def kwargs(self, node):
        """All arguments of a torch function by name (fx's normalisation)."""
        pair = node.normalized_arguments(self.gm, normalize_to_only_use_kwargs=True)
        if pair is None:
            self.unsupported(node, f"{self.what(node)} with arguments it cannot name")
        return pair.kwargs

    # ---- one traced node
    def visit(self, node):
        g, n = self.g, node.name
        if node.op == "placeholder":  # the input; later ones are left at their defaults
            return g.input(n, self.shape(node)) if "tensor_meta" in node.meta else None
        if node.op == "get_attr":
            t = self.gm
            for part in node.target.split("."):
                t = getattr(t, part)
            return _View("param", extra=t)
        if node.op == "output":
            out = main_output(node.args[0])  # of a dict (Hugging Face's outputs) or a tuple
            node.args = (out,)
            x = self.val[out.name] if isinstance(out, torch.fx.Node) else None
            if isinstance(x, _View) and x.kind == "nld":  # a language model's (N, L, V)
                return g.add_op(n, "output", [x.node], tokens_last=True)
            return g.output(n, self.tensor(node))
        if node.meta.get("type") not in (torch.Tensor, tuple, list) and \
                node.op != "call_module":
            self.sizes(node)
            return None  # a size, an index, arithmetic on them: arguments only
        folded = self.fold(node)
        if folded is not None:
            return folded
        if node.op == "call_module":
            return self.module(node, self.gm.get_submodule(node.target))
        if node.op in ("call_function", "call_method"):
            return self.function(node)
        self.unsupported(node, str(node.target))

    def module(self, node, m):
        x = self.val[node.args[0].name] if node.args else None
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, nn.Dropout) and isinstance(x, _View) and x.kind == "probs":
            return _View("probs", extra={**x.extra, "dropout": m.p})  # the attention's own
        if isinstance(m, nn.Linear) and isinstance(x, _View) and x.kind == "merged":
            return _View("nld", self.merge_heads(node, m, x.extra))
        if isinstance(m, nn.Softmax) and isinstance(x, _View) and x.kind == "scores" and \
                m.dim in (-1, 3):
            return _View("probs", extra=x.extra)
        other = named(m)  # a module of another library, read whole
        if other is not None:
            out = other(self, node, m, x)  # stores its weights
            if out is None:
                self.unsupported(node, f"{self.what(node)} with these options or this input")
            return out
        if isinstance(x, _View) and x.kind in ("nhwc", "nld"):
            return self.channels_last(node, m, x)
        read = MODULES.get(type(m))
        out = read(self, node, m, self.tensor(node)) if read is not None else None
        if out is None:
            self.unsupported(node, self.what(node))
        self.store(node.name, m.state_dict())
        return out

    def channels_last(self, node, m, view):
        """A module applied to a channels-last view (of an image or of tokens): per
        channel, as in NCHW; a Linear on an image's channels is a 1x1 conv."""
        g, n, kind, x = self.g, node.name, type(m), view.node
        if kind is nn.Linear and view.kind == "nhwc":
            self.layer_of[n] = node.target
            self.store(n, {"weight": m.weight[:, :, None, None], **(
                {"bias": m.bias} if m.bias is not None else {})})
            return _View("nhwc", g.conv(n, x, m.out_features, kernel_size=1, padding=0,
                                        bias=m.bias is not None))
        if kind is nn.MultiheadAttention and view.kind == "nld":
            return _View("first", extra=_View("nld", self.attention(node, m, x)))
        if kind not in (nn.LayerNorm, nn.Dropout, nn.Linear) and kind not in ACTS:
            self.unsupported(node, f"{self.what(node)} on a channels-last view")
        out = MODULES[kind](self, node, m, x)
        if out is None:
            self.unsupported(node, self.what(node))
        self.store(n, m.state_dict())
        return _View(view.kind, out)

    def conv(self, node, m, x, qualname=None):
        """A Conv2d module, or ``m``: the arguments of ``F.conv2d`` by name (timm's
        Conv2dSame pads, then calls it with its own weight; ``qualname``: its module)."""
        g, n = self.g, node.name
        if isinstance(m, dict):
            w = m["weight"]
            m = dict(m, in_channels=w.shape[1] * m["groups"], out_channels=w.shape[0],
                     kernel_size=tuple(w.shape[2:]), padding_mode="zeros")
        else:
            m, qualname = vars(m) | {"bias": m.bias}, node.target
        if isinstance(m["padding"], str) or m["padding_mode"] != "zeros":
            self.unsupported(node, f"{self.what(node)} with padding {m['padding']!r} / "
                                   f"padding_mode {m['padding_mode']!r}")
        sizes = {k: size(m[k]) for k in ("kernel_size", "stride", "padding", "dilation")}
        bias, groups = m["bias"] is not None, m["groups"]
        if groups > 1 and groups == m["in_channels"] == m["out_channels"]:
            return g.add_op(n, "dwconv2d", [x], bias=bias, **sizes)
        self.layer_of[n] = qualname
        return g.add_op(n, "conv2d", [x], units=m["out_channels"], groups=groups,
                        bias=bias, searchable=groups == 1, **sizes)

    def functional_weights(self, node, names, what):
        """The arguments of ``F.linear`` / ``F.conv2d`` by name (``names``: their order),
        and its weight and bias, which must be parameters (stored)."""
        a = {"bias": None, **dict(zip(names, node.args)), **node.kwargs}
        w, b = (self.val[a[k].name] if isinstance(a[k], torch.fx.Node) else a[k]
                for k in ("weight", "bias"))
        if not isinstance(w, _View) or w.kind != "param" or not (
                b is None or isinstance(b, _View) and b.kind == "param"):
            self.unsupported(node, f"{what} with a weight or bias that is not a parameter")
        self.store(node.name, {"weight": w.extra, **({"bias": b.extra} if b else {})})
        return a, w.extra, b

    def functional_conv(self, node, x):
        """``F.conv2d(x, weight, bias, ...)`` with parameters: a conv node."""
        a, w, b = self.functional_weights(node, ("input", "weight", "bias", "stride", "padding",
                                                 "dilation", "groups"), "conv2d")
        if a["weight"].op != "get_attr":
            self.unsupported(node, "conv2d with a weight computed in forward (weight "
                                   "standardisation, weight norm)")
        return self.conv(node, {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **a,
                                "weight": w, "bias": b}, x, a["weight"].target.rsplit(".", 1)[0])

    def pool(self, node, op, x, a):
        if a.get("dilation") not in (None, 1, (1, 1)) or a.get("divisor_override") \
                or a.get("return_indices"):
            self.unsupported(node, f"{self.what(node)} with dilation / divisor_override / "
                                   f"return_indices")
        k = size(a["kernel_size"])
        extra = {"count_include_pad": bool(a.get("count_include_pad", True))} \
            if op == "avgpool2d" else {}
        return self.g.add_op(node.name, op, [x], kernel_size=k,
                             stride=size(a["stride"] if a["stride"] else k),
                             padding=size(a["padding"]), ceil_mode=bool(a["ceil_mode"]), **extra)

    def layernorm(self, node, src, shape, weight, bias, eps):
        """A LayerNorm over the channels: of a channels-last view, or of features."""
        c = self.shape(node)[-1]
        if weight is not None:  # what torch checked: the same as normalized_shape
            shape = weight.shape
        if tuple(shape) != (c,) or (src == self.val[node.args[0].name]
                                    and len(self.shape(node)) != 1):
            self.unsupported(node, f"{self.what(node)} over {tuple(shape)}: only over the "
                                   f"channels ({c},)")
        self.store(node.name, {"weight": weight if weight is not None else torch.ones(c),
                               "bias": bias if bias is not None else torch.zeros(c)})
        return self.g.add_op(node.name, "layernorm", [src], eps=float(eps))

    def groupnorm(self, node, x, groups, weight, bias, eps):
        c = self.shape(node)[0]
        self.store(node.name, {"weight": weight if weight is not None else torch.ones(c),
                               "bias": bias if bias is not None else torch.zeros(c)})
        return self.g.add_op(node.name, "groupnorm", [x], groups=int(groups), eps=float(eps))

    def linear(self, node, x):
        """``F.linear(x, weight, bias)`` with parameters (timm's Linear): a linear node."""
        a, w, b = self.functional_weights(node, ("input", "weight", "bias"), "linear")
        wn = a["weight"]  # the Linear module's name, as a searchable layer
        self.layer_of[node.name] = wn.target.rsplit(".", 1)[0] if wn.op == "get_attr" \
            else node.name
        out = self.g.linear(node.name, getattr(x, "node", x), w.shape[0], bias=b is not None)
        return _View("nld", out) if isinstance(x, _View) else out

    def batchnorm(self, node):
        """``F.batch_norm`` with running statistics (in eval mode, as traced)."""
        a = self.kwargs(node)
        t = {k: self.val[a[k].name].extra if isinstance(a[k], torch.fx.Node) else a[k]
             for k in ("running_mean", "running_var", "weight", "bias")}
        if a["training"] or t["running_mean"] is None or t["running_var"] is None:
            self.unsupported(node, "batch_norm with batch statistics (no running statistics)")
        c = self.shape(node)[0]
        self.store(node.name, {"weight": t["weight"] if t["weight"] is not None else
                               torch.ones(c), "bias": t["bias"] if t["bias"] is not None else
                               torch.zeros(c), "running_mean": t["running_mean"],
                               "running_var": t["running_var"],
                               "num_batches_tracked": torch.tensor(0)})
        op = "batchnorm2d" if len(self.shape(node)) == 3 else "batchnorm1d"
        return self.g.add_op(node.name, op, [self.tensor(node)], eps=float(a["eps"]),
                             momentum=float(a["momentum"] or 0.1))

    def select(self, n, x, channels, width):
        """Channels ``channels`` of node ``x`` (of ``width`` channels)."""
        if torch.equal(channels, torch.arange(width)):
            return x  # the identity: no node
        return self.g.add_op(n, "select", [x], channels=channels.tolist())

    def unchanged(self, node, t, name) -> bool:
        """Whether a call gives its input as it is: ``contiguous``, ``clone``, ``.to`` its own
        dtype, a view to its own shape."""
        if t in ("contiguous", "clone") or t is torch.clone:
            return True
        src = node.args[0].meta.get("tensor_meta") if node.args and isinstance(
            node.args[0], torch.fx.Node) else None
        if src is None or "tensor_meta" not in node.meta:
            return False
        if t == "to":
            return node.meta["tensor_meta"].dtype == src.dtype
        return name in ("view", "reshape") and self.shape(node) == tuple(src.shape[1:])

    def function(self, node):
        g, n, t, args = self.g, node.name, node.target, node.args
        name = getattr(t, "__name__", t)
        vals = [self.val[a.name] if isinstance(a, torch.fx.Node) else a for a in args]
        x = vals[0] if vals else None
        # ---- views: channels-last, pieces, channel shuffle
        if self.unchanged(node, t, name):
            return x
        if t is torch.cat and isinstance(args[0], (list, tuple)):  # a cache's empty start
            parts = [self.val[a.name] for a in args[0] if not (isinstance(
                self.val[a.name], _View) and self.val[a.name].kind in ("param", "bconst")
                and self.val[a.name].extra.numel() == 0)]
            if len(parts) == 1:
                return parts[0]
        out = self.transformer(node, vals)
        if out is not None:
            return out
        if t is torch.cat and isinstance(args[0], (list, tuple)) and any(
                isinstance(self.val[a.name], _View) and self.val[a.name].kind == "nld"
                for a in args[0]):
            return self.prepend(node, [self.val[a.name] for a in args[0]])
        if name == "permute":
            dims = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) \
                else list(args[1:]) or list(node.kwargs.get("dims", []))
            if isinstance(x, str) and len(self.shape(node)) == 3 and dims == [0, 2, 3, 1]:
                return _View("nhwc", x)
            if isinstance(x, _View) and x.kind == "nhwc" and dims == [0, 3, 1, 2]:
                return x.node
            if isinstance(x, str) and len(self.shape(node)) == 2 and dims == [0, 2, 1]:
                return _View("nld", x)
            self.unsupported(node, f"permute {dims} (only NCHW -> NHWC and back)")
        if t in (torch.mean, "mean") and isinstance(x, _View) and x.kind == "nhwc" and \
                mean_dims(node) == ((1, 2), False):
            return g.add_op(n, "gap", [x.node])  # channels-last global average (timm)
        if name in ("view", "reshape") and isinstance(x, _View) and x.kind == "nhwc" and \
                len(self.shape(node)) in (2, 3) and self.shape(node)[-1] == \
                self.shape(node.args[0])[-1] and math.prod(self.shape(node)) == \
                math.prod(self.shape(node.args[0])):  # positions flattened or back (timm's
            return x  # Swin blocks): the per-position ops that follow read it unchanged
        if name in ("chunk", "split"):
            dim = node.kwargs.get("dim", args[2] if len(args) > 2 else 0)
            if not isinstance(x, str) or dim != 1:
                self.unsupported(node, f"{name} along dim {dim} (only along the channels)")
            sizes = [m.shape[1] for m in node.meta["tensor_meta"]]
            return _View("pieces", x, [sum(sizes[:i]) for i in range(len(sizes) + 1)])
        if t is operator.getitem and isinstance(x, _View) and x.kind == "pieces":
            i = args[1] % (len(x.extra) - 1)  # spx[-1]: the last piece (Res2Net)
            lo, hi = x.extra[i], x.extra[i + 1]
            return self.select(n, x.node, torch.arange(lo, hi), x.extra[-1])
        if t is operator.getitem and isinstance(x, str) and _channel_slice(args[1]):
            c = self.shape(node.args[0])[0]
            return self.select(n, x, torch.arange(c)[args[1][1]], c)
        if name in ("view", "reshape", "flatten") and isinstance(x, str):
            s0, s1 = self.shape(node.args[0]), self.shape(node)
            if len(s0) == 3 and s1 == (s0[0], s0[1] * s0[2]):
                return g.add_op(n, "tokens", [x])
            if len(s0) == 3 and len(s1) == 4 and s1[0] * s1[1] == s0[0] and s1[2:] == s0[1:]:
                return _View("grouped", x, torch.arange(s0[0]).view(s1[0], s1[1]))
        if name == "transpose" and isinstance(x, str) and len(self.shape(node)) == 2 and \
                sorted(args[1:3]) in ([1, 2], [-2, -1]):
            return _View("nld", x)
        if name == "transpose" and isinstance(x, _View) and x.kind == "grouped" and \
                sorted(args[1:3]) == [1, 2]:
            return _View("grouped", x.node, x.extra.t())
        if name in ("view", "reshape", "flatten") and isinstance(x, _View) and \
                x.kind == "grouped" and len(self.shape(node)) == 3:
            return self.select(n, x.node, x.extra.reshape(-1), x.extra.numel())
        if name == "group_norm" and isinstance(x, str):  # timm's GroupNorm1
            a = self.kwargs(node)
            w, b = (self.val[a[k].name].extra if isinstance(a[k], torch.fx.Node) else a[k]
                    for k in ("weight", "bias"))
            return self.groupnorm(node, x, a["num_groups"], w, b, a["eps"])
        if name == "batch_norm" and isinstance(x, str):  # timm's BatchNormAct2d
            return self.batchnorm(node)
        if t is F.conv2d and isinstance(x, str):
            return self.functional_conv(node, x)
        if t is F.linear and (isinstance(x, str) or (isinstance(x, _View) and x.kind == "nld")):
            return self.linear(node, x)
        if name == "layer_norm" and isinstance(x, (str, _View)):
            a = self.kwargs(node)
            w, b = (self.val[a[k].name].extra if isinstance(a[k], torch.fx.Node) else a[k]
                    for k in ("weight", "bias"))
            last = isinstance(x, _View) and x.kind in ("nhwc", "nld")
            src = x.node if last else self.tensor(node)
            self.layernorm(node, src, a["normalized_shape"], w, b, a["eps"])
            return _View(x.kind, n) if last else n
        if isinstance(x, _View) and x.kind in ("nhwc", "nld") and (
                t in _ACT_FUNCTIONS or t in ("relu", "sigmoid", "tanh")):
            return _View(x.kind, g.act(n, x.node, _ACT_FUNCTIONS.get(t, t)))
        numbers = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(vals) == 2 and len(numbers) == 1 and not node.kwargs and (t in _MUL or (
                t in (operator.truediv, torch.div, "div") and vals[1] is numbers[0]
                and numbers[0] != 0)):
            factor = float(numbers[0]) if t in _MUL else 1.0 / numbers[0]
            return g.add_op(n, "mulconst", [self.tensor(node, vals.index(numbers[0]) ^ 1)],
                            factor=factor)
        # ---- two tensors
        if t in _MUL and len(vals) == 2 and not node.kwargs:
            return self.mul(node, vals)
        ins = [v for v in vals if isinstance(v, str)]
        if any(isinstance(self.val[a.name], _View) for a in node.all_input_nodes):
            self.unsupported(node, f"{name} reading a view "
                                   f"({', '.join(str(a) for a in node.all_input_nodes)})")
        if t in _ADD and len(ins) == 2 and not node.kwargs:
            if self.shape(node.all_input_nodes[0]) != self.shape(node.all_input_nodes[1]):
                self.unsupported(node, "add of tensors of different shapes (broadcasting)")
            return g.add_op(n, "add", ins, units=self.shape(node)[0])
        if t in _SUB and len(ins) == 2 and not node.kwargs and \
                self.shape(node.all_input_nodes[0]) == self.shape(node.all_input_nodes[1]):
            negated = g.add_op(f"{n}_negated", "mulconst", [ins[1]], factor=-1.0)
            return g.add_op(n, "add", [ins[0], negated], units=self.shape(node)[0])
        if t is torch.cat and (args[1:] == (1,) or node.kwargs.get("dim") == 1):
            return g.add_op(n, "concat", [self.val[a.name] for a in node.all_input_nodes])
        x = self.tensor(node)
        # ---- one tensor
        if t in _ACT_FUNCTIONS or t in ("relu", "sigmoid", "tanh"):
            return g.act(n, x, _ACT_FUNCTIONS.get(t, t))
        if t in _POOL_FUNCTIONS:
            a = self.kwargs(node)
            if _POOL_FUNCTIONS[t].startswith("adaptive"):
                return g.add_op(n, _POOL_FUNCTIONS[t], [x],
                                output_size=size(self.shape(node)[1:]))
            return self.pool(node, _POOL_FUNCTIONS[t], x, a)
        if t is F.pad and isinstance(x, str) and len(self.shape(node)) == 3:
            a = self.kwargs(node)
            if any(v.name in self.batchy for v in node.all_input_nodes):
                self.unsupported(node, "pad by an amount computed from the batch size")
            pads = list(torch.fx.node.map_arg(a["pad"], lambda v: v.meta["value"]))
            if a.get("mode", "constant") != "constant" or a.get("value") not in (None, 0) or \
                    len(pads) not in (2, 4) or min(pads) < 0:
                self.unsupported(node, f"pad {pads} mode {a.get('mode')!r} value "
                                       f"{a.get('value')!r}: only zeros around the image")
            pads += [0] * (4 - len(pads))
            return g.add_op(n, "pad2d", [x], pads=pads) if any(pads) else x
        if t is F.dropout:
            return g.add_op(n, "dropout", [x], p=self.kwargs(node)["p"])
        if name == "stochastic_depth" and getattr(t, "__module__", "").startswith("torchvision"):
            return g.add_op(n, "stochastic_depth", [x], p=float(args[1]), mode=args[2])
        if t in (torch.mean, "mean"):
            dim, keep = mean_dims(node)
            if dim in ((2, 3), (-2, -1)) and len(self.shape(node.args[0])) == 3:
                if keep:
                    return g.add_op(n, "adaptive_avgpool2d", [x], output_size=1)
                return g.add_op(n, "gap", [x])
        flat = (t in (torch.flatten, "flatten") and (args[1:] == (1,) or node.kwargs == {
            "start_dim": 1})) or (t in ("view", "reshape") and len(self.shape(node)) == 1)
        if flat:
            return g.add_op(n, "flatten", [x])
        self.unsupported(node, str(name))

    def mul(self, node, vals):
        """``x * gate`` (both tensors with the same channels; a (C, 1, 1) gate broadcasts)
        or ``gamma * x`` / ``x * gamma`` with a parameter of C entries (a layer scale)."""
        g, n = self.g, node.name
        params = [v for v in vals if isinstance(v, _View) and v.kind == "param"]
        if len(params) == 1:
            i = 1 if vals[0] is params[0] else 0
            view, gamma = vals[i], params[0].extra
            if isinstance(view, _View) and view.kind in ("nhwc", "nld") and \
                    gamma.numel() == gamma.shape[-1] == self.shape(node)[-1]:
                self.store(n, {"weight": gamma.reshape(-1)})  # channels last: per channel
                return _View(view.kind, g.add_op(n, "scale", [view.node]))
            x = self.tensor(node, i)
            c = self.shape(node.args[i])[0]
            if gamma.dim() == len(self.shape(node)) + 1 and gamma.shape[0] == 1:
                gamma = gamma[0]  # (1, C, 1, 1): the batch dim
            if gamma.numel() != c or gamma.dim() > len(self.shape(node)) or \
                    (gamma.dim() > 1 and gamma.shape[0] != c):
                self.unsupported(node, f"mul by a parameter of shape {tuple(gamma.shape)}: "
                                       f"only one entry per channel ({c})")
            self.store(n, {"weight": gamma.reshape(-1)})
            return g.add_op(n, "scale", [x])
        if all(isinstance(v, _View) and v.kind in ("nhwc", "nld") for v in vals) and \
                vals[0].kind == vals[1].kind and vals[0].node != vals[1].node:  # a gated MLP
            return _View(vals[0].kind, g.add_op(n, "mul", [vals[0].node, vals[1].node]))
        x, y = self.tensor(node, 0), self.tensor(node, 1)
        if x == y:
            self.unsupported(node, "mul of a tensor with itself")
        return g.add_op(n, "mul", [x, y])
