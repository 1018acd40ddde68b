"""The deployment form of a model: the same function, in a layout runtimes fuse.

A discovered model keeps a narrow branch feeding a wide residual sum through an *index*
on the edge into the ``add`` (graph.py): compiled, that is a gather (``index_select``,
ONNX ``Gather`` + ``Concat``) per indexed member. onnxruntime cannot fuse a gather into
its convolutions: it breaks the blocked (NCHWc) layout around every sum, adds reorders,
and leaves Add and ReLU unfused (experiments/RESULTS.md section 3 has the profiles).

:func:`deploy` rewrites the model so that every sum it can is a plain elementwise add:

* **widen into the sum's index space**: the layer that produces an indexed member gets
  zero rows (and its per-channel ops zero scale and shift) at the sum's positions the
  member does not fill, so the member already has the sum's width and order; every other
  reader of that layer gets matching zero columns, and a reader that is itself a sum
  gets the index composed. A producer that is a sum is re-indexed the same way (its own
  members are then widened in turn). The zero units are exactly zero, so the function is
  unchanged; they cost the MACs of the rows added.
* **pad** (``pad_to=k``): every sum's width and every layer's width is padded up to a
  multiple of ``k`` with such zero units (and the readers' zero columns), the channel
  counts blocked convolution kernels want (onnxruntime's NCHWc block is 8 with AVX2 and
  16 with AVX-512).

A remap that cannot be done exactly (a reader that is a flatten, concat, select, a
grouped conv, layer norm, an activation that does not map 0 to 0, ...) is skipped and
that member keeps its gather.

An MLP-like model with such a gather is instead computed *feature-major*
(:class:`FeatureMajorNet`): there widening would give back the MACs saved, while a gather
of whole rows is cheap. BatchNorm needs no step here: the ONNX export of an eval-mode model
folds it into the preceding conv already, and :func:`load_torchscript` folds it at load
time (``torch.jit.optimize_for_inference``). :func:`for_runtime` picks the form measured
fastest for a runtime.

The result is an ordinary :class:`~archdisc.graph.compile.ArchNet` (its graph has no index on
those edges), so :func:`archdisc.deploy.formats.export` writes and verifies it like any model.
"""
from __future__ import annotations

import copy
import warnings

import torch

from archdisc.graph.compile import ArchNet, compile_graph, gate_name
from archdisc.errors import ConfigError, GraphError
from archdisc.graph.archgraph import ArchGraph
from archdisc.graph.kinds import kind
from archdisc.graph.ops import OPS


class _Skip(Exception):
    """This remap cannot be done exactly; leave the model as it is."""


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


