"""timm and Hugging Face models (the optional extras ``.[timm]``, ``.[hf]``; skipped when
absent): imported exactly, and with a random half of every unit group zeroed, extracted
exactly."""
import sys
from pathlib import Path

import pytest
import torch

from archdisc import count_params, extract, from_module
from archdisc.deploy.formats import FORMATS, export

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from fx_coverage import zero_half  # noqa: E402


def _half_dead_is_exact(net, x):
    groups, zeroed = zero_half(net, torch.Generator().manual_seed(0))
    graph, compact = extract(net.eval(), inputs=x)
    assert groups > 0 and count_params(graph) < count_params(net.graph)
    assert torch.allclose(compact(x), net(x), atol=1e-5)
    return graph


def _heads(graph):
    return [graph.nodes[n]["heads"] for n in graph.order() if graph.nodes[n]["op"] == "attention"]


SMALL = {"res2net50_26w_4s": {"layers": [1, 1, 1, 1]}}  # its split pieces read as spx[-1]


# tf_efficientnetv2: the padding computed from the input's size (an if on it), F.pad, F.conv2d;
# convnextv2: its global response norm; poolformer: GroupNorm(1), pool(x) - x without pads
@pytest.mark.parametrize("name, side", [("vit_tiny_patch16_224", 32), ("efficientnet_b0", 64),
                                         ("deit_tiny_distilled_patch16_224", 32),
                                         ("tf_efficientnetv2_b0", 64), ("convnextv2_atto", 32),
                                         ("poolformer_s12", 32), ("res2net50_26w_4s", 32)])
def test_timm_models(name, side):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kw = {"img_size": side, "patch_size": 8, "depth": 2} if "patch" in name else SMALL.get(name, {})
    m = timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()
    x = torch.randn(2, 3, side, side)
    net = from_module(m, x)
    assert torch.allclose(net(x), m(x), atol=1e-5)
    graph = _half_dead_is_exact(net, x)
    if "patch" in name:  # timm's written-out attention: 3 heads a block, 1 of them zeroed
        assert _heads(net.graph) == [3, 3] and _heads(graph) == [2, 2]


def test_hugging_face_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32, num_labels=3)).eval()
    ids = torch.randint(0, 100, (2, 12))
    net = from_module(m, ids)  # traced with Hugging Face's fx tracer; the mask of ones folds
    assert torch.allclose(net(ids), m(ids).logits, atol=1e-5)
    graph = _half_dead_is_exact(net, ids)
    assert _heads(net.graph) == [4, 4] and _heads(graph) == [2, 2]


def test_timm_mlp_mixer_token_mlp_and_mean_token(tmp_path):
    pytest.importorskip("timm")
    from timm.models.mlp_mixer import MlpMixer
    torch.manual_seed(0)  # 16 tokens, 24 features: the token MLP maps across the 16
    m = MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=2, embed_dim=24).eval()
    x = torch.randn(2, 3, 32, 32)
    net = from_module(m, x)
    assert torch.allclose(net(x), m(x), atol=1e-5)
    ops = [net.graph.nodes[n]["op"] for n in net.graph.order()]
    assert ops.count("token_mix") == 4 and ops.count("token_mean") == 1
    graph = _half_dead_is_exact(net, x)  # the channel MLPs' hidden units: 96 -> 48
    assert [graph.nodes[n]["units"] for n in graph.order() if n.endswith("channels_fc1")] == [48, 48]
    compact = extract(net, inputs=x)[1]
    assert sorted(export(compact, graph, tmp_path)) == sorted(FORMATS)


def test_timm_beit_relative_position_bias_layer_scale_and_mean_of_later_tokens():
    pytest.importorskip("timm")
    from timm.models.beit import Beit
    torch.manual_seed(0)
    m = Beit(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5,
             use_rel_pos_bias=True, init_values=0.1, global_pool="avg").eval()
    for mod in m.modules():  # as trained: a bias that is not zero
        if hasattr(mod, "relative_position_bias_table"):
            torch.nn.init.normal_(mod.relative_position_bias_table, std=0.5)
    x = torch.randn(2, 3, 32, 32)
    net = from_module(m, x)
    assert torch.allclose(net(x), m(x), atol=1e-5)
    nodes = [net.graph.nodes[n] for n in net.graph.order()]
    assert [a["score_bias"] for a in nodes if a["op"] == "attention"] == [17, 17]  # 16 + class
    assert [a["op"] for a in nodes].count("scale") == 4 and "later_tokens" in [a["op"] for a in nodes]
    graph = _half_dead_is_exact(net, x)
    assert _heads(graph) == [2, 2]


def test_timm_swin_shifted_windows_and_patch_merging():
    pytest.importorskip("timm")
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    m = SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2),
                        num_heads=(2, 4), num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    net = from_module(m, x)
    assert torch.allclose(net(x), m(x), atol=1e-5)
    assert not hasattr(m.layers[0].blocks[0], "window_attention")  # the module as it was
    nodes = [net.graph.nodes[n] for n in net.graph.order()]
    assert [a["shift"] for a in nodes if a["op"] == "window_attention"] == [[0, 0], [2, 2]] * 2
    assert [a["op"] for a in nodes].count("patch_merge") == 1
    graph = _half_dead_is_exact(net, x)
    assert [graph.nodes[n]["heads"] for n in graph.order()
            if graph.nodes[n]["op"] == "window_attention"] == [1, 1, 2, 2]


