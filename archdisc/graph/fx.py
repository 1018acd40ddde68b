"""from_module: a user's ``nn.Module`` -> an ArchNet supernet (torch.fx).

The importer itself is :mod:`archdisc.graph.importer`.
"""
from __future__ import annotations

import functools
import inspect
import sys
import warnings

import torch
from torch import nn
from torch.fx.node import map_arg
from torch.fx.passes.shape_prop import ShapeProp

from archdisc.errors import ModelImportError
from archdisc.graph.archgraph import ArchGraph, gate_blocks
from archdisc.graph.compile import ArchNet, compile_graph, gate_name
from archdisc.graph.import_modules import named
from archdisc.graph.import_timm import leaf_blocks
from archdisc.graph.importer import Importer, main_output
from archdisc.graph.ops import OPS

__all__ = ["from_module"]


def from_module(module: nn.Module, example_input: torch.Tensor, *,
                searchable=None, depth: bool | None = False, atol: float = 1e-5) -> ArchNet:
    """The ArchNet computing ``module``'s function, with its weights.

    ``example_input`` is one batch (N, ...). ``searchable`` names the linear / conv
    submodules (by their qualified name, e.g. ``"layer1.0.conv1"``) whose units the search
    may switch off; default: all of them except those producing the model's output,
    grouped convs (their units are kept all or none) and those writing into a stream that a
    layer norm reads (a transformer's). An attention module's heads are its units; a
    depthwise conv is not a searchable
    layer: its channels follow the layer feeding it. ``depth``: a scalar gate (at 1) on the
    branch of every residual block ``x + f(x)`` (:func:`~archdisc.graph.archgraph.gate_blocks`),
    so that the search can remove blocks whole; None: only when the model has no attention
    layer (gated attention blocks lost on a ViT, RESULTS.md 14).
    Raises ModelImportError for an op that is not supported (naming the node) or a module
    torch.fx cannot trace."""
    was_training = module.training
    module.eval()  # traced in eval mode: a `self.training` branch is read when tracing
    try:
        return _import(module, example_input, searchable, depth, atol)
    finally:
        module.train(was_training)


def _import(module, example_input, searchable, depth, atol) -> ArchNet:
    first, *later = inspect.signature(module.forward).parameters.values()
    try:  # forward's later arguments (a mask, a flag) are traced at their defaults
        if type(module).__module__.startswith("transformers."):  # Hugging Face's model
            try:
                gm = _trace_called(module, example_input)
            except Exception as ours:  # noqa: BLE001 - then with Hugging Face's own tracer
                from transformers.utils.fx import symbolic_trace as hf_trace
                try:
                    gm = hf_trace(module, input_names=[first.name])
                except Exception as theirs:  # noqa: BLE001
                    raise RuntimeError(f"{ours} (and with Hugging Face's tracer: {theirs})") \
                        from None
        else:
            tracer = _Tracer(example_input)
            with leaf_blocks(module):
                graph = tracer.trace(module, concrete_args={
                    p.name: p.default for p in later if p.default is not p.empty} or None)
                gm = torch.fx.GraphModule(tracer.root, graph, type(module).__name__)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; report its reason
        raise ModelImportError(
            f"torch.fx cannot trace {type(module).__name__}: {e}. Data-dependent control "
            f"flow (if / for on tensor values) cannot be traced; move it out of forward or "
            f"wrap it in a leaf module") from None
    gm.graph.eliminate_dead_code()
    try:
        with torch.no_grad():
            _Values(gm.eval()).propagate(example_input)
    except Exception as e:  # noqa: BLE001 - the user's module failed on the input
        raise ModelImportError(f"{type(module).__name__} fails on example_input of shape "
                            f"{list(example_input.shape)}: {e.__cause__ or e}") from None
    imp = Importer(gm)
    g, weights, layer_of = imp.g, imp.weights, imp.layer_of
    _warn_tied(module)
    chosen = _searchable(g, layer_of, searchable)
    for n, qualname in layer_of.items():
        g.nodes[n]["searchable"] = qualname in chosen
    if depth is None:
        depth = not any(OPS[a["op"]].kind == "attention" for _, a in g.nodes(data=True))
    for s, d in gate_blocks(g) if depth else ():
        weights[f"gates.{gate_name(s, d)}"] = torch.ones(1)
    net = compile_graph(g.validate(), weights)
    net.eval()
    with torch.no_grad():
        want, got = main_output(module(example_input)), net(example_input)
    diff = float((want - got).abs().max())
    if not diff <= atol * max(1.0, float(want.abs().max())):
        raise ModelImportError(f"the imported graph differs from {type(module).__name__} by "
                            f"{diff:.3g} on the example input; this is a bug in archdisc.graph.fx")
    return net