class _Deployer:
    def __init__(self, net: ArchNet):
        self.g = copy.deepcopy(net.graph)
        self.w = {k: v.detach().clone() for k, v in net.state_dict().items()}

    # ----------------------------------------------------------------- classes
    def width(self, n: str) -> int:
        return self.g.shapes()[n][0]

    def cls(self, n: str):
        """The unit class of ``n``: its root (a layer or an add, whose units every other
        member passes through one to one) and the channelwise nodes below it."""
        g = self.g
        root = n
        while OPS[g.nodes[root]["op"]].kind == "channelwise":
            root = g.inputs(root)[0]
        if not kind(g, root).width:
            raise _Skip(f"{root} ({g.nodes[root]['op']}) cannot be widened")
        if g.nodes[root].get("groups", 1) != 1:
            raise _Skip(f"{root} is a grouped conv")
        members, stack = [root], [root]
        while stack:
            v = stack.pop()
            for c in g.successors(v):
                if OPS[g.nodes[c]["op"]].kind == "channelwise" and c not in members:
                    members.append(c)
                    stack.append(c)
        return root, members

    # ----------------------------------------------------------------- remap
    def remap(self, n: str, new: int, pos: list[int]):
        """Give the class of ``n`` ``new`` units, old unit j at position ``pos[j]``, the
        other units exactly zero. Checks everything first; raises _Skip and changes
        nothing when the remap is not exact."""
        g, w = self.g, self.w
        root, members = self.cls(n)
        old = self.width(root)
        assert len(pos) == old and len(set(pos)) == old and max(pos) < new
        if new == old and pos == list(range(old)):
            return
        pos_t = torch.tensor(pos, dtype=torch.long)
        plan = []  # closures applied once every check passed
        for v in members[1:]:
            spec, a = OPS[g.nodes[v]["op"]], g.nodes[v]
            if spec.mixes or not spec.keeps_zero(a):
                raise _Skip(f"{v} ({a['op']}) does not keep a zero unit at zero")
        for v in members:
            for c in g.successors(v):
                if c in members:
                    if g.edges[v, c]["gate"] == "channel":
                        plan.append(self._widen_vec(gate_name(v, c), new, pos_t, 0.0))
                    continue
                if g.edges[v, c]["gate"] == "channel":
                    plan.append(self._widen_vec(gate_name(v, c), new, pos_t, 0.0))
                step = kind(g, c).widen_reader(self, v, c, old, new, pos)
                if step is None:
                    raise _Skip(f"{c} ({g.nodes[c]['op']}) cannot read {v} widened")
                plan.append(step)
        # the class itself
        if OPS[g.nodes[root]["op"]].kind == "layer":
            plan.append(self._widen_rows(root, new, pos_t))
        else:
            for s in g.inputs(root):
                e = g.edges[s, root]
                idx = e["index"] if e["index"] is not None else list(range(old))
                plan.append(self._set_index(s, root, [pos[i] for i in idx], new))
            plan.append(lambda: g.nodes[root].__setitem__("units", new))
        for v in members[1:]:
            for k in OPS[g.nodes[v]["op"]].sliced:
                name = f"layers.{v}.{k}"
                if name in w:
                    fill = 1.0 if k == "running_var" else 0.0
                    plan.append(self._widen_vec(name, new, pos_t, fill))
        for f in plan:
            f()

    def _widen_vec(self, name, new, pos_t, fill):
        def f():
            t = self.w[name]
            out = torch.full((new, *t.shape[1:]), fill, dtype=t.dtype)
            out[pos_t] = t
            self.w[name] = out
        return f

    def _widen_rows(self, n, new, pos_t):
        def f():
            for k in ("weight", "bias"):
                if f"layers.{n}.{k}" in self.w:
                    self._widen_vec(f"layers.{n}.{k}", new, pos_t, 0.0)()
            self.g.nodes[n]["units"] = new
        return f

    def widen_cols(self, n, new, pos_t):
        def f():
            t = self.w[f"layers.{n}.weight"]
            out = t.new_zeros((t.shape[0], new, *t.shape[2:]))
            out[:, pos_t] = t
            self.w[f"layers.{n}.weight"] = out
        return f

    def compose_index(self, v, add, old, new, pos):
        g = self.g
        units = g.nodes[add]["units"]
        e = g.edges[v, add]["index"]
        e = e if e is not None else list(range(old))
        if new > units:
            raise _Skip(f"{add} ({units} units) cannot take {new} units of {v}")
        idx = [None] * new
        for j, p in enumerate(pos):
            idx[p] = e[j]
        free = iter(sorted(set(range(units)) - set(e)))
        idx = [i if i is not None else next(free) for i in idx]
        return self._set_index(v, add, idx, units)

    def _set_index(self, src, add, idx, units):
        def f():
            same = len(idx) == units and idx == list(range(units))
            self.g.edges[src, add]["index"] = None if same else [int(i) for i in idx]
        return f

    # ----------------------------------------------------------------- passes
    def adds(self):
        return [n for n in self.g.order() if self.g.nodes[n]["op"] == "add"]

    def try_remap(self, n, new, pos) -> bool:
        saved = copy.deepcopy(self.g), dict(self.w)
        try:
            self.remap(n, new, pos)
            self.g.validate()
            return True
        except (_Skip, GraphError):
            self.g, self.w = saved
            return False

    def widen_members(self):
        """Each indexed member of a sum widened into the sum's index space (latest sums
        first, so a sum re-indexed by a later one has its members widened after)."""
        for a in reversed(self.adds()):
            for s in self.g.inputs(a):
                idx = self.g.edges[s, a]["index"]
                if idx is not None:
                    self.try_remap(s, self.g.nodes[a]["units"], list(idx))

    def pad(self, k: int):
        """Sums and layers with (C, H, W) outputs padded to multiples of ``k`` (a
        blocked conv kernel's channel block; linear layers are left as they are)."""
        spatial = {n for n, s in self.g.shapes().items() if len(s) == 3}
        for a in reversed(self.adds()):
            u = self.width(a)
            if a in spatial and u % k:
                self.try_remap(a, _round_up(u, k), list(range(u)))
        self.widen_members()
        for n in self.g.order():
            a = self.g.nodes[n]
            if n in spatial and OPS[a["op"]].kind == "layer" and a["units"] % k:
                self.try_remap(n, _round_up(a["units"], k), list(range(a["units"])))


