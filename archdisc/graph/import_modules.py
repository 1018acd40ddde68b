"""The fx importer's table: a torch module type -> the op it is read as (and the list of
what is supported, for the error naming an unsupported node)."""
from __future__ import annotations

import types

import torch
from torch import nn

from archdisc.graph import import_timm
from archdisc.graph.import_transformer import View
from archdisc.graph.modules import ACTIVATIONS

qualified = import_timm.qualified
ACTS = {cls: name for name, (_, cls, _) in ACTIVATIONS.items() if cls is not None}


def size(v):
    """An int for a square size, else [height, width] (JSON-friendly)."""
    v = (v, v) if isinstance(v, int) else tuple(v)
    return v[0] if v[0] == v[1] else list(v)


def _embedding(imp, node, m, x):
    if m.max_norm is None and len(imp.shape(node)) == 2:
        n = imp.g.add_op(node.name, "embed", [x], units=m.embedding_dim, vocab=m.num_embeddings)
        return View("nld", n)


def _linear(imp, node, m, x):
    if isinstance(imp.val[node.args[0].name], str) and len(imp.shape(node.args[0])) == 2:
        # (N, D, L) tokens as torch holds them (not a view): a map across the tokens
        return imp.g.add_op(node.name, "token_mix", [x], tokens=m.out_features,
                            tokens_in=m.in_features, bias=m.bias is not None)
    imp.layer_of[node.name] = node.target
    return imp.g.linear(node.name, x, m.out_features, bias=m.bias is not None)


def _batchnorm(imp, node, m, x):
    if m.affine and m.track_running_stats:
        op = "batchnorm2d" if isinstance(m, nn.BatchNorm2d) else "batchnorm1d"
        return imp.g.add_op(node.name, op, [x], eps=m.eps, momentum=m.momentum or 0.1)


def _activation(imp, node, m, x):
    if isinstance(m, nn.GELU):
        return imp.g.act(node.name, x, {"none": "gelu", "tanh": "gelu_tanh"}[m.approximate])
    return imp.g.act(node.name, x, ACTS[type(m)])


