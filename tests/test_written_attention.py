"""Attention written out, as timm and Hugging Face write it, imports as one attention node:
a fused qkv Linear split with reshape / permute / unbind into F.scaled_dot_product_attention,
and separate q / k / v Linears with softmax(q @ k^T / sqrt(d)) @ v; the heads merged by the
output Linear. Heads are unit groups whose removal is exact. A nanoGPT-style language model
(token and position embeddings, causal attention, logits for every token) too."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archdisc import extract, from_module
from archdisc.deploy.formats import FORMATS, export
from archdisc.errors import ModelImportError
from archdisc.graph.archgraph import count_params
from archdisc.sparsity.groups import unit_members

D, HEADS = 16, 4
DH = D // HEADS


class Fused(nn.Module):  # timm's Attention
    def __init__(self, scale=DH ** -0.5):
        super().__init__()
        self.qkv, self.proj, self.scale = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D), scale

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, HEADS, DH).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, L, C))


class Split(nn.Module):  # Hugging Face's eager attention
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(D, D) for _ in range(3))
        self.dropout, self.out = nn.Dropout(0.1), nn.Linear(D, D)

    def forward(self, x, mask=None):
        B, L, _ = x.shape
        q, k, v = (f(x).view(B, L, HEADS, DH).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(DH)
        if mask is not None:
            scores = scores + mask
        probs = self.dropout(scores.softmax(dim=-1))
        return self.out(torch.matmul(probs, v).transpose(1, 2).contiguous().reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(D), attn, nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Tiny(nn.Module):
    def __init__(self, attns):
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, 4)
        self.cls, self.pos = nn.Parameter(torch.randn(1, 1, D)), nn.Parameter(torch.randn(1, 5, D))
        self.blocks = nn.Sequential(*(Block(a) for a in attns))
        self.head = nn.Linear(D, 3)

    def forward(self, x, mask=None):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(F.layer_norm(self.blocks(t), (D,))[:, 1])  # any token, not only 0


def _tiny(*attns):
    torch.manual_seed(0)
    m = Tiny(attns or (Fused(), Split())).eval()
    x = torch.randn(3, 3, 8, 8)
    return m, from_module(m, x), x


def test_both_forms_import_as_attention_nodes_with_heads():
    m, net, x = _tiny()
    g = net.graph
    att = [n for n in g if g.nodes[n]["op"] == "attention"]
    assert len(att) == 2 and all(g.nodes[n]["heads"] == HEADS for n in att)
    assert not any(g.nodes[n]["op"] == "linear" and g.nodes[n]["units"] == 3 * D for n in g)
    assert torch.allclose(net(x), m(x), atol=1e-5)
    torch_params = sum(p.numel() for p in m.parameters())
    # the fused qkv's missing bias as zeros, the last layer norm's missing affine as 1 and 0
    assert count_params(g) == torch_params + 3 * D + 2 * D
    assert sorted(unit_members(net)) == sorted(att + ["blocks_0_mlp_0", "blocks_1_mlp_0"])


def test_dead_heads_of_both_forms_are_removed_exactly():
    m, net, x = _tiny()
    params = dict(net.named_parameters())
    att = sorted(n for n in net.graph if net.graph.nodes[n]["op"] == "attention")
    with torch.no_grad():
        for n in att:
            for p in unit_members(net)[n]:
                params[p][0] = 0
    graph, compact = extract(net, inputs=x)
    assert [graph.nodes[n]["heads"] for n in att] == [HEADS - 1] * 2
    assert torch.allclose(compact(x), net(x), atol=1e-5)
    assert count_params(graph) == count_params(net.graph) - 2 * (3 * DH * (D + 1) + DH * D)


class Unfused(Fused):  # timm's Attention without fused_attn; F.dropout on the weights
    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, HEADS, DH).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.dropout((q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1), 0.1,
                         self.training)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, L, C))


def test_the_unfused_form_scaled_on_q_imports():
    m, net, x = _tiny(Unfused())
    g = net.graph
    assert [g.nodes[n]["op"] for n in g].count("attention") == 1
    assert torch.allclose(net(x), m(x), atol=1e-5)


def test_depth_gates_cover_the_attention_blocks():
    m, _, x = _tiny()
    net = from_module(m, x, depth=True)
    assert len(net.gates) == 4  # the attention and MLP branch of both blocks


def test_unsupported_attention_is_named():
    m = Tiny((Fused(scale=0.3),)).eval()
    with pytest.raises(ModelImportError, match="scaled_dot_product_attention.*scale 0.3"):
        from_module(m, torch.randn(2, 3, 8, 8))

    class Masked(Tiny):
        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            return self.blocks[0].attn(t, torch.zeros(4, 4)).mean()

    with pytest.raises(ModelImportError, match="'add'.*in attention written out"):
        from_module(Masked((Split(),)), torch.randn(2, 3, 8, 8))


class CausalAttention(nn.Module):  # nanoGPT's
    def __init__(self):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (p.view(B, T, HEADS, C // HEADS).transpose(1, 2) for p in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPT(nn.Module):
    def __init__(self, vocab=40, block=16):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, D), nn.Embedding(block, D)
        self.blocks = nn.Sequential(Block(CausalAttention()), Block(CausalAttention()))
        self.ln_f, self.lm_head = nn.LayerNorm(D), nn.Linear(D, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # tied

    def forward(self, idx):
        b, t = idx.size()
        x = self.wte(idx) + self.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
        return self.lm_head(self.ln_f(self.blocks(x)))


def test_a_gpt_imports_and_loses_heads_mlp_units_and_a_block_exactly():
    torch.manual_seed(0)
    m, ids = GPT().eval(), torch.randint(0, 40, (3, 10))
    net = from_module(m, ids, depth=True)
    g = net.graph
    assert [g.nodes[n]["op"] for n in g.order()][:3] == ["input", "embed", "pos_embed"]
    assert net(ids).shape == (3, 10, 40) and torch.allclose(net(ids), m(ids), atol=1e-5)
    other = ids.clone()
    other[:, 6:] = (ids[:, 6:] + 1) % 40  # causal: the first 6 tokens do not see the rest
    assert torch.allclose(net(other)[:, :6], net(ids)[:, :6], atol=1e-6)
    assert not torch.allclose(net(other)[:, 6:], net(ids)[:, 6:], atol=1e-3)
    params = dict(net.named_parameters())
    att = "blocks_0_attn_c_proj"
    with torch.no_grad():
        for p in unit_members(net)[att]:
            params[p][2] = 0
        for p in unit_members(net)["blocks_1_mlp_0"]:
            params[p][:5] = 0
        net.gates["blocks_1_attn_c_proj__add_3"].zero_()  # block 1's attention branch
    graph, compact = extract(net, inputs=ids)
    assert graph.nodes[att]["heads"] == HEADS - 1 and "blocks_1_attn_c_proj" not in graph
    assert graph.nodes["blocks_1_mlp_0"]["units"] == 2 * D - 5
    assert torch.allclose(compact(ids), net(ids), atol=1e-5)


def test_a_compact_gpt_exports_to_every_format(tmp_path):
    torch.manual_seed(0)
    m, ids = GPT().eval(), torch.randint(0, 40, (2, 10))
    net = from_module(m, ids)
    with torch.no_grad():
        net.layers["blocks_1_attn_c_proj"].out_weight[1] = 0
    graph, compact = extract(net, inputs=ids)
    paths = export(compact, graph, tmp_path)  # token ids sampled; each file reloaded, checked
    assert sorted(paths) == sorted(FORMATS)


def test_a_language_model_runs_through_run_discover(tmp_path):
    """Next-byte prediction on this file's own text: a label per token, token ids in."""
    from archdisc.deploy.formats import load
    from archdisc.recipe.config import Config
    from archdisc.recipe.discover import run_discover
    text = torch.tensor(list(open(__file__, "rb").read()[:20000]), dtype=torch.long)
    n, L = (len(text) - 1) // 16, 16
    data = torch.utils.data.TensorDataset(text[:n * L].view(n, L), text[1:n * L + 1].view(n, L))
    data.classes = list(range(128))  # every ASCII byte, seen or not
    torch.manual_seed(0)
    rep = run_discover(Config(epochs=1, finetune=1, target_params=6000), tmp_path, data=data,
                       model=GPT(vocab=128, block=L), progress=False)
    assert 0.9 * 6000 <= rep["params"]["compact"] <= 6000
    assert min(rep["units"][f"blocks_{i}_attn_c_proj"]["alive"] for i in (0, 1)) < HEADS
    compact = load(tmp_path / "compact")
    ids = text[:2 * L].view(2, L)
    assert compact(ids).shape == (2, L, 128) and 0 < rep["test"]["compact"] < 100
