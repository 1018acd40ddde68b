"""Token ops (vision and language transformers), registered into the op and kind tables.

A token tensor is ``(N, D, L)`` in every compiled model: features first, as channels
are, so that ``D`` is a node's units like any other (a linear layer, a layer norm, an
activation or a residual add reads a token tensor unchanged; see ``modules.Linear``).
The ops here make and read token tensors:

* ``tokens``: ``(C, H, W) -> (C, H * W)``, a patch embedding's output as tokens;
* ``prepend``: learned tokens (a class token) before the others, one column per token
  in its ``weight`` (D, k);
* ``pos_embed``: plus a learned (D, L) position embedding;
* ``token``: token ``index`` alone, ``(D, L) -> (D,)`` (the class token read by a head);
* ``attention``: multi-head self-attention. Its ``units`` are its output features (the
  output projection's rows, kept all or none); its searchable groups are its **heads**:
  head h's query, key and value rows (``qkv_weight[h]``, ``qkv_bias[h]``) and its columns
  of the output projection (``out_weight[h]``) are row h of those tensors, so a head is
  one unit group (:mod:`archdisc.sparsity.groups`). A head whose values or output columns
  are all zero adds exactly nothing, and extraction removes it.
"""
from __future__ import annotations

import torch
from torch import nn

from archdisc.errors import ExtractionError, GraphError
from archdisc.graph.kinds import KINDS, Kind
from archdisc.graph.ops import OPS, REQUIRED, Op

F = nn.functional


class Prepend(nn.Module):
    def __init__(self, channels: int, tokens: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, tokens))

    def forward(self, x):
        return torch.cat([self.weight.expand(x.shape[0], -1, -1), x], 2)


class PosEmbed(nn.Module):
    def __init__(self, channels: int, tokens: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, tokens))

    def forward(self, x):
        return x + self.weight


class Token(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x):
        return x[:, :, self.index]