def test_timm_efficientformer_wider_values_and_attention_biases(tmp_path):
    pytest.importorskip("timm")
    from timm.models.efficientformer import EfficientFormer
    torch.manual_seed(0)  # its last stage: 7 x 7 tokens, 8 heads of keys 32 and values 128
    m = EfficientFormer(depths=(1, 1, 1, 2), embed_dims=(8, 16, 24, 32), num_vit=1,
                        num_classes=5).eval()
    for mod in m.modules():
        if hasattr(mod, "attention_biases"):
            torch.nn.init.normal_(mod.attention_biases, std=0.5)
    x = torch.randn(2, 3, 224, 224)
    net = from_module(m, x)
    assert torch.allclose(net(x), m(x), atol=1e-5) and m(x).abs().max() > 1e-3
    (a,) = [net.graph.nodes[n] for n in net.graph.order() if net.graph.nodes[n]["op"] == "attention"]
    assert (a["heads"], a["head_dim"], a["value_dim"], a["score_bias"]) == (8, 32, 128, 49)
    graph = _half_dead_is_exact(net, x)
    assert _heads(graph) == [4]
    compact = extract(net, inputs=x)[1]
    assert sorted(export(compact, graph, tmp_path)) == sorted(FORMATS)


def test_hugging_face_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)  # its forward takes **kwargs: traced as called with the input alone
    m = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    net = from_module(m, x)
    assert torch.allclose(net(x), m(x).logits, atol=1e-5)
    graph = _half_dead_is_exact(net, x)
    assert _heads(net.graph) == [4, 4] and _heads(graph) == [2, 2]
    one = from_module(m, x, searchable=["vit.encoder.layer.0.attention"])  # named as in m
    assert [one.graph.nodes[n]["searchable"] for n in one.graph.order()
            if one.graph.nodes[n]["op"] == "attention"] == [True, False]


def test_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)  # Conv1D layers, the tanh GELU, a causal mask left to sdpa
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32,
        attn_implementation="sdpa")).eval()
    ids = torch.randint(0, 100, (2, 12))
    with pytest.warns(UserWarning, match="lm_head.weight = transformer.wte.weight|"
                                         "transformer.wte.weight = lm_head.weight"):
        net = from_module(m, ids)  # GPT-2 ties its output layer to its embedding
    assert torch.allclose(net(ids), m(ids).logits, atol=1e-5)
    assert [net.graph.nodes[n]["causal"] for n in net.graph.order()
            if net.graph.nodes[n]["op"] == "attention"] == [True, True]
    graph = _half_dead_is_exact(net, ids)
    assert _heads(net.graph) == [4, 4] and _heads(graph) == [2, 2]


def test_hugging_face_llama_grouped_query_rotary_rmsnorm_gated_mlp(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)  # 4 query heads in 2 groups, each group sharing one key / value head
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=32,
        attn_implementation="sdpa")).eval()
    ids = torch.randint(0, 100, (2, 12))
    net = from_module(m, ids)
    assert torch.allclose(net(ids), m(ids).logits, atol=1e-5)
    att = [net.graph.nodes[n] for n in net.graph.order() if net.graph.nodes[n]["op"] == "attention"]
    assert [(a["heads"], a["group"], a["rotary"], a["causal"]) for a in att] == [(2, 2, 12, True)] * 2
    graph = _half_dead_is_exact(net, ids)  # a group: its 2 query heads, key and value together
    assert _heads(graph) == [1, 1]
    units = {n: graph.nodes[n]["units"] for n in graph.order() if "_mlp_" in n}
    for i in (0, 1):  # gate * up: a unit lives where both halves left it (<= 32 of 64)
        gate, up = (units[f"model_layers_{i}_mlp_{k}_proj"] for k in ("gate", "up"))
        assert gate == up <= 32
    compact = extract(net, inputs=ids)[1]  # exported, each format reloaded and checked
    assert sorted(export(compact, graph, tmp_path)) == sorted(FORMATS)
    deep = from_module(m, ids, depth=True)  # a decoder layer's attention branch, gated
    assert len(deep.gates) == 4
    gate = next(k for k in deep.gates if k.startswith("model_layers_1_self_attn"))
    with torch.no_grad():
        deep.gates[gate].zero_()
    graph, compact = extract(deep, inputs=ids)
    assert _heads(graph) == [2] and torch.allclose(compact(ids), deep(ids), atol=1e-5)


def test_a_response_norm_keeps_every_channel_its_mean_reads():
    pytest.importorskip("timm")
    from timm.layers.grn import GlobalResponseNorm
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), GlobalResponseNorm(8, channels_last=False),
                            torch.nn.Conv2d(8, 4, 1)).eval()
    torch.nn.init.normal_(m[1].weight), torch.nn.init.normal_(m[1].bias)
    x = torch.randn(2, 3, 5, 5)
    net = from_module(m, x)
    with torch.no_grad():
        net.layers["_2"].weight[:, 2] = 0  # channel 2's output read by nothing: its norm
        net.layers["_0"].weight[5] = 0     # still counts in the mean; channel 5 is zero
        net.layers["_0"].bias[5] = 0
    graph, compact = extract(net, inputs=x)
    assert graph.nodes["_0"]["units"] == 7 and torch.allclose(compact(x), net(x), atol=1e-5)
