"""from_module: a user's ``nn.Module`` -> an ArchNet supernet (torch.fx).

The module is traced with ``torch.fx.symbolic_trace``; every call is mapped to an op of
the registry (:mod:`archdisc.ops`), the weights are copied, and the compiled ArchNet is
checked to compute the module's eval-mode function on the example input. ``nn.ReLU``
becomes archdisc's ReLU, whose gradient at exactly 0 is 1, so that dead units can switch
on again under Bregman iterations (forward and eval are unchanged).
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from .compile import ArchNet, compile_graph
from .errors import ArchdiscError
from .graph import ArchGraph

__all__ = ["from_module"]

_ACTS = {nn.ReLU: "relu", nn.GELU: "gelu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
         nn.Identity: "identity", nn.ReLU6: "relu6", nn.SiLU: "silu",
         nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid"}
F = nn.functional
_ACT_FUNCTIONS = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh",
                  torch.sigmoid: "sigmoid", F.gelu: "gelu", F.relu6: "relu6",
                  F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid"}
SUPPORTED = sorted([c.__name__ for c in (*_ACTS, nn.Linear, nn.Conv2d, nn.BatchNorm2d,
                                         nn.BatchNorm1d, nn.MaxPool2d, nn.AvgPool2d,
                                         nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)]
                   + ["LeakyReLU(0.01)", "+ / torch.add", "torch.cat(dim=1)",
                      "torch.flatten(x, 1)", "x.view(x.size(0), -1)", "x.mean((2, 3))",
                      "the functional forms of the activations"])


def from_module(module: nn.Module, example_input: torch.Tensor, *,
                searchable=None, atol: float = 1e-5) -> ArchNet:
    """The ArchNet computing ``module``'s function, with its weights.

    ``example_input`` is one batch (N, ...). ``searchable`` names the linear / conv
    submodules (by their qualified name, e.g. ``"layer1.0.conv1"``) whose units the search
    may switch off; default: all of them except those producing the model's output.
    Raises ArchdiscError for an op that is not supported (naming the node) or a module
    torch.fx cannot trace."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; report its reason
        raise ArchdiscError(
            f"torch.fx cannot trace {type(module).__name__}: {e}. Data-dependent control "
            f"flow (if / for on tensor values) cannot be traced; move it out of forward or "
            f"wrap it in a leaf module") from None
    from torch.fx.passes.shape_prop import ShapeProp
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as e:  # noqa: BLE001 - the user's module failed on the input
        raise ArchdiscError(f"{type(module).__name__} fails on example_input of shape "
                            f"{list(example_input.shape)}: {e.__cause__ or e}") from None
    g, weights, layer_of = _build(gm)
    chosen = _searchable(g, layer_of, searchable)
    for n, qualname in layer_of.items():
        g.nodes[n]["searchable"] = qualname in chosen
    net = compile_graph(g.validate(), weights)
    net.eval()
    with torch.no_grad():
        want, got = module(example_input), net(example_input)
    diff = float((want - got).abs().max())
    if not diff <= atol * max(1.0, float(want.abs().max())):
        raise ArchdiscError(f"the imported graph differs from {type(module).__name__} by "
                            f"{diff:.3g} on the example input; this is a bug in archdisc.fx")
    module.train(was_training)
    return net


