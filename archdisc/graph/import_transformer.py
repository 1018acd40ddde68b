"""How the fx importer reads transformers (a mixin of :class:`archdisc.graph.importer.Importer`).

Token tensors (N, L, D) are held as (N, D, L) token nodes (graph/tokens.py) behind an
``"nld"`` view; Swin's (N, H, W, C) images as NCHW nodes behind an ``"nhwc"`` view. Read
here: the ops of a view (a residual add of two views, dropout, stochastic depth, the
permute back), the class token (``torch.cat`` of learned tokens), the position embedding,
``x[:, i]``, ``nn.MultiheadAttention(x, x, x)``, attention written out (below),
torchvision's ``shifted_window_attention`` and ``_patch_merging_pad``. A call whose every
tensor input is a parameter or a buffer, its other inputs sizes, is computed at import (Swin
v2's position-bias MLP over its constant coordinates, ``torch.arange(T)`` positions); with the
batch size in it, it is a batch constant (Hugging Face's attention mask of ones).
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(eq=False)
class View:
    """A traced value that is not a graph node of its own (see importer.py).

    ``kind``: ``"nhwc"`` (``node`` permuted to channels-last), ``"nld"`` (``node``'s (D, L)
    tokens as (L, D), as transformers hold them), ``"pieces"`` (``node`` cut along the
    channels at ``extra``, the bounds), ``"grouped"`` (a (groups, C / groups) view of
    ``node``'s channels; ``extra``: the channel at each position), ``"param"`` (``extra``:
    a tensor), ``"first"`` (a tuple whose item 0 is ``extra``, the rest unused) or
    ``"relbias"`` (a relative position bias gathered from ``extra``, its (T, heads) table).
    ``"qkv"``: part ``part`` of ``s`` equal parts of a Linear's tokens (nanoGPT's
    ``c_attn(x).split(D, dim=2)``).
    Attention written out (timm's, Hugging Face's) passes through ``"heads"`` (a Linear's
    output split into heads: ``extra`` has ``s`` parts (3 for a fused q / k / v) of ``h``
    heads of ``dh`` features, the ``part`` taken, the ``layout`` of the dims: b(atch),
    l(ength), s, h, d and the ``scale`` applied), ``"unbound"`` (``extra``: the q, k, v
    heads), ``"scores"`` (q @ k^T), ``"probs"`` (their softmax), ``"attn"`` (the heads'
    outputs) and ``"merged"`` (the heads' outputs as (L, h * dh) tokens)."""
    kind: str
    node: str | None = None
    extra: object = None


_WRITTEN = ("heads", "unbound", "qkv", "scores", "probs", "attn")


def _is(v, *kinds) -> bool:
    return isinstance(v, View) and v.kind in kinds


def mean_dims(node):
    """``(dims, keepdim)`` of a ``mean`` call, the dims as a tuple."""
    args, kw = node.args, node.kwargs
    dim = kw.get("dim", args[1] if len(args) > 1 else None)
    return (tuple(dim) if isinstance(dim, (list, tuple)) else (dim,),
            bool(kw.get("keepdim", args[2] if len(args) > 2 else False)))


def _later(key):
    """``i`` for ``x[:, i:]`` or ``x[:, i:, :]`` (the tokens from ``i`` on), else None."""
    if not (isinstance(key, tuple) and len(key) in (2, 3) and key[0] == slice(None)
            and isinstance(key[1], slice) and key[1].stop is None and key[1].step in (None, 1)
            and key[2:] in ((), (slice(None),))):
        return None
    start = key[1].start or 0
    return start if isinstance(start, int) and start >= 0 else None


class TransformerReader:
    """The transformer part of the importer (it needs ``g``, ``gm``, ``val``, ``shape``,
    ``store``, ``layer_of``, ``unsupported`` and ``what``)."""

    def sizes(self, node):
        """Note in ``batchy`` a size that holds the batch size: ``x.shape`` / ``x.size()`` of
        a traced tensor (``"whole"``), their item 0 and what is computed from them (True).
        The other sizes (a length, a width) are constants that :meth:`fold` may use."""
        t, args, ins = node.target, node.args, node.all_input_nodes
        data = bool(ins) and not _is(self.val.get(ins[0].name), "param", "relbias") and \
            self.val.get(ins[0].name) is not None
        ndim = len(ins[0].meta["tensor_meta"].shape) if data and \
            "tensor_meta" in ins[0].meta else 0
        if data and ((t == "size" and len(args) == 1 and not node.kwargs) or (
                t is getattr and args[1] == "shape")):
            self.batchy[node.name] = "whole"
        elif t is operator.getitem and self.batchy.get(ins[0].name) == "whole":
            ndim, i = len(ins[0].meta.get("value", ())), args[1]
            if (isinstance(i, int) and i in (0, -ndim)) or (isinstance(i, slice) and (
                    i.start in (None, 0, -ndim)) and i.stop != 0):
                self.batchy[node.name] = True  # the batch size, or a shape holding it
        elif (data and t == "size" and (args[1:2] or (node.kwargs.get("dim"),))[0] in (
                0, -ndim)) or (data and t == "numel") or any(a.name in self.batchy for a in ins):
            self.batchy[node.name] = True

    def fold(self, node):
        """The value of a call whose every tensor input is a parameter or buffer and whose
        other inputs are sizes, computed now: a ``"param"`` view, or ``"bconst"`` when the
        example's batch size went into it (a Hugging Face attention mask of ones); a
        relative position bias stays a table. None for any other call."""
        ins = node.all_input_nodes
        tensors = [a for a in ins if self.val[a.name] is not None]
        kinds = ("param", "relbias", "bconst")
        if node.op not in ("call_function", "call_method", "call_module") or \
                node.meta.get("type") is not torch.Tensor and not tensors or \
                not all(_is(self.val[a.name], *kinds) for a in tensors) or \
                any("value" not in a.meta for a in ins if a not in tensors):
            return None
        name = getattr(node.target, "__name__", node.target)
        vals = [self.val[a.name] for a in tensors]
        batch = any(a.name in self.batchy for a in ins) or any(_is(v, "bconst") for v in vals)
        if name == "expand" and not any(_is(v, "bconst") for v in vals):
            return None  # a learned token expanded to the batch: read by prepend
        if name == "_get_relative_position_bias":  # table[index]: keep the table
            return View("relbias", extra=vals[0].extra)
        if any(_is(v, "relbias") for v in vals):  # an elementwise function of the bias
            if name in ("sigmoid", "mul") and (name == "sigmoid" or not node.kwargs):
                table = vals[0].extra
                other = [a for a in node.args if not isinstance(a, torch.fx.Node)]
                return View("relbias", extra=torch.sigmoid(table) if name == "sigmoid"
                            else table * math.prod(other))
            self.unsupported(node, f"{name} of a relative position bias")
        def value(a):
            return self.val[a.name].extra if a in tensors else a.meta["value"]
        args = torch.fx.node.map_arg(node.args, value)
        kwargs = torch.fx.node.map_arg(node.kwargs, value)
        with torch.no_grad():
            if node.op == "call_module":
                out = self.gm.get_submodule(node.target)(*args, **kwargs)
            elif node.op == "call_method":
                out = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                out = node.target(*args, **kwargs)
        return View("bconst" if batch else "param", extra=out) \
            if isinstance(out, torch.Tensor) else None

    def transformer(self, node, vals):
        """A function reading a view (or a parameter, or a tuple) that this mixin reads: the
        graph node or view it gives, else None."""
        t, n, args, g = node.target, node.name, node.args, self.g
        name = getattr(t, "__name__", t)
        x = vals[0] if vals else None
        if name == "scaled_dot_product_attention" or any(
                _is(v, *_WRITTEN) for v in vals):
            return self.written(node, vals)
        if name == "shifted_window_attention" and _is(x, "nhwc"):
            return View("nhwc", self.window_attention(node))
        if name == "_patch_merging_pad" and _is(x, "nhwc"):
            return View("nhwc", g.add_op(n, "patch_merge", [x.node]))
        if _is(x, "first") and t is operator.getitem and args[1] == 0:
            return x.extra
        if _is(x, "param") and t == "expand":
            return x
        if not _is(x, "nld", "nhwc"):
            return None
        if name == "stochastic_depth" and getattr(t, "__module__", "").startswith("torchvision"):
            return View(x.kind, g.add_op(n, "stochastic_depth", [x.node], p=float(args[1]),
                                         mode=args[2]))
        if t in (operator.add, operator.iadd, torch.add) and len(vals) == 2 and \
                not node.kwargs and _is(vals[1], x.kind):
            return View(x.kind, g.add_op(n, "add", [x.node, vals[1].node],
                                         units=self.shape(node)[-1]))
        if x.kind == "nld":
            return self.token_function(node, x, vals)
        return None

    def token_function(self, node, x, vals):
        t, n, args = node.target, node.name, node.args
        dims = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) \
            else list(args[1:])
        if t in ("permute", "transpose") and all(isinstance(d, int) for d in dims) and \
                [d % 3 for d in dims] in ([0, 2, 1], [1, 2], [2, 1]):
            return x.node
        if t is operator.getitem and isinstance(args[1], tuple) and len(args[1]) in (2, 3) and \
                args[1][0] == slice(None) and isinstance(args[1][1], int) and \
                args[1][2:] in ((), (slice(None),), (Ellipsis,)):  # x[:, i] or x[:, i, :]
            length = self.shape(node.args[0])[0]
            return self.g.add_op(n, "token", [x.node], at=args[1][1] % length)
        start = _later(args[1]) if t is operator.getitem else None
        if start == 0:
            return x  # x[:, 0:] (a language model's logits for every token)
        if start is not None:
            return View("nld", self.g.add_op(n, "later_tokens", [x.node], start=start))
        if t in ("split", "chunk") and self.g.op(x.node) == "linear" and \
                node.kwargs.get("dim", args[2] if len(args) > 2 else 0) in (2, -1):
            parts = [m.shape[-1] for m in node.meta["tensor_meta"]]
            if len(set(parts)) == 1:  # q, k, v of one Linear
                return View("unbound", extra=[View("qkv", x.node, {"s": len(parts), "part": i})
                                              for i in range(len(parts))])
        shape = self.shape(node)
        if t in ("view", "reshape") and self.g.op(x.node) == "linear" and \
                len(shape) in (3, 4) and math.prod(shape[1:]) == self.shape(node.args[0])[1]:
            s, h, dh = (1, *shape[1:]) if len(shape) == 3 else shape[1:]
            return View("heads", x.node, {"s": s, "h": h, "dh": dh, "part": 0, "scale": 1.0,
                                          "layout": "blhd" if len(shape) == 3 else "blshd"})
        if t in ("mean", torch.mean) and mean_dims(node) in (((1,), False), ((-2,), False)):
            return self.g.add_op(n, "token_mean", [x.node])
        y = vals[1] if len(vals) == 2 else None
        if t in (operator.add, torch.add) and _is(y, "bconst") and y.extra.dim() == 3 and \
                (y.extra == y.extra[:1]).all():
            y = View("param", extra=y.extra[:1])  # the same for every sample (token types)
        if t in (operator.add, torch.add) and _is(y, "param") and not node.kwargs and \
                tuple(y.extra.shape) in (shape, (1, *shape)):
            self.store(n, {"weight": y.extra.reshape(shape).t()})
            return View("nld", self.g.add_op(n, "pos_embed", [x.node], tokens=shape[0]))
        return None

    def prepend(self, node, parts):
        """``torch.cat([token.expand(N, -1, -1), ..., x], dim=1)``: learned tokens (class,
        distillation) before the tokens of ``x``."""
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        *tokens, x = parts
        if dim not in (1, -2) or not tokens or not all(_is(p, "param") for p in tokens):
            self.unsupported(node, "cat of tokens other than learned tokens before them")
        w = torch.cat([p.extra.reshape(-1, p.extra.shape[-1]) for p in tokens]).t()
        self.store(node.name, {"weight": w})
        return View("nld", self.g.add_op(node.name, "prepend", [x.node], tokens=w.shape[1]))

    def attention(self, node, m: nn.MultiheadAttention, x):
        """``nn.MultiheadAttention(x, x, x)`` (batch first, no masks) -> an attention node
        with head-major weights (graph/tokens.py)."""
        args = node.args + tuple(node.kwargs.get(k) for k in ("key", "value") if k in node.kwargs)
        extra = {k: v for k, v in node.kwargs.items() if k not in ("key", "value")}
        if len(set(args)) != 1 or len(args) != 3 or not m.batch_first or \
                not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn or \
                any(v is not None for k, v in extra.items() if k != "need_weights"):
            self.unsupported(node, f"{self.what(node)} other than self-attention (x, x, x) "
                                   f"with batch_first=True and no masks or bias_k / bias_v")
        h, e = m.num_heads, m.embed_dim
        self.store_heads(node.name, h, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight,
                         m.out_proj.bias)
        self.layer_of[node.name] = node.target
        return self.g.add_op(node.name, "attention", [x], units=e, heads=h, head_dim=e // h,
                             bias=m.in_proj_bias is not None, dropout=float(m.dropout))

    def written(self, node, vals):
        """A step of attention written out: q / k / v Linears split into heads, then
        ``F.scaled_dot_product_attention`` or ``softmax(q @ k^T * scale) @ v``, the heads
        merged back into tokens (the Linear reading them: :meth:`merge_heads`)."""
        t, args = node.target, node.args
        name = getattr(t, "__name__", t)
        x = vals[0]
        e = x.extra if _is(x, "heads", "attn") else None
        numbers = [v for v in vals if isinstance(v, (int, float))]
        if name == "scaled_dot_product_attention":
            keys = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                    "enable_gqa")
            a = {**dict(zip(keys, vals)), **{k: self.val[v.name] if isinstance(
                v, torch.fx.Node) else v for k, v in node.kwargs.items()}}
            q, k, v = (a.get(key) for key in keys[:3])
            mask = a.get("attn_mask")
            if mask is not None and _is(mask, "param", "bconst") and not mask.extra.any():
                mask = None  # no padding: Hugging Face's mask of zeros
            bias = self.score_bias(mask, q) if _is(mask, "param") else None
            if (mask is not None and bias is None) or \
                    not all(_is(p, "heads") and p.extra["layout"] == "bhld" for p in (q, k, v)):
                self.unsupported(node, "scaled_dot_product_attention other than of q / k / v "
                                       "Linears split into heads, without masks other than a "
                                       "fixed (heads, L, L) bias")
            if a.get("enable_gqa") and k.extra["h"] == v.extra["h"] and \
                    q.extra["h"] % k.extra["h"] == 0:  # each key head read by a query group
                k, v = (View("heads", p.node, {**p.extra, "rep": q.extra["h"] // p.extra["h"]})
                        for p in (k, v))
            return self.attn(node, q, k, v, (a.get("scale") or q.extra["dh"] ** -0.5) *
                             q.extra["scale"] * k.extra["scale"], a.get("dropout_p", 0.0),
                             bool(a.get("is_causal")), bias)
        if _is(x, "heads") and t == "split" and e["s"] == 1 and e["layout"] == "bhld" and \
                node.kwargs.get("dim", args[2] if len(args) > 2 else 0) in (3, -1) and \
                isinstance(args[1], (list, tuple)) and len(args[1]) == 3:
            ends = [sum(args[1][:i]) for i in range(4)]  # each head's rows: its q, k, v
            return View("unbound", extra=[View("heads", x.node, {
                **e, "dh": ends[i + 1] - ends[i], "rows": (ends[i], ends[i + 1], e["dh"])})
                for i in range(3)])
        if _is(x, "heads") and e["layout"] == "bhld" and t is operator.getitem and \
                args[1] == (slice(None), slice(None), None, slice(None), slice(None)):
            return View("heads", x.node, {**e, "layout": "bhrld"})  # repeat_kv's, Llama's
        if _is(x, "heads") and e["layout"] == "bhrld" and t == "expand":
            return View("heads", x.node, {**e, "rep": self.shape(node)[1]})
        if _is(x, "heads") and e["layout"] == "bhrld" and t == "reshape" and \
                len(self.shape(node)) == 3:
            return View("heads", x.node, {**e, "layout": "bhld"})  # read by groups of queries
        if name == "apply_rotary_pos_emb":  # Hugging Face's: (q, k, cos, sin) -> (q, k)
            a = {**dict(zip(("q", "k", "cos", "sin"), vals)), **{
                k: self.val[v.name] if isinstance(v, torch.fx.Node) else v
                for k, v in node.kwargs.items()}}
            rope = [self.rope_table(a[k], e["dh"]) for k in ("cos", "sin")]
            if a.get("unsqueeze_dim", 1) != 1 or None in rope or \
                    not all(_is(a[k], "heads") and "rope" not in a[k].extra for k in "qk"):
                self.unsupported(node, "apply_rotary_pos_emb other than of q / k heads by one "
                                       "table for every sample")
            return View("unbound", extra=[View("heads", a[k].node, {**a[k].extra, "rope": rope})
                                          for k in "qk"])
        if _is(x, "unbound") and t is operator.getitem:
            return x.extra[args[1]]
        if _is(x, "qkv") and t in ("view", "reshape") and len(self.shape(node)) == 3:
            h, dh = self.shape(node)[1:]
            return View("heads", x.node, {**x.extra, "h": h, "dh": dh, "scale": 1.0,
                                          "layout": "blhd"})
        if e is not None and t in ("permute", "transpose"):
            order, r = list(range(len(e["layout"]))), len(e["layout"])
            if t == "transpose":
                i, j = args[1] % r, args[2] % r
                order[i], order[j] = j, i
            else:
                order = [d % r for d in (args[1] if isinstance(args[1], (list, tuple))
                                         else args[1:])]
            return View(x.kind, x.node, {**e, "layout": "".join(e["layout"][i] for i in order)})
        if _is(x, "heads") and e["layout"][0] == "s" and (
                (t == "unbind" and node.kwargs.get("dim", args[1] if len(args) > 1 else 0) == 0)
                or (t is operator.getitem and isinstance(args[1], int))):
            parts = [View("heads", x.node, {**e, "part": i, "layout": e["layout"][1:]})
                     for i in range(e["s"])]
            return View("unbound", extra=parts) if t == "unbind" else parts[args[1]]
        y = next((v for v in vals if _is(v, "heads", "scores")), None)
        if t in (operator.mul, operator.truediv, "mul", "div") and len(vals) == 2 and \
                y is not None and len(numbers) == 1 and (t in (operator.mul, "mul") or (
                    y is x and numbers[0] != 0)):
            c = numbers[0] if t in (operator.mul, "mul") else 1 / numbers[0]
            return View(y.kind, y.node, {**y.extra, "scale": y.extra["scale"] * c})
        if t in (operator.matmul, torch.matmul, "matmul") and len(vals) == 2:
            a, b = vals
            if _is(a, "heads") and _is(b, "heads") and a.extra["layout"] == "bhld" and \
                    b.extra["layout"] == "bhdl":
                return View("scores", extra={"q": a, "k": b, "scale": a.extra["scale"] *
                                             b.extra["scale"], "dropout": 0.0})
            if _is(a, "probs") and _is(b, "heads") and b.extra["layout"] == "bhld":
                return self.attn(node, a.extra["q"], a.extra["k"], b, a.extra["scale"],
                                 a.extra["dropout"], bias=a.extra.get("bias"))
        if _is(x, "scores") and t in (operator.add, operator.iadd, torch.add) and \
                len(vals) == 2 and _is(vals[1], "param") and "bias" not in x.extra:
            bias = self.score_bias(vals[1], x.extra["q"])
            if bias is not None:
                return View("scores", extra={**x.extra, "bias": bias})
        if _is(x, "scores") and name == "softmax" and \
                node.kwargs.get("dim", args[1] if len(args) > 1 else None) in (-1, 3):
            return View("probs", extra=x.extra)
        if _is(x, "probs") and name == "dropout":  # F.dropout: the attention's own
            p = node.kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            return View("probs", extra={**x.extra, "dropout": float(p)})
        if _is(x, "attn") and t in ("reshape", "view") and e["layout"] == "blhd":
            return View("merged", extra=e)
        self.unsupported(node, f"{name} in attention written out (supported: q / k / v "
                               f"Linears split into heads, scaled_dot_product_attention or "
                               f"softmax(q @ k^T * scale) @ v, the heads merged by a Linear)")

    def rope_table(self, v, dh):
        """A rotary embedding's cos or sin, (L, dh), the same for every sample; else None."""
        if not _is(v, "param", "bconst") or v.extra.shape[-1] != dh:
            return None
        t = v.extra.reshape(-1, *v.extra.shape[-2:])
        return t[0].clone() if (t == t[:1]).all() else None

    def score_bias(self, mask, q):
        """A fixed bias added to the scores, (heads, L, L) (BEiT's relative position bias
        for its tokens), or None if ``mask`` is not one."""
        t, h = mask.extra, q.extra["h"]
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        L = t.shape[-1]  # the import's check compares with the module's own attention
        return t.expand(h, L, L).clone() if t.dim() == 3 and t.is_floating_point() and \
            t.shape[1:] == (L, L) and t.shape[0] in (1, h) else None

    def attn(self, node, q, k, v, scale, dropout, causal=False, bias=None):
        """``scale``: the whole factor on q @ k^T (q's and k's own included); ``bias``: a
        fixed (heads, L, L) bias added to the scores."""
        dh = q.extra["dh"]
        if v.extra["scale"] != 1.0 or not math.isclose(scale, dh ** -0.5, rel_tol=1e-6):
            self.unsupported(node, f"attention with the scale {scale:.4g} (only 1 / "
                                   f"sqrt(head_dim) = {dh ** -0.5:.4g}) or scaled values")
        if bias is not None and causal:
            self.unsupported(node, "causal attention with a bias on its scores")
        group = k.extra.get("rep", 1)
        if v.extra.get("rep", 1) != group or q.extra["h"] != k.extra["h"] * group or \
                (group > 1 and bias is not None) or "rope" in v.extra:
            self.unsupported(node, "attention whose keys and values are shared by other groups "
                                   "of queries, or with a bias and shared keys")
        return View("attn", extra={"q": q, "k": k, "v": v, "layout": "bhld",
                                   "dropout": float(dropout), "causal": causal, "bias": bias})

    def merge_heads(self, node, m: nn.Linear, e):
        """The Linear reading the merged heads: with the q / k / v Linears, one attention
        node (head-major weights, graph/tokens.py) reading their input."""
        parts = [e[k] for k in "qkv"]
        lins = list(dict.fromkeys(p.node for p in parts))
        h, dh, dv = parts[0].extra["h"], parts[0].extra["dh"], parts[2].extra["dh"]
        group = parts[1].extra.get("rep", 1)  # query heads per key / value head
        rope = parts[0].extra.get("rope")
        src = {tuple(self.g.inputs(n)) for n in lins}
        if len(src) != 1 or any(self.g.out_degree(n) for n in lins) or \
                parts[1].extra["h"] * group != h or parts[2].extra["h"] != parts[1].extra["h"] \
                or parts[1].extra["dh"] != dh or rope is None and "rope" in parts[1].extra:
            self.unsupported(node, "attention whose q, k and v read different inputs, have "
                                   "other readers or other head shapes")
        w = {n: self.weights.pop(f"layers.{n}.weight") for n in lins}
        b = {n: self.weights.pop(f"layers.{n}.bias", None) for n in lins}
        bias = m.bias is not None or any(v is not None for v in b.values())

        def rows(p, t, *shape):
            if "rows" in p.extra:  # each head's q, k, v rows one after the other
                lo, hi, per = p.extra["rows"]
                return t.reshape(h, per, *shape)[:, lo:hi].reshape(h * (hi - lo), *shape)
            return t.reshape(p.extra["s"], p.extra["h"] * p.extra["dh"], *shape)[p.extra["part"]]
        n = node.name
        score = {"score_bias": e["bias"]} if e.get("bias") is not None else {}
        if rope is not None:
            score.update(rope_cos=rope[0], rope_sin=rope[1])
        self.store_heads(n, h, torch.cat([rows(p, w[p.node], -1) for p in parts]), torch.cat([
            rows(p, b[p.node]) if b[p.node] is not None else torch.zeros(
                p.extra["h"] * p.extra["dh"]) for p in parts]) if bias else None, m.weight,
            m.bias if m.bias is not None or not bias else torch.zeros(m.out_features),
            value_dim=dv, group=group, **score)
        names = [self.layer_of.pop(n).split(".") for n in lins] + [node.target.split(".")]
        prefix = [p[0] for p in zip(*names) if len(set(p)) == 1]
        self.layer_of[n] = ".".join(prefix) or n  # the attention module's name
        for x in lins:
            self.g.remove_node(x)
        return self.g.add_op(n, "attention", [src.pop()[0]], units=m.out_features,
                             heads=h // group, head_dim=dh, bias=bias, dropout=e["dropout"],
                             causal=e["causal"], value_dim=dv if dv != dh else 0, group=group,
                             score_bias=e["bias"].shape[-1] if e.get("bias") is not None else 0,
                             rotary=rope[0].shape[0] if rope is not None else 0)

    def store_heads(self, n, h, w, b, out_w, out_b, value_dim=None, group=1, **more):
        """Head-major q / k / v rows and output-projection columns (graph/tokens.py); ``w``:
        the ``h`` query heads' rows, then the key heads' rows, then the value heads' rows
        (``value_dim`` each); one key and value head for each ``group`` of query heads."""
        kv = h // group
        dh = (w.shape[0] - kv * value_dim) // (h + kv) if value_dim else w.shape[0] // (h + 2 * kv)
        dv = value_dim or dh

        def per_head(t):  # (q, k, v) rows -> (kv, group dh + dh + dv, ...)
            q, k, v = t.split([h * dh, kv * dh, kv * dv])
            return torch.cat([q.unflatten(0, (kv, group * dh)), k.unflatten(0, (kv, dh)),
                              v.unflatten(0, (kv, dv))], 1)
        self.store(n, {"qkv_weight": per_head(w),
                       "out_weight": out_w.t().reshape(kv, group * dv, -1),
                       **more, **({"qkv_bias": per_head(b), "out_bias": out_b}
                                  if b is not None else {})})

    def window_attention(self, node):
        """torchvision's ``shifted_window_attention`` -> a window_attention node."""
        from torchvision.models.swin_transformer import shifted_window_attention
        a = inspect.signature(shifted_window_attention).bind(*node.args, **node.kwargs)
        a.apply_defaults()
        a = {k: self.val[v.name] if isinstance(v, torch.fx.Node) else v
             for k, v in a.arguments.items()}
        tensors = ("qkv_weight", "proj_weight", "qkv_bias", "proj_bias", "logit_scale")
        if not _is(a["relative_position_bias"], "relbias") or a["dropout"] or any(
                a[k] is not None and not _is(a[k], "param") for k in tensors) or \
                (a["qkv_bias"] is None) != (a["proj_bias"] is None):
            self.unsupported(node, "shifted_window_attention other than Swin's (weights and "
                                   "both biases as parameters, its relative position bias "
                                   "table, no output dropout)")
        p = {k: a[k].extra if a[k] is not None else None for k in tensors}
        h, n = a["num_heads"], node.name
        scale = {} if p["logit_scale"] is None else {"logit_scale": p["logit_scale"].reshape(h)}
        self.store_heads(n, h, p["qkv_weight"], p["qkv_bias"], p["proj_weight"], p["proj_bias"],
                         rel_table=a["relative_position_bias"].extra.t(), **scale)
        w = node.args[1] if len(node.args) > 1 else node.kwargs.get("qkv_weight")
        self.layer_of[n] = w.target.rsplit(".", 2)[0] if w.op == "get_attr" else n
        return self.g.add_op(n, "window_attention", [a["input"].node],
                             units=p["proj_weight"].shape[0], heads=h,
                             head_dim=p["qkv_weight"].shape[0] // 3 // h,
                             window=list(a["window_size"]), shift=list(a["shift_size"]),
                             bias=p["qkv_bias"] is not None, cosine=bool(scale),
                             dropout=float(a["attention_dropout"]))
