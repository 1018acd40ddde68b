"""Transformers: torchvision's VisionTransformer imports exactly (patch tokens, class token,
position embedding, nn.MultiheadAttention, token MLPs); heads and MLP units are unit
groups whose removal is exact; a dead block gate removes an encoder block."""
import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from archdisc import ArchGraph, compile_graph, extract, from_module
from archdisc.deploy.formats import FORMATS, export
from archdisc.errors import GraphError, ModelImportError
from archdisc.graph.archgraph import count_params
from archdisc.graph.tokens import WindowAttention
from archdisc.sparsity.groups import alive, param_groups, sparse_init, unit_members

D, HEADS, MLP = 16, 4, 32


def _vit(depth=False):
    torch.manual_seed(0)
    m = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=HEADS,
                          hidden_dim=D, mlp_dim=MLP, num_classes=5).eval()
    nn.init.normal_(m.heads.head.weight)  # torchvision starts it at zero: outputs all 0
    x = torch.randn(3, 3, 16, 16)
    return m, from_module(m, x, depth=depth), x


def test_vit_imports_with_head_and_mlp_groups_only():
    m, net, x = _vit()
    g = net.graph
    ops = [g.nodes[n]["op"] for n in g.order()]
    assert ops[:4] == ["input", "conv2d", "tokens", "prepend"] and "pos_embed" in ops
    assert ops.count("attention") == 2 and ops[-3:] == ["token", "linear", "output"]
    assert g.shapes()["add_1"] == (D, 17)  # 16 patches + the class token
    assert torch.allclose(net(x), m(x), atol=1e-6)
    assert count_params(g) == sum(p.numel() for p in m.parameters())
    # the stream (patch embedding, the MLPs' second layer) is read by layer norms: fixed
    members = unit_members(net)
    assert sorted(members) == sorted(f"encoder_layers_encoder_layer_{i}_{part}"
                                     for i in (0, 1) for part in ("self_attention", "mlp_0"))
    assert alive(net)["units"]["encoder_layers_encoder_layer_0_self_attention"] == HEADS
    kinds = {grp["name"]: grp["kind"] for grp in param_groups(net)}
    assert kinds["encoder_layers_encoder_layer_1_self_attention"] == "unit"