def deploy(net: ArchNet, pad_to: int = 1, widen: bool = True, layout: str = "auto"):
    """The deployment form of ``net`` (eval mode; ``net`` is not changed): the same
    outputs, in a layout the runtime fuses (see the module docstring).

    ``layout="auto"``: an MLP-like model (every op in :data:`FEATURE_MAJOR_OPS`) that
    has a narrow member of a sum becomes a :class:`FeatureMajorNet` (widening there would
    give back every MAC saved: a 128-unit block into a 256-unit sum doubles its rows);
    any other model stays an ArchNet with each indexed member widened into its sum's
    index space (``widen``) and its (C, H, W) widths padded to multiples of ``pad_to``.
    ``layout="archnet"`` forces the latter, ``"feature_major"`` the former.
    """
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
        raise ConfigError(f"pad_to must be a positive integer, got {pad_to!r}")
    if layout not in ("auto", "archnet", "feature_major"):
        raise ConfigError(f"layout must be 'auto', 'archnet' or 'feature_major', got {layout!r}")
    g = net.graph
    mlp_like = all(g.nodes[n]["op"] in FEATURE_MAJOR_OPS for n in g.nodes)
    if layout == "feature_major" or (layout == "auto" and mlp_like and gathers(net)):
        return feature_major(net)
    d = _Deployer(net)
    if widen:
        d.widen_members()
    if pad_to > 1:
        d.pad(pad_to)
    graph = ArchGraph.from_dict(d.g.to_dict())
    return compile_graph(graph, d.w).eval()


def nchwc_block() -> int:
    """onnxruntime's NCHWc channel block on this CPU: 16 with AVX-512, else 8."""
    cap = torch.backends.cpu.get_cpu_capability()
    return 16 if "AVX512" in cap.upper() else 8


def for_runtime(net: ArchNet, runtime: str):
    """The deployment form measured fastest for ``runtime`` (experiments/RESULTS.md
    section 3): for ``"onnxruntime"`` and ``"torchscript"`` (loaded with
    :func:`load_torchscript`), :func:`deploy` with ``pad_to`` = the channel block of the
    blocked conv kernels (onnxruntime's NCHWc, oneDNN's nChw16c); for ``"eager"``, the
    model as it is (eager convs take odd channel counts and a gather costs less there
    than the MACs the widening adds)."""
    if runtime in ("onnx", "onnxruntime", "torchscript"):
        return deploy(net, pad_to=nchwc_block())
    if runtime in ("eager", "pt2"):
        return net
    raise ConfigError(f"unknown runtime {runtime!r}; choose onnxruntime, torchscript, eager or pt2")


def gathers(net: ArchNet) -> int:
    """How many add members of ``net`` still go through an index (a gather)."""
    g = net.graph
    return sum(1 for u, v in g.edges if g.edges[u, v]["index"] is not None)


