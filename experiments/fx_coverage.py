"""Coverage: one model of every torchvision classification CNN family through from_module.

For each model (random weights, ``weights=None``: nothing is downloaded): build it, import
it with ``archdisc.from_module`` (checked inside against the module on the example input),
zero a random half of the units of every unit group (``archdisc.sparsity.groups.unit_members``:
the weight rows / filters, biases and the grouped BatchNorm shifts and depthwise filters),
extract, and compare the compact model with the zeroed supernet on fresh inputs (max abs
difference; ``extract`` also verifies node by node, each node against its own scale).

Each model runs twice: with torchvision's initial BatchNorms (running mean 0, variance 1,
scale 1, shift 0: a zeroed unit stays exactly zero, so this shows what can be removed),
and with every BatchNorm given random running statistics and affine parameters, dead units
included (``random BN``: a zeroed unit becomes a non-zero constant after its BatchNorm,
which extraction must fold into a bias or keep; the harder test of exactness, and a
pessimistic size, since training drives a dead channel's running mean to 0).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/fx_coverage.py [--models resnet18 ...]
        [--bn default|random|both] [--out experiments/results/fx_coverage.json]

``--all``: every torchvision classification model (``torchvision.models.list_models``), the
smallest input its family allows (224 for the attention models), torchvision's BatchNorms
(-> results/fx_coverage_all.json, written after each model). ``--timm``: the 40 timm
architectures of ``TIMM`` (``timm.create_model(name, pretrained=False)``, each at its own input
size; -> results/fx_coverage_timm.json).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import traceback

import torch
import torchvision
import torchvision.models as tvm

from common import RESULTS, atomic_write_text, set_threads
from archdisc import count_params, from_module
from archdisc.extract import extract
from archdisc.sparsity.groups import unit_members

# family -> (constructor, keyword arguments, input side): the smallest input each allows
MODELS = {
    "alexnet": (tvm.alexnet, {}, 64),
    "vgg11": (tvm.vgg11, {}, 32),
    "resnet18": (tvm.resnet18, {}, 32),
    "resnext50_32x4d": (tvm.resnext50_32x4d, {}, 32),
    "wide_resnet50_2": (tvm.wide_resnet50_2, {}, 32),
    "densenet121": (tvm.densenet121, {}, 32),
    "mobilenet_v2": (tvm.mobilenet_v2, {}, 32),
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, {}, 32),
    "efficientnet_b0": (tvm.efficientnet_b0, {}, 32),
    "regnet_x_400mf": (tvm.regnet_x_400mf, {}, 32),
    "regnet_y_400mf": (tvm.regnet_y_400mf, {}, 32),
    "mnasnet0_5": (tvm.mnasnet0_5, {}, 32),
    "shufflenet_v2_x0_5": (tvm.shufflenet_v2_x0_5, {}, 32),
    "squeezenet1_0": (tvm.squeezenet1_0, {}, 32),
    "googlenet": (tvm.googlenet, {"aux_logits": False, "init_weights": False}, 64),
    "inception_v3": (tvm.inception_v3, {"aux_logits": False, "init_weights": False}, 75),
    "convnext_tiny": (tvm.convnext_tiny, {}, 32),
}

# 40 popular timm architectures: 28 CNNs, 12 transformers / MLPs / hybrids
TIMM = """resnet18 resnet50 seresnet50 resnext50_32x4d wide_resnet50_2 res2net50_26w_4s resnest14d
densenet121 vgg11 inception_v3 dla34 cspresnet50 hrnet_w18_small regnetx_002 regnety_002 repvgg_a0
ese_vovnet19b_dw efficientnet_b0 tf_efficientnetv2_b0 mobilenetv2_100 mobilenetv3_large_100
mobilenetv4_conv_small mnasnet_100 mixnet_s ghostnet_100 rexnet_100 lcnet_050 convnext_atto
convnextv2_atto vit_tiny_patch16_224 deit_tiny_distilled_patch16_224 vit_small_patch16_224
swin_tiny_patch4_window7_224 beit_base_patch16_224 levit_128s mobilevit_xs poolformer_s12
mixer_b16_224 efficientformer_l1 edgenext_xx_small""".split()


def timm_models() -> dict:
    """The ``TIMM`` architectures as ``MODELS`` entries (random weights, their input size)."""
    import timm

    def build(name, weights=None):
        return timm.create_model(name, pretrained=False)
    return {name: (functools.partial(build, name), {},
                   timm.get_pretrained_cfg(name).input_size[-1]) for name in TIMM}


def hf_models() -> dict:
    """Hugging Face ViT, BERT, GPT-2 and Llama (grouped-query attention) built from small
    configs (nothing downloaded): name -> (model, example input)."""
    import transformers as T
    small = {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    return {
        "hf_vit": (lambda: T.ViTForImageClassification(T.ViTConfig(
            hidden_size=64, image_size=32, patch_size=8, num_labels=10, **small)),
            torch.randn(2, 3, 32, 32)),
        "hf_bert": (lambda: T.BertForSequenceClassification(T.BertConfig(
            hidden_size=64, vocab_size=100, max_position_embeddings=32, num_labels=3, **small)),
            ids),
        "hf_gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)), ids),
        "hf_llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(
            hidden_size=64, num_key_value_heads=2, vocab_size=100, max_position_embeddings=32,
            **small)), ids)}


@torch.no_grad()
def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.uniform_(0.5, 1.5, generator=gen)
            m.bias.uniform_(-0.2, 0.2, generator=gen)


@torch.no_grad()
def zero_half(net, gen) -> tuple[int, int]:
    """Zero a random half of every unit group; returns (groups, units zeroed)."""
    params = dict(net.named_parameters())
    groups = zeroed = 0
    for n, names in unit_members(net).items():
        units = params[names[0]].shape[0]
        dead = torch.randperm(units, generator=gen)[: units // 2]
        for p in names:
            params[p][dead] = 0
        groups, zeroed = groups + 1, zeroed + len(dead)
    return groups, zeroed


def every_model() -> dict:
    """Every torchvision classification model as ``MODELS`` entries."""
    sides = {"alexnet": 64, "googlenet": 64, "inception_v3": 75, "vit": 224, "swin": 224,
             "maxvit": 224}
    out = {}
    for name in tvm.list_models(module=tvm):
        kwargs = {"aux_logits": False, "init_weights": False} if name in (
            "googlenet", "inception_v3") else {}
        side = next((s for k, s in sides.items() if name.startswith(k)), 32)
        out[name] = functools.partial(tvm.get_model, name), kwargs, side
    return out


def run(name: str, bn: str, seed: int) -> dict:
    ctor, kwargs, side = MODELS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    example = side if isinstance(side, torch.Tensor) else None  # a Hugging Face model's
    side = example.shape[-1] if example is not None else side
    row = {"model": name, "input": list(example.shape[1:]) if example is not None else
           [3, side, side], "imported": False, "exact": False}
    model = ctor(weights=None, **kwargs).eval() if example is None else ctor().eval()
    with torch.no_grad():  # a head initialised to zero (ViT's) would hide every difference
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.02, generator=gen)
    if bn == "random":
        randomize_bn(model, gen)
    row["params_torch"] = sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, side, side, generator=gen) if example is None else example
    t0 = time.perf_counter()
    try:
        net = from_module(model, x)
    except Exception as e:  # noqa: BLE001 - the table records why
        row["error"] = f"import: {type(e).__name__}: {e}"[:500]
        return row
    row["import_s"] = time.perf_counter() - t0
    row["imported"] = True
    row["params_before"] = count_params(net.graph)
    row["nodes"] = net.graph.number_of_nodes()
    row["ops"] = sorted({a["op"] for _, a in net.graph.nodes(data=True)})
    row["groups"], row["units_zeroed"] = zero_half(net, gen)
    xs = torch.randn(4, 3, side, side, generator=gen) if example is None or \
        example.is_floating_point() else example
    t0 = time.perf_counter()
    try:
        graph, compact = extract(net.eval(), inputs=xs)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"extract: {type(e).__name__}: {e}"[:500]
        traceback.print_exc()
        return row
    row["extract_s"] = time.perf_counter() - t0
    with torch.no_grad():
        want, got = net(xs), compact(xs)
    row["max_abs_diff"] = float((want - got).abs().max())
    row["max_abs_out"] = float(want.abs().max())
    row["exact"] = row["max_abs_diff"] <= 1e-5 * max(1.0, row["max_abs_out"])
    row["params_after"] = count_params(graph)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--all", action="store_true", help="every torchvision classification model")
    ap.add_argument("--timm", action="store_true", help="the 40 timm architectures of TIMM")
    ap.add_argument("--hf", action="store_true", help="Hugging Face ViT, BERT, GPT-2, Llama")
    ap.add_argument("--bn", choices=("default", "random", "both"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "fx_coverage.json"))
    args = ap.parse_args()
    command = "OMP_NUM_THREADS=1 .venv/bin/python experiments/fx_coverage.py " + (
        "--all" if args.all else "--timm" if args.timm else "--hf" if args.hf else (
            f"--bn {args.bn} " if args.bn != "both" else "")
        + ("--models " + " ".join(args.models) if args.models != list(MODELS) else ""))
    if args.all or args.timm or args.hf:
        kind = "all" if args.all else "timm" if args.timm else "hf"
        every = every_model() if args.all else timm_models() if args.timm else {
            name: (build, {}, x) for name, (build, x) in hf_models().items()}
        MODELS.update(every)
        args.models, args.bn = list(every), "default"
        if args.out == str(RESULTS / "fx_coverage.json"):
            args.out = str(RESULTS / f"fx_coverage_{kind}.json")
    set_threads(args.threads)
    modes = ("default", "random") if args.bn == "both" else (args.bn,)
    rows, t0 = [], time.perf_counter()
    print(f"{'model':<20}{'BN':>8}{'imported':>9}{'exact':>7}{'max|diff|':>11}{'max|out|':>10}"
          f"{'params before -> after':>30}{'kept':>7}{'import s':>9}{'extract s':>10}")
    for name in args.models:
        for bn in modes:
            row = run(name, bn, args.seed)
            row["bn"] = bn
            rows.append(row)
            head = f"{name:<20}{bn:>8}{'yes' if row['imported'] else 'no':>9}"
            if row["exact"]:
                print(f"{head}{'yes':>7}{row['max_abs_diff']:>11.2g}{row['max_abs_out']:>10.2g}"
                      f"{row['params_before']:>16,} -> {row['params_after']:>10,}"
                      f"{100 * row['params_after'] / row['params_before']:>6.1f}%"
                      f"{row['import_s']:>9.2f}{row['extract_s']:>10.2f}", flush=True)
            else:
                print(f"{head}{'no':>7}  "
                      f"{row.get('error', 'max |diff| %.3g' % row.get('max_abs_diff', 0))}",
                      flush=True)
        out = {"command": command, "torch": torch.__version__,
               "torchvision": torchvision.__version__,
               "timm": getattr(sys.modules.get("timm"), "__version__", None),
               "transformers": getattr(sys.modules.get("transformers"), "__version__", None),
               "threads": args.threads, "bn": args.bn,
               "seed": args.seed, "wall_s": time.perf_counter() - t0, "rows": rows}
        atomic_write_text(args.out, json.dumps(out, indent=1))  # after each model
    print(f"{sum(r['exact'] for r in rows)}/{len(rows)} runs exact, "
          f"{time.perf_counter() - t0:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