def test_a_zero_head_and_zero_mlp_units_are_removed_exactly():
    m, net, x = _vit()
    params = dict(net.named_parameters())
    att = "encoder_layers_encoder_layer_0_self_attention"
    mlp = "encoder_layers_encoder_layer_1_mlp_0"
    with torch.no_grad():
        for p in unit_members(net)[att]:
            params[p][1] = 0  # head 1: its q, k, v rows and output columns
        params[f"layers.{att}.qkv_weight"][2, 2 * (D // HEADS):] = 0  # head 2: values only
        params[f"layers.{att}.qkv_bias"][2, 2 * (D // HEADS):] = 0
        for p in unit_members(net)[mlp]:
            params[p][:10] = 0
    graph, compact = extract(net, inputs=x)
    assert graph.nodes[att]["heads"] == HEADS - 2 and graph.nodes[mlp]["units"] == MLP - 10
    assert (compact(x) - net(x)).abs().max() <= 1e-5
    dh = D // HEADS  # a head: q, k, v rows with biases and its output columns
    lost = 2 * (3 * dh * (D + 1) + dh * D) + 10 * ((D + 1) + D)
    assert count_params(graph) == count_params(net.graph) - lost
    assert sum(p.numel() for p in compact.parameters()) == count_params(graph)


def test_a_dead_block_gate_removes_an_encoder_block():
    m, net, x = _vit(depth=True)
    gates = sorted(net.gates)
    assert len(gates) == 4  # attention and MLP branch of both blocks
    with torch.no_grad():
        net.gates["encoder_layers_encoder_layer_1_dropout__add_3"].zero_()
    graph, compact = extract(net, inputs=x)
    gone = set(net.graph) - set(graph)
    assert "encoder_layers_encoder_layer_1_self_attention" in gone and \
        "encoder_layers_encoder_layer_1_ln_1" in gone
    assert [graph.nodes[n]["op"] for n in graph].count("attention") == 1
    assert torch.allclose(compact(x), net(x), atol=1e-5)
    assert not torch.allclose(compact(x), m(x), atol=1e-4)  # the block did contribute


def test_token_graph_round_trips_through_json():
    _, net, x = _vit()
    again = compile_graph(ArchGraph.from_json(net.graph.to_json()), net.state_dict())
    assert torch.equal(again.eval()(x), net(x))


def test_sparse_init_kills_whole_heads():
    _, net, _ = _vit()
    sparse_init(net, 0.5, seed=1)
    params = dict(net.named_parameters())
    for n, names in unit_members(net).items():
        rows = [params[p].detach().reshape(len(params[p]), -1).ne(0).any(1) for p in names]
        assert not any(r[~rows[0]].any() for r in rows)  # a head dies whole
        assert torch.equal(rows[-1], rows[0])  # and lives with its output columns
        assert 0 < int(rows[0].sum()) < len(rows[0])


def test_bad_token_input_and_unsupported_attention_are_named():
    g = ArchGraph()
    g.input("x", [4])
    g.add_op("p", "pos_embed", ["x"], tokens=3)
    g.output("o", "p")
    with pytest.raises(GraphError, match="'p'.*features, tokens"):
        g.validate()

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)  # batch_first=False: (L, N, D)

        def forward(self, x):
            t = x.flatten(2).transpose(1, 2)
            return self.attn(t, t, t)[0].mean()

    with pytest.raises(ModelImportError, match="'attn'.*batch_first=True"):
        from_module(SeqFirst(), torch.randn(2, 8, 4, 4))


def test_a_compact_vit_exports_to_every_format(tmp_path):
    _, net, x = _vit()
    with torch.no_grad():
        net.layers["encoder_layers_encoder_layer_0_self_attention"].out_weight[0] = 0
    graph, compact = extract(net, inputs=x)
    paths = export(compact, graph, tmp_path, example_input=x)  # each file reloaded, checked
    assert sorted(paths) == sorted(FORMATS)


# ---------------------------------------------------------------------- Swin
@pytest.mark.parametrize("cosine", [False, True])
def test_window_attention_matches_torchvision_shifted_and_padded(cosine):
    from torchvision.models.swin_transformer import shifted_window_attention
    torch.manual_seed(0)
    h, dh, c = 2, 4, 8  # (torchvision needs c = h * dh)
    att = WindowAttention(c, c, h, dh, window=[4, 4], shift=[2, 2], cosine=cosine).eval()
    with torch.no_grad():
        for p in att.parameters():
            p.normal_()
    x = torch.randn(2, c, 10, 9)  # padded to 12 x 12: 9 windows, 4 of them masked
    table = att.rel_table.t()  # torchvision's layout: (entries, heads), gathered by index
    bias = table[att.index.flatten()].view(16, 16, h).permute(2, 0, 1)[None]
    b = att.qkv_bias.view(h, 3, dh).transpose(0, 1).flatten()
    want = shifted_window_attention(
        x.permute(0, 2, 3, 1), att.qkv_weight.view(h, 3, dh, c).transpose(0, 1).reshape(-1, c),
        att.out_weight.flatten(0, 1).t(), bias, [4, 4], h, [2, 2], qkv_bias=b,
        proj_bias=att.out_bias, logit_scale=att.logit_scale.view(h, 1, 1) if cosine else None,
        training=False)
    assert torch.allclose(att(x), want.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("v2", [False, True])
def test_swin_imports_and_loses_heads_mlp_units_and_a_block_exactly(v2):
    from torchvision.models import swin_transformer as sw
    torch.manual_seed(0)
    kw = dict(block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2) if v2 else {}
    m = sw.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=3, **kw).eval()
    nn.init.normal_(m.head.weight)
    x = torch.randn(2, 3, 32, 32)
    net = from_module(m, x, depth=True)
    ops = [net.graph.nodes[n]["op"] for n in net.graph]
    assert ops.count("window_attention") == 4 and ops.count("patch_merge") == 1
    members = unit_members(net)
    heads = [n for n in members if net.graph.nodes[n]["op"] == "window_attention"]
    assert len(heads) == 4 and len(members) == 8  # + the 4 MLPs' hidden layers
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, names in members.items():
            for p in names:
                params[p][: len(params[names[0]]) // 2] = 0
        u = "shifted_window_attention_3"  # its branch's gate: down to the residual add
        while net.graph.nodes[v := next(iter(net.graph.successors(u)))]["op"] != "add":
            u = v
        net.gates[f"{u}__{v}"].zero_()
    graph, compact = extract(net, inputs=x)
    assert "shifted_window_attention_3" not in graph
    assert [graph.nodes[n]["heads"] for n in heads[:3]] == [1, 1, 2]
    assert (compact(x) - net(x)).abs().max() <= 1e-5
    assert sum(p.numel() for p in compact.parameters()) == count_params(graph)


def test_a_silent_head_kept_for_a_minimum_can_train_again():
    m, net, x = _vit()
    att = "encoder_layers_encoder_layer_0_self_attention"
    params = dict(net.named_parameters())
    with torch.no_grad():
        for p in unit_members(net)[att]:
            params[p].zero_()  # every head dead; --min-keep asks for one (silent) head
    graph, compact = extract(net, inputs=x, min_units={att: 1})
    layer = compact.layers[att]
    assert graph.nodes[att]["heads"] == 1 and not layer.out_weight.any()
    assert layer.qkv_weight[:, 2 * (D // HEADS):].ne(0).all()  # values: no saddle at zero
    assert torch.allclose(compact(x), net(x), atol=1e-5)  # the output is still exactly zero
    compact(x).square().sum().backward()
    assert layer.out_weight.grad.ne(0).any()