# ---------------------------------------------------------------------- feature-major
FEATURE_MAJOR_OPS = ("input", "flatten", "linear", "activation", "add", "batchnorm1d",
                     "dropout", "stochastic_depth", "scale", "concat", "output")


class FeatureMajorNet(ArchNet):
    """An MLP-like model (every tensor (batch, features)) computed on transposed,
    (features, batch) tensors: one transpose at each input and output, linears as
    ``addmm(bias, W, x)`` (ONNX Gemm), and a narrow member of a sum widened by a gather
    of whole *rows* (contiguous, ``batch`` floats each) instead of single columns. In
    onnxruntime that gather is about 10x cheaper than the batch-major one (a 256 x 256
    sum at batch 256: 35 us against 331 us). The same graph and parameter names as the
    model it is built from, and the same outputs; only the unit dimension differs."""

    unit_dim = 0

    def __init__(self, net: ArchNet):
        g = net.graph
        bad = sorted({g.nodes[n]["op"] for n in g.nodes} - set(FEATURE_MAJOR_OPS))
        if bad:
            raise GraphError(f"a feature-major model takes only {FEATURE_MAJOR_OPS}; "
                             f"this graph has {bad}")
        for n in g.nodes:
            if g.nodes[n]["op"] == "flatten" and g.nodes[g.inputs(n)[0]]["op"] != "input":
                raise GraphError(f"{n}: a flatten must read an input directly")
        super().__init__(g)
        param = next(iter(net.parameters()), None)
        if param is not None:
            self.to(device=param.device, dtype=param.dtype)
        self.load_state_dict(net.state_dict())
        for n, m in self.layers.items():
            op = g.nodes[n]["op"]
            if op in _TRANSPOSED:
                self.layers[n] = _TRANSPOSED[op](m)
        self.eval()

    def _run(self, xs, keep: bool) -> dict:  # every node's output is (features, batch)
        return super()._run([x.flatten(1).t() for x in xs], keep)

    def forward(self, *xs):  # the flatten nodes read the transposed inputs as they are
        out = super().forward(*xs)
        return out.t() if isinstance(out, torch.Tensor) else tuple(o.t() for o in out)


class _Linear(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.weight, self.bias = m.weight, m.bias

    def forward(self, x):
        if self.bias is None:
            return self.weight @ x
        return torch.addmm(self.bias.unsqueeze(1), self.weight, x)


class _BatchNorm(torch.nn.Module):  # eval mode: a per-feature scale and shift
    def __init__(self, m):
        super().__init__()
        self.weight, self.bias, self.eps = m.weight, m.bias, m.eps
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(k, getattr(m, k))

    def forward(self, x):
        s = self.weight / torch.sqrt(self.running_var + self.eps)
        return x * s.unsqueeze(1) + (self.bias - self.running_mean * s).unsqueeze(1)


class _Scale(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.weight = m.weight

    def forward(self, x):
        return x * self.weight.unsqueeze(1)


_TRANSPOSED = {"linear": _Linear, "batchnorm1d": _BatchNorm, "scale": _Scale,  # inference:
               **{op: lambda m: torch.nn.Identity()  # dropout and stochastic depth are off
                  for op in ("flatten", "dropout", "stochastic_depth")}}


def feature_major(net: ArchNet) -> FeatureMajorNet:
    """``net`` (an MLP-like ArchNet) computed feature-major: see :class:`FeatureMajorNet`."""
    return FeatureMajorNet(net).eval()


def load_torchscript(path, optimize: bool = True):
    """A TorchScript file written by :func:`archdisc.deploy.formats.export`, ready to run on the
    CPU: with ``optimize``, frozen and passed through ``torch.jit.optimize_for_inference``
    (BatchNorm folded into the convs, conv + add + ReLU fused, oneDNN blocked layouts).
    That step happens here, at load time, because an optimised module does not survive
    ``torch.jit.save`` / ``load`` (torch 2.x: "required keyword attribute 'value' is
    undefined")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
        module = torch.jit.load(str(path), map_location="cpu").eval()
        if optimize:
            module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
    return module
