"""Token ops (vision and language transformers), registered into the op and kind tables.

A token tensor is ``(N, D, L)`` in every compiled model: features first, as channels
are, so that ``D`` is a node's units like any other (a linear layer, a layer norm, an
activation or a residual add reads a token tensor unchanged; see ``modules.Linear``).
The ops here make and read token tensors:

* ``tokens``: ``(C, H, W) -> (C, H * W)``, a patch embedding's output as tokens;
* ``prepend``: learned tokens (a class token) before the others, one column per token
  in its ``weight`` (D, k);
* ``pos_embed``: plus a learned (D, L) position embedding;
* ``token``: token ``at`` alone, ``(D, L) -> (D,)`` (the class token read by a head);
  ``token_mean``: the mean token; ``later_tokens``: the tokens from ``start`` on (those
  after the class token);
* ``token_mix``: a linear map across the tokens, ``(D, L) -> (D, L')``, the same for
  every unit (``weight`` (L', L): MLP-Mixer's token MLP);
* ``embed``: token ids ``(L,)`` -> their learned embeddings ``(D, L)`` (``weight``
  (vocab, D)), all D units kept (kind ``embed``); an output node with ``tokens_last``
  gives (N, L, D), as language models return their logits;
* ``attention``: multi-head self-attention. Its ``units`` are its output features (the
  output projection's rows, kept all or none); its searchable groups are its **heads**:
  head h's query, key and value rows (``qkv_weight[h]``, ``qkv_bias[h]``) and its columns
  of the output projection (``out_weight[h]``) are row h of those tensors, so a head is
  one unit group (:mod:`archdisc.sparsity.groups`). A head whose values or output columns
  are all zero adds exactly nothing, and extraction removes it; ``causal``: each token
  attends to itself and the tokens before it (a language model); ``value_dim``: values
  wider than keys; ``group``: grouped-query attention, a unit group being one key / value
  head and its ``group`` query heads (rows: queries, key, value); ``score_bias`` and
  ``rotary``: fixed (not trained) tables for that many tokens, a bias added to each head's
  scores (BEiT, EfficientFormer) and a rotary embedding of queries and keys (Llama);
* ``window_attention``: Swin's (shifted) window attention on a (C, H, W) image, with the
  same head-major tensors plus, per head, its relative position bias table (``rel_table``)
  and, for Swin v2's cosine attention, its ``logit_scale``; computed as torchvision's
  ``shifted_window_attention`` computes it, for any number of heads;
* ``patch_merge``: Swin's 2 x 2 space-to-depth, (C, H, W) -> (4C, H / 2, W / 2), output
  unit ``k C + c`` is input unit c (kind ``tile``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from archdisc.errors import ExtractionError, GraphError
from archdisc.graph.kinds import KINDS, Input, Kind
from archdisc.graph.ops import OPS, REQUIRED, Op, pair

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


class TokenMean(nn.Module):
    def forward(self, x):
        return x.mean(2)


class LaterTokens(nn.Module):
    def __init__(self, start: int):
        super().__init__()
        self.start = start

    def forward(self, x):
        return x[:, :, self.start:]


class Token(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x):
        return x[:, :, self.index]


class SelfAttention(nn.Module):
    """Multi-head self-attention on (N, D, L) tokens, head-major parameters (see above)."""

    def __init__(self, cin: int, units: int, heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, causal: bool = False, score_bias: int = 0,
                 value_dim: int = 0, group: int = 1, rotary: int = 0):
        super().__init__()
        self.heads, self.head_dim, self.dropout, self.causal = heads, head_dim, dropout, causal
        # a head's value width when not head_dim (EfficientFormer's: 4 x its key width)
        self.value_dim = dv = value_dim or head_dim
        # grouped-query attention: each of the ``heads`` unit groups is ``group`` query
        # heads sharing one key and one value head (Llama's)
        self.group = group
        # added to each head's scores, (heads, L, L), held fixed: BEiT's relative position
        # bias as it reads for its L tokens
        self.register_buffer("score_bias", torch.zeros(heads, score_bias, score_bias)
                             if score_bias else None)
        # rotary position embedding of queries and keys, (L, head_dim) each, held fixed
        for name in ("rope_cos", "rope_sin"):
            self.register_buffer(name, torch.zeros(rotary, head_dim) if rotary else None)
        rows = group * head_dim + head_dim + dv
        self.qkv_weight = nn.Parameter(torch.empty(heads, rows, cin))
        self.out_weight = nn.Parameter(torch.empty(heads, group * dv, units))
        self.qkv_bias = nn.Parameter(torch.zeros(heads, rows)) if bias else None
        self.out_bias = nn.Parameter(torch.zeros(units)) if bias else None
        nn.init.uniform_(self.qkv_weight, -cin ** -0.5, cin ** -0.5)
        bound = max(1, heads * group * dv) ** -0.5
        nn.init.uniform_(self.out_weight, -bound, bound)

    def forward(self, x):
        h, dh, g = self.heads, self.head_dim, self.group
        qkv = F.linear(x.transpose(1, 2), self.qkv_weight.flatten(0, 1),
                       None if self.qkv_bias is None else self.qkv_bias.flatten())
        q, k, v = qkv.unflatten(-1, (h, -1)).transpose(1, 2).split(  # 3 x (N, h, L, d)
            [g * dh, dh, self.value_dim], -1)
        if g > 1:  # query head i * g + r reads key / value head i
            q = q.unflatten(-1, (g, dh)).transpose(2, 3).flatten(1, 2)
        if self.rope_cos is not None:
            q, k = (t * self.rope_cos + rotate_half(t) * self.rope_sin for t in (q, k))
        if g > 1:  # (repeated: ONNX's export has no grouped-query attention)
            k, v = (t[:, :, None].expand(-1, -1, g, -1, -1).flatten(1, 2) for t in (k, v))
        o = F.scaled_dot_product_attention(q, k, v, self.score_bias, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        o = o.transpose(1, 2).flatten(2)  # (N, L, h * group * value_dim)
        return F.linear(o, self.out_weight.flatten(0, 1).t(), self.out_bias).transpose(1, 2)


def rotate_half(x):
    """The rotary embedding's rotation: (x1, x2) -> (-x2, x1) on the last dimension's halves."""
    x1, x2 = x.chunk(2, -1)
    return torch.cat((-x2, x1), -1)


def value_start(a) -> int:
    """Where a head's value rows start in ``qkv_weight[h]`` (after its queries and key)."""
    return (a.get("group", 1) + 1) * a["head_dim"]


