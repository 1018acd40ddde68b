"""timm's Swin, read whole: its blocks' window attention and its patch merging.

timm writes Swin's window partition, shift and masks out by hand (views, ``roll``, a mask
buffer), and merges patches with a 6-d reshape. While tracing, each
``SwinTransformerBlock``'s ``_attn`` is routed through a leaf module (:class:`BlockAttention`,
removed again afterwards), and ``PatchMerging`` is a leaf; the importer reads them as the
``window_attention`` and ``patch_merge`` (+ layer norm + linear) nodes torchvision's Swin
becomes, which compute the same function (checked, as every import, on the example input).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

_BLOCK = "timm.models.swin_transformer.SwinTransformerBlock"


def qualified(m) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


class BlockAttention(nn.Module):
    """A Swin block's ``_attn`` (shift, windows, attention, back) as one traced call."""

    def __init__(self, block):
        super().__init__()
        self.__dict__["block"] = block  # not a child: the block holds this module

    def forward(self, x):
        return type(self.block)._attn(self.block, x)


@contextlib.contextmanager
def leaf_blocks(module: nn.Module):
    """Route each timm Swin block's ``_attn`` through a :class:`BlockAttention` child, for
    the time of a trace."""
    blocks = [m for m in module.modules() if qualified(m) == _BLOCK]
    for b in blocks:
        b.window_attention = BlockAttention(b)
        b.__dict__["_attn"] = b.window_attention  # before the class's method
    try:
        yield
    finally:
        for b in blocks:
            del b.window_attention, b.__dict__["_attn"]


def read_block_attention(imp, node, m, x):
    """A window_attention node from a Swin block's attention module."""
    from archdisc.graph.import_transformer import View
    a, b = m.block.attn, m.block
    if not (isinstance(x, View) and x.kind == "nhwc") or a.attn_drop.p or a.proj_drop.p or \
            getattr(b, "dynamic_mask", False) or (a.qkv.bias is None) != (a.proj.bias is None):
        return None
    h, n = a.num_heads, node.name
    imp.store_heads(n, h, a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias,
                    rel_table=a.relative_position_bias_table.t())
    imp.layer_of[n] = node.target.rsplit(".", 1)[0] + ".attn"
    return View("nhwc", imp.g.add_op(
        n, "window_attention", [x.node], units=a.proj.out_features, heads=h,
        head_dim=a.qkv.out_features // 3 // h, window=list(b.window_size),
        shift=list(b.shift_size), bias=a.qkv.bias is not None, cosine=False, dropout=0.0))


def read_patch_merging(imp, node, m, x):
    """timm's PatchMerging: 2 x 2 patches to channels (torchvision's order), its layer norm
    and its linear reduction."""
    from archdisc.graph.import_transformer import View
    if not (isinstance(x, View) and x.kind == "nhwc") or not isinstance(m.norm, nn.LayerNorm):
        return None
    g, n = imp.g, node.name
    merged = g.add_op(f"{n}_merge", "patch_merge", [x.node])
    w, b = m.norm.weight, m.norm.bias
    c = w.numel()
    imp.store(f"{n}_norm", {"weight": w, "bias": b if b is not None else torch.zeros(c)})
    normed = g.add_op(f"{n}_norm", "layernorm", [merged], eps=float(m.norm.eps))
    r = m.reduction
    imp.store(n, {"weight": r.weight[:, :, None, None],
                  **({"bias": r.bias} if r.bias is not None else {})})
    imp.layer_of[n] = node.target + ".reduction"
    return View("nhwc", g.conv(n, normed, r.out_features, kernel_size=1, padding=0,
                               bias=r.bias is not None))


HANDLERS = {f"{__name__}.BlockAttention": read_block_attention,
            "timm.models.swin_transformer.PatchMerging": read_patch_merging}