def _pool(imp, node, m, x):
    return imp.pool(node, "maxpool2d" if isinstance(m, nn.MaxPool2d) else "avgpool2d", x,
                    {k: getattr(m, k, None) for k in (
                        "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                        "count_include_pad", "divisor_override")})


def _adaptive_pool(imp, node, m, x):
    op = "adaptive_avgpool2d" if isinstance(m, nn.AdaptiveAvgPool2d) else "adaptive_maxpool2d"
    return imp.g.add_op(node.name, op, [x], output_size=size(imp.shape(node)[1:]))


def _channel_shuffle(imp, node, m, x):
    c = imp.shape(node)[0]
    return imp.select(node.name, x, torch.arange(c).view(m.groups, -1).t().reshape(-1), c)


def _upsample(imp, node, m, x):
    (_, h, w), (_, oh, ow) = imp.shape(node.args[0]), imp.shape(node)
    if m.mode == "nearest" and oh % h == 0 and oh // h == ow / w:
        return imp.g.add_op(node.name, "upsample", [x], scale=oh // h)


# A module type -> how it is imported: (importer, fx node, module, input graph node) -> the
# new graph node, or None when this module's settings are not supported.
MODULES = {
    nn.Linear: _linear,
    nn.Conv2d: lambda imp, node, m, x: imp.conv(node, m, x),
    nn.BatchNorm2d: _batchnorm, nn.BatchNorm1d: _batchnorm,
    **{cls: _activation for cls in ACTS},
    nn.LeakyReLU: lambda imp, node, m, x: (imp.g.act(node.name, x, "leaky_relu")
                                           if m.negative_slope == 0.01 else None),
    nn.MaxPool2d: _pool, nn.AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: _adaptive_pool, nn.AdaptiveMaxPool2d: _adaptive_pool,
    nn.Flatten: lambda imp, node, m, x: (imp.g.add_op(node.name, "flatten", [x])
                                         if (m.start_dim, m.end_dim) == (1, -1) else None),
    nn.Dropout: lambda imp, node, m, x: imp.g.add_op(node.name, "dropout", [x], p=m.p),
    nn.LayerNorm: lambda imp, node, m, x: imp.layernorm(node, x, m.normalized_shape, m.weight,
                                                        m.bias, m.eps),
    nn.GroupNorm: lambda imp, node, m, x: imp.groupnorm(node, x, m.num_groups, m.weight, m.bias,
                                                        m.eps),
    nn.ChannelShuffle: _channel_shuffle,
    nn.Upsample: _upsample,
    nn.Embedding: _embedding,
}
def per_unit(imp, node, x, kinds, build):
    """``build(graph node)`` on ``x``: a plain node of features, or a view of one of
    ``kinds`` (tokens, channels last), the result wrapped back into that view; None for
    another input."""
    if isinstance(x, View) and x.kind in kinds:
        return View(x.kind, build(x.node))
    if isinstance(x, str) and (len(imp.shape(node.args[0])) == 1 or "nchw" in kinds):
        return build(x)


def _grn(imp, node, m, x):
    last = isinstance(x, View) and x.kind == "nhwc"
    if m.channel_dim == (-1 if last else 1):
        imp.store(node.name, m.state_dict())
        return per_unit(imp, node, x, ("nhwc", "nchw"), lambda v: imp.g.add_op(
            node.name, "grn", [v], count=m.weight.numel(), eps=float(m.eps)))


def _conv1d(imp, node, m, x):
    """Hugging Face's Conv1D (GPT-2's): a Linear whose weight is stored transposed."""
    linear = types.SimpleNamespace(weight=m.weight.t(), bias=m.bias, out_features=m.nf)
    if isinstance(x, View) and x.kind == "merged":  # the output projection of attention
        return View("nld", imp.merge_heads(node, linear, x.extra))
    imp.layer_of[node.name] = node.target
    imp.store(node.name, {"weight": linear.weight, "bias": m.bias})
    return per_unit(imp, node, x, ("nld",), lambda v: imp.g.linear(node.name, v, m.nf))


def _rmsnorm(imp, node, m, x):
    """Hugging Face's RMS norms (Llama's): over the features of tokens."""
    imp.store(node.name, {"weight": m.weight})
    return per_unit(imp, node, x, ("nld",), lambda v: imp.g.add_op(
        node.name, "rmsnorm", [v], eps=float(m.variance_epsilon)))


def _gelu_tanh(imp, node, m, x):  # Hugging Face's NewGELUActivation: the tanh formula
    return per_unit(imp, node, x, ("nld", "nhwc", "nchw"),
                    lambda v: imp.g.act(node.name, v, "gelu_tanh"))


def named(m):
    """The reader of a module of another library, or None."""
    name = qualified(m)
    if name.startswith("transformers.models.") and name.endswith("RMSNorm") and \
            hasattr(m, "variance_epsilon") and "weight" in m._parameters:
        return _rmsnorm  # (_parameters: while tracing, m.weight is a proxy)
    return NAMED.get(name)


# modules of other libraries, by their class's qualified name, read whole (traced as
# leaves); ``x`` may be a view (channels-last)
NAMED = {"timm.layers.grn.GlobalResponseNorm": _grn, "transformers.pytorch_utils.Conv1D": _conv1d,
         "transformers.activations.NewGELUActivation": _gelu_tanh,
         **import_timm.HANDLERS}


SUPPORTED = sorted(c.__name__ for c in MODULES if c not in (nn.LeakyReLU, nn.Upsample)) + [
    "Upsample(mode='nearest', integer scale)", "timm's GlobalResponseNorm",
    "F.pad with zeros", "F.conv2d with a module's weight", "a - b",
    "LeakyReLU(0.01)", "Conv2d with groups (depthwise or grouped), dilation, non-square "
    "kernels", "+ / torch.add", "* (a squeeze-excitation gate, a layer scale)",
    "torch.cat(dim=1)", "chunk / split(dim=1)", "torch.flatten(x, 1)", "x.view(x.size(0), -1)",
    "x.mean((2, 3))", "the functional forms of the activations and pools",
    "permute to channels-last and back around LayerNorm / Linear",
    "channel shuffle (view, transpose(1, 2), view)", "torchvision's stochastic_depth",
    "tokens: x.flatten(2).transpose(1, 2), class tokens by torch.cat, + a position "
    "embedding, x[:, i], MultiheadAttention(x, x, x) with batch_first=True",
    "attention written out: q / k / v Linears split into heads, scaled_dot_product_attention "
    "or softmax(q @ k^T * scale) @ v without masks, the heads merged by a Linear"]