class _Called(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.m = module

    def forward(self, x):  # not a language model's cache of keys and values
        return main_output(self.m(x))


def _trace_called(module, example_input):
    """``module(x)`` traced (a forward taking ``**kwargs`` through a decorator, as Hugging
    Face's models: fx cannot trace such a forward as the root), named as ``module``'s."""
    code = sys.modules.get(type(module).__module__)  # its rotary embedding: one call
    rope = getattr(code, "apply_rotary_pos_emb", None)
    tracer = _Tracer(example_input, autowrap_functions=(rope,) if callable(rope) else ())
    root = _Called(module)
    graph, owned = tracer.trace(root), {}
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr"):  # module's, or a constant the tracer made
            obj = functools.reduce(getattr, n.target.split("."), root)
            n.target = n.target.removeprefix("m.")
            owned[n.target] = obj
        if n.name.startswith("m_"):
            n._rename(n.name[2:])
    return torch.fx.GraphModule(owned, graph, type(module).__name__)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, except that an ``if``, a ``for`` or a ``len`` on the input's shape
    (a padding computed from the input size, a check of it, ``(*x.shape[:-1], -1)``) reads
    its value on the example input: the graph so far is run on it, once per node. A value
    that reads parameters, or that differs on a probe input of another batch size and other
    values, stays an error."""

    proxy_buffer_attributes = True  # a buffer is traced as a parameter is (Llama's rotary
    #                                  frequencies expanded to a traced batch size)

    def __init__(self, example_input, autowrap_functions=()):
        super().__init__(autowrap_functions=autowrap_functions)
        self.inputs = {"example": example_input, "probe": _probe(example_input)}
        self.values, self.running = {"example": {}, "probe": {}}, False

    def _value(self, node, read=lambda v: v):
        """``read`` of the value of ``node`` on the example input, if the same on the
        probe."""
        out = {}
        for which, values in self.values.items():
            self.running = True
            try:
                with torch.no_grad():
                    for n in self.graph.nodes:
                        if n not in values and n.op != "output":
                            values[n] = self._run(n, self.inputs[which], values, *map_arg(
                                (n.args, n.kwargs), values.__getitem__))
            finally:
                self.running = False
            out[which] = read(values[node])
        if _length(out["example"]) != _length(out["probe"]):
            raise torch.fx.proxy.TraceError(f"control flow on {node.name}, which depends on the "
                                            f"batch size or on the input's values")
        return out["example"]

    def _run(self, n, x, values, args, kwargs):
        if n.op == "placeholder":  # the input, then forward's later arguments at their defaults
            return (args[0] if args else None) if values else x
        if n.op == "get_attr":
            return functools.reduce(getattr, n.target.split("."), self.root)
        if n.op == "call_module":
            return self.root.get_submodule(n.target)(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        return n.target(*args, **kwargs)

    def is_leaf_module(self, m, qualname):
        return named(m) is not None or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):  # while running: the module itself
        return forward(*args, **kwargs) if self.running else super().call_module(
            m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self.running else super().getattr(attr, attr_val, parameter_proxy_cache)

    def trace(self, root, concrete_args=None):
        length = torch.fx.Proxy.__len__  # len() of a shape: its length on the example

        def shape_length(proxy):
            if proxy.tracer is not self:
                return length(proxy)
            return len(self._value(_shape_only(proxy.node)))
        torch.fx.Proxy.__len__ = shape_length
        try:
            return super().trace(root, concrete_args)
        finally:
            torch.fx.Proxy.__len__ = length

    def proxy(self, node):
        return _Proxy(node, self)

    def to_bool(self, obj):
        return bool(self._value(_shape_only(obj.node)))

    def iter(self, obj):  # a shape's items, each traced
        return iter([obj[i] for i in range(len(self._value(_shape_only(obj.node))))])


class _Proxy(torch.fx.Proxy):
    """A traced value whose dtype is known: the example's (BERT's mask is built in it)."""

    @property
    def dtype(self):
        return self.tracer._value(self.node, read=lambda v: v.dtype)


def _probe(x):
    """An input of another batch size (1, or 2 if the example's is 1) and other values."""
    gen = torch.Generator().manual_seed(1)
    shape = (1 if x.shape[0] != 1 else 2, *x.shape[1:])
    if x.is_floating_point():
        return torch.randn(shape, generator=gen, dtype=x.dtype)
    lo, hi = (int(x.min()), int(x.max()) + 1) if x.numel() else (0, 1)
    return torch.randint(lo, hi, shape, generator=gen, dtype=x.dtype)


def _length(v):
    """What control flow reads of a value: itself, a sequence's length (``iter``)."""
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return len(v) if isinstance(v, (tuple, list, torch.Size)) else v


def _shape_only(node):
    """``node``, if it reads tensors' shapes and not their values, the input's or a
    parameter's (else fx's error)."""
    todo, seen = [node], {node}
    while todo:
        n = todo.pop()
        if n.op in ("placeholder", "get_attr"):
            raise torch.fx.proxy.TraceError(
                "symbolically traced variables cannot be used as inputs to control flow")
        if n.target in _SHAPE_READS or (n.target is getattr and n.args[1] in _SHAPE_READS):
            continue
        todo += [a for a in n.all_input_nodes if a not in seen]
        seen.update(n.all_input_nodes)
    return node


_SHAPE_READS = ("size", "dim", "numel", "shape", "ndim", "dtype", "device")


def _warn_tied(module):
    """Warn about parameters that several layers share (a language model's embedding and
    output layer): the import holds a copy for each."""
    names = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    tied = [" = ".join(n) for n in names.values() if len(n) > 1]
    if tied:
        warnings.warn(f"archdisc: {'; '.join(tied)} are one tensor in "
                      f"{type(module).__name__}; the import holds a copy for each layer: "
                      f"counted once per layer and trained apart", stacklevel=4)


class _Values(ShapeProp):
    """ShapeProp that also keeps each size, index or other non-tensor value (``"value"``)."""

    def run_node(self, n):
        out = super().run_node(n)
        if not isinstance(out, (torch.Tensor, tuple, list)) or isinstance(out, torch.Size):
            n.meta["value"] = out
        return out


def _searchable(g: ArchGraph, layer_of: dict, searchable) -> set:
    """Qualified names of the searchable layers: as given, or every layer except grouped
    convs and those whose output reaches an output node without passing another layer."""
    grouped = {q for n, q in layer_of.items() if g.nodes[n].get("groups", 1) > 1}
    if searchable is not None:
        chosen = set(searchable)
        unknown = chosen - set(layer_of.values())
        if unknown:
            raise ModelImportError(f"searchable: {sorted(unknown)} are not linear / conv "
                                f"submodules; choose from {sorted(layer_of.values())}")
        if chosen & grouped:
            raise ModelImportError(f"searchable: {sorted(chosen & grouped)} are grouped convs, "
                                f"whose units are kept all or none; leave them out")
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
    return {q for n, q in layer_of.items()
            if n not in last and q not in grouped
            and (OPS[g.nodes[n]["op"]].kind == "attention" or not _mixed(g, n))}


def _mixed(g: ArchGraph, n: str) -> bool:
    """Whether the units of ``n`` reach a layer norm through per-unit ops and adds (a
    transformer's or a ConvNeXt's residual stream): the norm reads them all, so none can
    be removed alone."""
    todo, seen = [n], {n}
    while todo:
        for v in g.successors(todo.pop()):
            spec = OPS[g.nodes[v]["op"]]
            if spec.mixes:
                return True
            if v not in seen and spec.kind in ("channelwise", "add", "tile"):
                seen.add(v)
                todo.append(v)
    return False