class WindowAttention(SelfAttention):
    """Swin's shifted-window attention on (N, C, H, W) images, head-major parameters."""

    def __init__(self, cin, units, heads, head_dim, window, shift, bias=True, cosine=False,
                 dropout=0.0):
        super().__init__(cin, units, heads, head_dim, bias, dropout)
        self.window, self.shift = list(pair(window)), list(pair(shift))
        wh, ww = self.window
        self.rel_table = nn.Parameter(torch.zeros(heads, (2 * wh - 1) * (2 * ww - 1)))
        self.logit_scale = nn.Parameter(torch.full((heads,), math.log(10.0))) if cosine else None
        # the table entry of each (query, key) pair of a window: their offset, row-major
        at = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
        offset = (at.flatten(1)[:, :, None] - at.flatten(1)[:, None, :]).permute(1, 2, 0)
        self.register_buffer("index", (offset[..., 0] + wh - 1) * (2 * ww - 1) +
                             offset[..., 1] + ww - 1, persistent=False)

    def forward(self, x):
        h, dh = self.heads, self.head_dim
        (wh, ww), (sh, sw), (height, width) = self.window, self.shift, x.shape[2:]
        x = F.pad(x, (0, -width % ww, 0, -height % wh))  # zeros up to whole windows
        ph, pw = x.shape[2], x.shape[3]
        sh, sw = (sh if wh < ph else 0), (sw if ww < pw else 0)  # one window: no shift
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), (2, 3))
        # (N, C, ph, pw) -> windows (N * windows, wh * ww tokens, C), row-major both
        t = x.unflatten(2, (ph // wh, wh)).unflatten(4, (pw // ww, ww))
        t = t.permute(0, 2, 4, 3, 5, 1).flatten(0, 2).flatten(1, 2)
        b = self.qkv_bias
        if b is not None and self.logit_scale is not None:  # v2: keys have no bias
            b = torch.cat([b[:, :dh], torch.zeros_like(b[:, dh:2 * dh]), b[:, 2 * dh:]], 1)
        qkv = F.linear(t, self.qkv_weight.flatten(0, 1), None if b is None else b.flatten())
        q, k, v = qkv.unflatten(-1, (h, 3, dh)).permute(3, 0, 2, 1, 4)  # (N', h, n, dh)
        if self.logit_scale is not None:  # cosine attention
            scale = self.logit_scale.clamp(max=math.log(100.0)).exp().view(h, 1, 1)
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
        else:
            attn = (q * dh ** -0.5) @ k.transpose(-2, -1)
        n = wh * ww
        attn = attn + self.rel_table[:, self.index.flatten()].view(h, n, n)
        if sh or sw:  # tokens that the roll brought from another region do not attend
            attn = (attn.unflatten(0, (-1, (ph // wh) * (pw // ww))) +
                    self._mask(ph, pw, sh, sw).to(attn)).flatten(0, 1)
        attn = F.dropout(attn.softmax(-1), self.dropout, self.training)
        o = (attn @ v).transpose(1, 2).flatten(2)
        o = F.linear(o, self.out_weight.flatten(0, 1).t(), self.out_bias)  # (N', n, units)
        o = o.unflatten(0, (-1, ph // wh, pw // ww)).unflatten(3, (wh, ww))
        o = o.permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3)  # (N, units, ph, pw)
        if sh or sw:
            o = torch.roll(o, (sh, sw), (2, 3))
        return o[:, :, :height, :width]

    def _mask(self, ph, pw, sh, sw):
        """(windows, 1, n, n): -100 between tokens of different regions of the rolled map."""
        (wh, ww) = self.window

        def region(size, w, s):
            at = torch.arange(size)
            return (at >= size - w).long() + (at >= size - s).long() if s else at * 0
        label = region(ph, wh, sh)[:, None] * 3 + region(pw, ww, sw)[None, :]
        label = label.unflatten(0, (ph // wh, wh)).unflatten(2, (pw // ww, ww))
        label = label.permute(0, 2, 1, 3).flatten(0, 1).flatten(1, 2)  # (windows, n)
        return ((label[:, None, :] != label[:, :, None]) * -100.0)[:, None]


class TokenEmbed(nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, dim))

    def forward(self, ids):
        return F.embedding(ids, self.weight).transpose(1, 2)


class PatchMerge(nn.Module):
    def forward(self, x):
        x = F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        return torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2],
                          x[:, :, 1::2, 1::2]], 1)


def _tokens_in(name):
    def shape(a, s):
        if len(s) != 2:
            raise GraphError(f"{name} needs a (features, tokens) input, got {s}")
        if name == "prepend":
            return (s[0], s[1] + a["tokens"])
        if (name == "token" and a["at"] >= s[1]) or (name == "pos_embed"
                                                         and a["tokens"] != s[1]) or (
                name == "later_tokens" and a["start"] >= s[1]):
            value = a.get("at", a.get("tokens", a.get("start")))
            raise GraphError(f"{name} {value} does not fit an input of {s[1]} tokens")
        if name == "later_tokens":
            return (s[0], s[1] - a["start"])
        return (s[0],) if name in ("token", "token_mean") else s
    return shape


def _mix_shape(a, s):
    if len(s) != 2 or s[1] != a["tokens_in"]:
        raise GraphError(f"token_mix needs a (features, {a['tokens_in']}) input, got {s}")
    return (s[0], a["tokens"])


def _mix_constant(a, param, var, val):
    """A constant unit c becomes ``c * row sums + bias`` over the new tokens: a constant
    only if that is."""
    out = val[:, None] * param("weight").double().sum(1)
    if a["bias"]:
        out = out + param("bias").double()
    return var | (out != out[:, :1]).any(1), out[:, 0]


def _prepend_constant(a, param, var, val):  # a constant unit stays one if its tokens equal it
    w = param("weight").double()
    return var | (w != val[:, None]).any(1), val


def _pos_constant(a, param, var, val):
    w = param("weight").double()
    return var | (w != w[:, :1]).any(1), val + w[:, 0]


def _inner(a):
    """The widths of all queries, keys, values and of what the output projection reads."""
    h, dh, g = a["heads"], a["head_dim"], a.get("group", 1)
    dv = a.get("value_dim") or dh
    return h * g * dh, h * dh, h * dv, h * g * dv


def _attention_params(a, cin, shape):
    q, k, v, o = _inner(a)
    return (q + k + v) * (cin + a["bias"]) + o * a["units"] + a["bias"] * a["units"]


def _attention_macs(a, cin, shape):
    (q, k, v, o), length = _inner(a), math.prod(shape[1:])
    keys = math.prod(pair(a["window"])) if "window" in a else length  # each query reads
    return length * ((q + k + v) * cin + o * a["units"]) + length * keys * (q + o)


def _window_params(a, cin, shape):
    wh, ww = pair(a["window"])
    return _attention_params(a, cin, shape) + a["heads"] * (
        (2 * wh - 1) * (2 * ww - 1) + a["cosine"])


_HEADS = ("qkv_weight", "qkv_bias", "out_weight")  # a head's unit group (row h of each)


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
    Op("later_tokens", {"start": REQUIRED}, module=lambda a, cin: LaterTokens(a["start"]),
       label=lambda a, w: f"tokens {a['start']}: {w}", keeps_zero=lambda a: True,
       out_shape=_tokens_in("later_tokens"),
       check=lambda a: (None if isinstance(a["start"], int) and a["start"] >= 1
                        else f"'start' must be an int >= 1, got {a['start']!r}")),
    Op("token_mean", module=lambda a, cin: TokenMean(), label=lambda a, w: f"mean {w}",
       out_shape=_tokens_in("token_mean"),
       keeps_zero=lambda a: True),
    # a linear map across the tokens, the same for every unit (MLP-Mixer's token MLP)
    Op("token_mix", {"tokens": REQUIRED, "tokens_in": REQUIRED, "bias": True},
       module=lambda a, cin: nn.Linear(a["tokens_in"], a["tokens"], bias=a["bias"]),
       params=lambda a, cin, shape: (a["tokens_in"] + a["bias"]) * a["tokens"],
       macs=lambda a, cin, shape: cin * a["tokens_in"] * a["tokens"],
       label=lambda a, w: f"token mix {a['tokens_in']}→{a['tokens']} {w}", out_shape=_mix_shape,
       constant=_mix_constant, copied=("weight", "bias"),
       check=lambda a: (None if all(isinstance(a[k], int) and a[k] >= 1 for k in (
           "tokens", "tokens_in")) else "'tokens' and 'tokens_in' must be ints >= 1")),
    Op("token", {"at": 0}, module=lambda a, cin: Token(a["at"]),
       label=lambda a, w: f"token {a['at']} {w}", out_shape=_tokens_in("token"),
       keeps_zero=lambda a: True,
       check=lambda a: (None if isinstance(a["at"], int) and a["at"] >= 0
                        else f"'at' must be an int >= 0, got {a['at']!r}")),
    Op("embed", {"units": REQUIRED, "vocab": REQUIRED}, kind="embed",
       module=lambda a, cin: TokenEmbed(a["vocab"], a["units"]), copied=("weight",),
       params=lambda a, cin, shape: a["vocab"] * a["units"],
       out_shape=lambda a, s: (a["units"], s[0]), label=lambda a, w: f"embed {a['vocab']} {w}",
       check=lambda a: (None if all(isinstance(a[k], int) and a[k] >= 1 for k in (
           "units", "vocab")) else "'units' and 'vocab' must be ints >= 1")),
    Op("attention", {"units": REQUIRED, "heads": REQUIRED, "head_dim": REQUIRED, "bias": True,
                     "dropout": 0.0, "causal": False, "score_bias": 0, "value_dim": 0,
                     "group": 1, "rotary": 0, "searchable": True},
       kind="attention",
       module=lambda a, cin: SelfAttention(cin, a["units"], a["heads"], a["head_dim"],
                                           a["bias"], a["dropout"], a["causal"],
                                           a["score_bias"], a["value_dim"], a["group"],
                                           a["rotary"]),
       params=_attention_params, macs=_attention_macs, searched="heads", grouped=_HEADS,
       sliced=_HEADS + ("score_bias",), copied=("rope_cos", "rope_sin"),
       label=lambda a, w: f"attention {a['heads']}×{a['head_dim']} {w}",
       check=lambda a: _heads_check(a)),
    Op("window_attention", {"units": REQUIRED, "heads": REQUIRED, "head_dim": REQUIRED,
                            "window": REQUIRED, "shift": 0, "bias": True, "cosine": False,
                            "dropout": 0.0, "searchable": True}, kind="attention",
       module=lambda a, cin: WindowAttention(cin, a["units"], a["heads"], a["head_dim"],
                                             a["window"], a["shift"], a["bias"], a["cosine"],
                                             a["dropout"]),
       params=_window_params, macs=_attention_macs, searched="heads", spatial=True,
       grouped=_HEADS, sliced=_HEADS + ("rel_table", "logit_scale"),
       label=lambda a, w: f"window attention {a['heads']}×{a['head_dim']} {w}",
       check=lambda a: _heads_check(a)),
    Op("patch_merge", kind="tile", module=lambda a, cin: PatchMerge(), spatial=True,
       label=lambda a, w: f"patch merge {w}",
       out_shape=lambda a, s: (4 * s[0], -(-s[1] // 2), -(-s[2] // 2))),
]})


def _heads_check(a):
    if not all(isinstance(a[k], int) and a[k] >= 1 for k in ("heads", "head_dim")):
        return "'heads' and 'head_dim' must be ints >= 1"
    if not all(isinstance(a.get(k, 0), int) and a.get(k, 0) >= 0 for k in (
            "value_dim", "score_bias", "rotary")) or not (
            isinstance(a.get("group", 1), int) and a.get("group", 1) >= 1):
        return "'value_dim', 'score_bias', 'rotary' must be ints >= 0 and 'group' >= 1"
    if a.get("rotary") and a["head_dim"] % 2:
        return "rotary embeddings need an even 'head_dim'"
    return None


class Attention(Kind):
    """Self-attention: output units all or none, heads kept when they add anything."""
    width = True

    def shape(self, g, n, ins):
        src, s = ins[0]
        if len(s) != (3 if OPS[g.nodes[n]["op"]].spatial else 2):
            what = "(C, H, W)" if OPS[g.nodes[n]["op"]].spatial else "(features, tokens)"
            raise GraphError(f"{g.nodes[n]['op']} node {n!r} needs a {what} input, got "
                             f"{s} from {src!r}")
        fixed = {g.nodes[n].get(k, 0) for k in ("score_bias", "rotary")} - {0}
        if fixed and fixed != {s[1]}:
            raise GraphError(f"attention node {n!r}: its score bias / rotary tables are for "
                             f"{sorted(fixed)} tokens, its input has {s[1]}")
        return (g.nodes[n]["units"], *s[1:])

    def values(self, ex, n, reads):
        a = ex.g.nodes[n]
        v0 = value_start(a)
        values = ex.param(n, "qkv_weight")[:, v0:].flatten(1).ne(0).any(1)
        if a["bias"]:
            values |= ex.param(n, "qkv_bias")[:, v0:].ne(0).any(1)
        writes = ex.param(n, "out_weight").ne(0).any(1)  # (heads, units)
        alive = values & writes.any(1)
        ex.heads[n] = heads = alive.clone()
        short = max(1, ex.min_units.get(n, 0)) - int(heads.sum())  # (min_keep; at least one:
        if short > 0:                                            # a node with none has no module)
            heads[(~heads).nonzero()[:short, 0]] = True  # silent heads: exact
        bias = ex.param(n, "out_bias")
        val = bias.double() if bias is not None else torch.zeros(a["units"], dtype=torch.float64)
        # varying, conservatively, if any head writes it; all of them under a minimum of
        # heads (``min_units``: the node stays, its silent heads trainable; see weights)
        return writes[alive].any(0) | (ex.min_units.get(n, 0) > 0), val

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
        spec = OPS[ex.g.nodes[n]["op"]]
        out = {f"layers.{n}.{k}": ex.param(n, k)[h] if k in spec.sliced else ex.param(n, k)
               for k in spec.sliced + spec.copied if ex.param(n, k) is not None}
        qkv = qkv[:, :, cols].clone()
        v0 = value_start(ex.g.nodes[n])
        silent = ~out[f"layers.{n}.out_weight"].flatten(1).ne(0).any(1) & \
            ~qkv[:, v0:].flatten(1).ne(0).any(1)
        if silent.any():  # a head kept for a minimum: values and output all zero, a saddle
            gen = torch.Generator().manual_seed(0)  # the fine-tune could not leave;
            bound = qkv.shape[-1] ** -0.5           # random values, output still zero
            qkv[silent, v0:] = (torch.rand(qkv[silent, v0:].shape, generator=gen,
                                           dtype=qkv.dtype) * 2 - 1) * bound
        out[f"layers.{n}.qkv_weight"] = qkv
        out[f"layers.{n}.out_weight"] = out[f"layers.{n}.out_weight"][:, :, keep[n]]
        if ex.g.nodes[n]["bias"]:
            out[f"layers.{n}.out_bias"] = ex.param(n, "out_bias")[keep[n]]
        return out


class Embed(Input):
    """Token ids -> embeddings: every unit kept and varying (as an input), every id read."""
    shape = Kind.shape

    def demand(self, ex, n, d, fwd, dem):
        dem[ex.ins[n][0]][:] = True


class Tile(Kind):
    """Output unit ``k C + c`` is input unit c (a patch merge: C -> 4C); zero padding of an
    odd side makes a non-zero constant vary."""

    def values(self, ex, n, reads):
        var, val = reads[0]
        if any(d % 2 for d in ex.shapes[ex.ins[n][0]][1:]):
            var = var | (val != 0)
        return var.repeat(4), val.repeat(4)

    def kept(self, ex, n, fwd):
        return fwd[ex.ins[n][0]].repeat(4)

    def demand(self, ex, n, d, fwd, dem):
        dem[ex.ins[n][0]] |= d.view(4, -1).any(0)


KINDS.update({"attention": Attention(), "tile": Tile(), "embed": Embed()})