class SelfAttention(nn.Module):
    """Multi-head self-attention on (N, D, L) tokens, head-major parameters (see above)."""

    def __init__(self, cin: int, units: int, heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.qkv_weight = nn.Parameter(torch.empty(heads, 3 * head_dim, cin))
        self.out_weight = nn.Parameter(torch.empty(heads, head_dim, units))
        self.qkv_bias = nn.Parameter(torch.zeros(heads, 3 * head_dim)) if bias else None
        self.out_bias = nn.Parameter(torch.zeros(units)) if bias else None
        nn.init.uniform_(self.qkv_weight, -cin ** -0.5, cin ** -0.5)
        nn.init.uniform_(self.out_weight, -max(1, heads * head_dim) ** -0.5,
                         max(1, heads * head_dim) ** -0.5)

    def forward(self, x):
        h, dh = self.heads, self.head_dim
        qkv = F.linear(x.transpose(1, 2), self.qkv_weight.flatten(0, 1),
                       None if self.qkv_bias is None else self.qkv_bias.flatten())
        q, k, v = qkv.unflatten(-1, (h, 3, dh)).permute(3, 0, 2, 1, 4)  # 3 x (N, h, L, dh)
        o = F.scaled_dot_product_attention(q, k, v,
                                           dropout_p=self.dropout if self.training else 0.0)
        o = o.transpose(1, 2).flatten(2)  # (N, L, h * dh)
        return F.linear(o, self.out_weight.flatten(0, 1).t(), self.out_bias).transpose(1, 2)


def _tokens_in(name):
    def shape(a, s):
        if len(s) != 2:
            raise GraphError(f"{name} needs a (features, tokens) input, got {s}")
        if name == "prepend":
            return (s[0], s[1] + a["tokens"])
        if (name == "token" and a["index"] >= s[1]) or (name == "pos_embed"
                                                         and a["tokens"] != s[1]):
            raise GraphError(f"{name} {a.get('index', a['tokens'])} does not fit an input "
                             f"of {s[1]} tokens")
        return (s[0],) if name == "token" else s
    return shape


def _prepend_constant(a, param, var, val):  # a constant unit stays one if its tokens equal it
    w = param("weight").double()
    return var | (w != val[:, None]).any(1), val


def _pos_constant(a, param, var, val):
    w = param("weight").double()
    return var | (w != w[:, :1]).any(1), val + w[:, 0]


def _attention_params(a, cin, shape):
    inner = a["heads"] * a["head_dim"]
    return 3 * inner * (cin + a["bias"]) + inner * a["units"] + a["bias"] * a["units"]


def _attention_macs(a, cin, shape):
    inner, length = a["heads"] * a["head_dim"], shape[1]
    return length * inner * (3 * cin + a["units"]) + 2 * length * length * inner


OPS.update({op.name: op for op in [
    Op("tokens", module=lambda a, cin: nn.Flatten(2), label=lambda a, w: f"tokens {w}",
       spatial=True, out_shape=lambda a, s: (s[0], s[1] * s[2]), keeps_zero=lambda a: True),
    Op("prepend", {"tokens": 1}, module=lambda a, cin: Prepend(cin, a["tokens"]),
       params=lambda a, cin, shape: cin * a["tokens"], label=lambda a, w: f"+ class token {w}",
       out_shape=_tokens_in("prepend"), constant=_prepend_constant, sliced=("weight",),
       grouped=("weight",), keeps_zero=lambda a: True),
    Op("pos_embed", {"tokens": REQUIRED}, module=lambda a, cin: PosEmbed(cin, a["tokens"]),
       params=lambda a, cin, shape: cin * a["tokens"], label=lambda a, w: f"+ position {w}",
       out_shape=_tokens_in("pos_embed"), constant=_pos_constant, sliced=("weight",),
       grouped=("weight",), keeps_zero=lambda a: True),
    Op("token", {"index": 0}, module=lambda a, cin: Token(a["index"]),
       label=lambda a, w: f"token {a['index']} {w}", out_shape=_tokens_in("token"),
       keeps_zero=lambda a: True,
       check=lambda a: (None if isinstance(a["index"], int) and a["index"] >= 0
                        else f"'index' must be an int >= 0, got {a['index']!r}")),
    Op("attention", {"units": REQUIRED, "heads": REQUIRED, "head_dim": REQUIRED, "bias": True,
                     "dropout": 0.0, "searchable": True}, kind="attention",
       module=lambda a, cin: SelfAttention(cin, a["units"], a["heads"], a["head_dim"],
                                           a["bias"], a["dropout"]),
       params=_attention_params, macs=_attention_macs, searched="heads",
       label=lambda a, w: f"attention {a['heads']}×{a['head_dim']} {w}",
       check=lambda a: (None if all(isinstance(a[k], int) and a[k] >= 1 for k in (
           "heads", "head_dim")) else "'heads' and 'head_dim' must be ints >= 1")),
]})


class Attention(Kind):
    """Self-attention: output units all or none, heads kept when they add anything."""
    width = True

    def shape(self, g, n, ins):
        src, s = ins[0]
        if len(s) != 2:
            raise GraphError(f"attention node {n!r} needs a (features, tokens) input, got "
                             f"{s} from {src!r}")
        return (g.nodes[n]["units"], s[1])

    def values(self, ex, n, reads):
        a, dh = ex.g.nodes[n], ex.g.nodes[n]["head_dim"]
        values = ex.param(n, "qkv_weight")[:, 2 * dh:].flatten(1).ne(0).any(1)
        if a["bias"]:
            values |= ex.param(n, "qkv_bias")[:, 2 * dh:].ne(0).any(1)
        writes = ex.param(n, "out_weight").ne(0).any(1)  # (heads, units)
        alive = values & writes.any(1)
        ex.heads[n] = heads = alive.clone()
        short = max(1, ex.min_units.get(n, 0)) - int(heads.sum())  # (min_keep; at least one:
        if short > 0:                                            # a node with none has no module)
            heads[(~heads).nonzero()[:short, 0]] = True  # silent heads: exact
        bias = ex.param(n, "out_bias")
        val = bias.double() if bias is not None else torch.zeros(a["units"], dtype=torch.float64)
        return writes[alive].any(0), val  # (varying, conservatively, if any head writes it)

    def kept(self, ex, n, fwd):
        return ex.keep[n].clone()

    def demand(self, ex, n, d, fwd, dem):
        if d.any() or ex.keep[n].any():
            ex.keep[n][:] = True
        if not ex.keep[n].any():
            return
        s = ex.ins[n][0]
        need = ex.param(n, "qkv_weight")[ex.heads[n]].ne(0).any(1).any(0)
        if not (fwd[s] | dem[s] | need).any():
            need[0] = True  # stay connected
        dem[s] |= need

    def compact(self, ex, n, attrs, keep):
        return {**attrs, "units": len(keep[n]), "heads": int(ex.heads[n].sum())}

    def weights(self, ex, n, keep):
        h, cols, s = ex.heads[n].nonzero().squeeze(1), keep[ex.ins[n][0]], ex.ins[n][0]
        qkv = ex.param(n, "qkv_weight")[h]
        drop = torch.ones(ex.units[s], dtype=torch.bool)
        drop[cols] = False
        if bool(qkv[:, :, drop].ne(0).any()):
            raise ExtractionError(f"attention node {n!r} reads an input unit that was "
                                  f"removed; this is a bug in archdisc.extract")
        out = {f"layers.{n}.qkv_weight": qkv[:, :, cols],
               f"layers.{n}.out_weight": ex.param(n, "out_weight")[h][:, :, keep[n]]}
        if ex.g.nodes[n]["bias"]:
            out[f"layers.{n}.qkv_bias"] = ex.param(n, "qkv_bias")[h]
            out[f"layers.{n}.out_bias"] = ex.param(n, "out_bias")[keep[n]]
        return out


KINDS["attention"] = Attention()