def _build(gm):
    g, weights, name_of, layer_of = ArchGraph(name=type(gm).__name__), {}, {}, {}

    def shape(node):
        return tuple(node.meta["tensor_meta"].shape[1:])

    def unsupported(node, what):
        raise ArchdiscError(f"node {node.name!r} ({node.op} {what}) is not supported by "
                            f"archdisc.from_module; supported: {', '.join(SUPPORTED)}")

    def pair(v, node, key):
        v = (v, v) if isinstance(v, int) else tuple(v)
        if v[0] != v[1]:
            unsupported(node, f"with non-square {key} {v}")
        return v[0]

    for node in gm.graph.nodes:
        n = node.name
        ins = [name_of[a.name] for a in node.all_input_nodes]
        if node.op == "placeholder":
            name_of[n] = g.input(n, shape(node))
            continue
        if node.op == "output":
            name_of[n] = g.output(n, ins[0])
            continue
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            kind = type(m)
            if kind is nn.Linear:
                name_of[n] = g.linear(n, ins[0], m.out_features, bias=m.bias is not None)
                layer_of[n] = node.target
            elif kind is nn.Conv2d:
                if m.groups != 1 or pair(m.dilation, node, "dilation") != 1 or \
                        isinstance(m.padding, str) or m.padding_mode != "zeros":
                    unsupported(node, "Conv2d with groups, dilation or string padding")
                name_of[n] = g.conv(n, ins[0], m.out_channels,
                                    kernel_size=pair(m.kernel_size, node, "kernel_size"),
                                    stride=pair(m.stride, node, "stride"),
                                    padding=pair(m.padding, node, "padding"),
                                    bias=m.bias is not None)
                layer_of[n] = node.target
            elif kind is nn.BatchNorm2d and m.affine and m.track_running_stats:
                name_of[n] = g.bn(n, ins[0], eps=m.eps, momentum=m.momentum or 0.1)
            elif kind in _ACTS and not (kind is nn.GELU and m.approximate != "none"):
                name_of[n] = g.act(n, ins[0], _ACTS[kind])
            elif kind is nn.LeakyReLU and m.negative_slope == 0.01:
                name_of[n] = g.act(n, ins[0], "leaky_relu")
            elif kind is nn.BatchNorm1d and m.affine and m.track_running_stats:
                name_of[n] = g.add_op(n, "batchnorm1d", ins, eps=m.eps,
                                      momentum=m.momentum or 0.1)
            elif kind in (nn.MaxPool2d, nn.AvgPool2d):
                if m.ceil_mode or (kind is nn.MaxPool2d and pair(m.dilation, node, "dilation")
                                   != 1) or (kind is nn.AvgPool2d and (
                                       not m.count_include_pad or m.divisor_override)):
                    unsupported(node, f"{kind.__name__} with ceil_mode / dilation / "
                                      f"count_include_pad=False")
                k = pair(m.kernel_size, node, "kernel_size")
                name_of[n] = g.add_op(n, "maxpool2d" if kind is nn.MaxPool2d else "avgpool2d",
                                      ins, kernel_size=k,
                                      stride=pair(m.stride if m.stride else k, node, "stride"),
                                      padding=pair(m.padding, node, "padding"))
            elif kind is nn.AdaptiveAvgPool2d and pair(m.output_size, node, "size") == 1:
                name_of[n] = g.add_op(n, "gap", ins)
            elif kind is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
                name_of[n] = g.add_op(n, "flatten", ins)
            elif kind is nn.Dropout:
                name_of[n] = g.add_op(n, "dropout", ins, p=m.p)
            else:
                unsupported(node, f"{node.target}: {kind.__name__}")
            for key, t in m.state_dict().items():
                weights[f"layers.{n}.{key}"] = t.detach().clone()
        elif node.op == "call_method" and node.target == "size":
            name_of[n] = None  # only an argument of view / reshape: no node of its own
        elif node.op in ("call_function", "call_method"):
            name_of[n] = _function(g, node, [i for i in ins if i is not None], shape,
                                   unsupported)
        else:
            unsupported(node, str(node.target))
    return g, weights, layer_of


def _function(g, node, ins, shape, unsupported):
    n, t, args = node.name, node.target, node.args
    if t in (operator.add, torch.add, "add") and len(ins) == 2 and not node.kwargs:
        if shape(node.all_input_nodes[0]) != shape(node.all_input_nodes[1]):
            unsupported(node, "add of tensors of different shapes (broadcasting)")
        return g.add_op(n, "add", ins, units=shape(node)[0])
    if t in _ACT_FUNCTIONS or t in ("relu", "sigmoid", "tanh"):
        return g.act(n, ins[0], _ACT_FUNCTIONS.get(t, t))
    if t in (torch.mean, "mean") and (args[1:2] in (((2, 3),), ([2, 3],)) or node.kwargs.get(
            "dim") in ((2, 3), [2, 3])) and not node.kwargs.get("keepdim", False):
        return g.add_op(n, "gap", ins)
    if t is torch.cat and (args[1:] == (1,) or node.kwargs.get("dim") == 1):
        return g.add_op(n, "concat", ins)
    flat = (t in (torch.flatten, "flatten") and (args[1:] == (1,) or node.kwargs == {
        "start_dim": 1})) or (t in ("view", "reshape") and len(shape(node)) == 1)
    if flat:
        return g.add_op(n, "flatten", ins)
    unsupported(node, str(getattr(t, "__name__", t)))


def _searchable(g: ArchGraph, layer_of: dict, searchable) -> set:
    """Qualified names of the searchable layers: as given, or every layer except those
    whose output reaches an output node without passing another layer."""
    if searchable is not None:
        chosen = set(searchable)
        unknown = chosen - set(layer_of.values())
        if unknown:
            raise ArchdiscError(f"searchable: {sorted(unknown)} are not linear / conv "
                                f"submodules; choose from {sorted(layer_of.values())}")
        return chosen
    last, todo = set(), list(g.output_nodes())
    seen = set()
    while todo:
        n = todo.pop()
        for p in g.predecessors(n):
            if p in seen:
                continue
            seen.add(p)
            if p in layer_of:
                last.add(p)
            else:
                todo.append(p)
    return {q for n, q in layer_of.items() if n not in last}
