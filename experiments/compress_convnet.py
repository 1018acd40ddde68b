"""compress.py's benchmark (issue 27) on the Fashion-MNIST ConvNet: conv5x5(64) - pool -
conv5x5(64) - pool - fc(128) - fc(10) (``--model resnet18``: torchvision's resnet18 with a
one-channel stem; ``--model vit``: torchvision's VisionTransformer, 4 blocks), trained here with Adam for 10 epochs, then compressed to a MACs fraction
by each method with 3 more epochs:

* ``archdisc``: ``run_discover`` from the trained weights (``--weights``), ``target_macs``,
  1 search epoch + 2 fine-tune epochs, cosine lr (compress.py's settings).
* ``tp_norm`` / ``tp_taylor``: Torch-Pruning's MetaPruner, uniform per-layer ratio (found by
  bisection to the MACs fraction), GroupMagnitudeImportance(p=2) / GroupTaylorImportance
  (gradients of 10 training batches), then 3 epochs of Adam with the same cosine lr.
* ``scratch``: the widths of ``tp_norm`` trained 13 epochs from a fresh init (resnet18: the
  pruned model with every layer's parameters reset).

MACs of every model are counted by archdisc (``count_macs`` of the imported graph).

    python experiments/compress_convnet.py --seeds 0      # -> results/compress_convnet_parts/
    python experiments/compress_convnet.py --merge        # -> results/compress_convnet.json
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, acc, atomic_write_text, fit, read_parts,  # noqa: E402
                    set_threads, workdir)
from compress import BATCH, DENSE_EPOCHS, EPOCHS, FRACS, finetune, summarise  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

PARTS = RESULTS / "compress_convnet_parts"
EXAMPLE = torch.zeros(2, 1, 28, 28)


def convnet(c1=64, c2=64, f=128) -> nn.Sequential:
    """The user's model (``--model compress_convnet:convnet``)."""
    return nn.Sequential(nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * c2, f),
                         nn.ReLU(), nn.Linear(f, 10))


def resnet18() -> nn.Module:
    """torchvision's resnet18 for 1 x 28 x 28 inputs (``--model compress_convnet:resnet18``)."""
    import torchvision
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def vit() -> nn.Module:
    """torchvision's VisionTransformer for 1 x 28 x 28 inputs: 7 x 7 patches of 4 x 4, 4
    blocks of width 64 with 4 heads and MLPs of 128 (``--model compress_convnet:vit``)."""
    import torchvision
    model = torchvision.models.VisionTransformer(28, 4, num_layers=4, num_heads=4,
                                                 hidden_dim=64, mlp_dim=128, num_classes=10)
    model.conv_proj = nn.Conv2d(1, 64, 4, 4)
    return model


MODELS = {"convnet": convnet, "resnet18": resnet18, "vit": vit}


def fresh(model, seed) -> nn.Module:
    """``model``'s architecture with every layer re-initialised."""
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model.train()


def widths(model) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] + \
        [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]


def macs(model) -> int:
    from archdisc import from_module
    from archdisc.graph.archgraph import count_macs
    return count_macs(from_module(copy.deepcopy(model), EXAMPLE).graph)


def tp_prune(dense, how, frac, data):
    """Torch-Pruning at the uniform ratio whose model has <= frac of the dense MACs."""
    import torch_pruning as tp
    full = macs(dense)

    def pruned(ratio):
        model = copy.deepcopy(dense)
        if how == "taylor":
            imp = tp.importance.GroupTaylorImportance()
            x, y = data.train.tensors
            model.zero_grad()
            for i in range(10):
                nn.functional.cross_entropy(model(x[i * BATCH:(i + 1) * BATCH]),
                                            y[i * BATCH:(i + 1) * BATCH]).backward()
        else:
            imp = tp.importance.GroupMagnitudeImportance(p=2)
        tp.pruner.MetaPruner(model, EXAMPLE, imp, pruning_ratio=ratio,
                             ignored_layers=ignored(model)).step()
        model.zero_grad(set_to_none=True)
        return model

    lo, hi = 0.0, 0.95  # pruned(lo) is over the budget, pruned(hi) within it (at 0.99
    # a 64-channel conv would keep 0.6 channels, which Torch-Pruning declines: not cut at all)
    if macs(pruned(hi)) > frac * full:
        return None  # out of its reach
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(pruned(mid)) <= frac * full else (mid, hi)
    return pruned(hi)


def ignored(model) -> list:
    """The output layer; for the ViT also the patch embedding: Torch-Pruning would narrow the
    residual stream, which torchvision's VisionTransformer cannot run (its hidden_dim is
    fixed), so it prunes the MLPs alone and reaches 59% of the MACs at most."""
    return [list(model.modules())[-1]] + ([model.conv_proj] if hasattr(model, "conv_proj")
                                          else [])


def run_seed(seed, limit, archdisc_opts: dict, methods, name="convnet", fracs=FRACS):
    from safetensors.torch import save_file

    from archdisc import Config, run_discover
    from archdisc.data import load_data
    data = load_data("fashion-mnist", seed=seed, limit=limit)
    base = workdir()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dense = fit(MODELS[name](), data, DENSE_EPOCHS, seed).eval()
    weights = base / f"{name}_s{seed}.safetensors"
    save_file(dense.state_dict(), str(weights))
    full = macs(dense)
    rows = [{"method": "dense", "seed": seed, "macs": 1.0, "test": acc(dense, data.test),
             "seconds": round(time.perf_counter() - t0, 1)}]
    print(json.dumps(rows[-1]), flush=True)

    def row(method, frac, model, t, **extra):
        rows.append({"method": method, "seed": seed, "frac": frac, "macs": macs(model) / full,
                     "widths": widths(model), "test": acc(model.eval(), data.test),
                     "seconds": round(time.perf_counter() - t, 1), **extra})
        print(json.dumps(rows[-1]), flush=True)

    for frac in fracs:
        for how in ("norm", "taylor") if "tp" in methods else ():
            t = time.perf_counter()
            small = tp_prune(dense, how, frac, data)
            if small is None:
                print(f"tp_{how} cannot reach {frac} of the MACs", flush=True)
                continue
            before = acc(small.eval(), data.test)
            row(f"tp_{how}", frac, finetune(small.train(), data, seed), t,
                test_before_finetune=before)
            if how == "norm":
                shape, small_norm = widths(small), small
        if "scratch" in methods:
            t = time.perf_counter()
            torch.manual_seed(seed)
            scratch = convnet(*shape) if name == "convnet" else fresh(small_norm, seed)
            row("scratch", frac, fit(scratch, data, DENSE_EPOCHS + EPOCHS, seed), t)
        if "archdisc" not in methods:
            continue
        t = time.perf_counter()
        cfg = Config(**{**dict(model=f"compress_convnet:{name}", weights=str(weights),
                               target_macs=frac, data="fashion-mnist", limit=limit, seed=seed,
                               epochs=1, finetune=2, finetune_schedule="cosine", select="none",
                               lr=1e-3, control_every=10, batch_size=BATCH, device="cpu"),
                        **archdisc_opts})
        rep = run_discover(cfg, base / f"archdisc_{name}_{frac}_s{seed}", force=True,
                           progress=False)
        rows.append({"method": "archdisc", "seed": seed, "frac": frac, "config": archdisc_opts,
                     "macs": rep["macs"]["compact"] / rep["macs"]["supernet"],
                     "widths": [u["alive"] for u in rep["units"].values()],
                     "test": rep["test"]["compact"],
                     "test_before_finetune": rep["test"]["compact_extracted"],
                     "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def merge(started, tag="", archdisc_from=None):
    """The summary of the parts ``s<seed><tag>.json``; with ``archdisc_from``, archdisc's rows
    come from the parts of that tag instead (a re-run of archdisc alone)."""
    found = read_parts(PARTS, f"s?{tag}.json")
    rows = [r for part in found for r in part["rows"]]
    if archdisc_from is not None:
        again = read_parts(PARTS, f"s?{archdisc_from}.json")
        found += again
        rows = [r for r in rows if r["method"] != "archdisc"] + \
            [r for part in again for r in part["rows"] if r["method"] == "archdisc"]
    return summarise(f"compress_convnet{tag}", rows, [p["command"] for p in found], started,
                     "Fashion-MNIST, ConvNet 64-64-128 trained 10 epochs (Adam), then 3 epochs "
                     "per method; 1 CPU thread")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--limit", type=int, default=None, help="training samples (default: all)")
    p.add_argument("--archdisc", default="{}", help="JSON config overrides for archdisc")
    p.add_argument("--methods", nargs="+", default=["tp", "scratch", "archdisc"])
    p.add_argument("--model", choices=sorted(MODELS), default="convnet")
    p.add_argument("--fracs", nargs="+", type=float, default=list(FRACS),
                   help="MACs fractions to compress to")
    p.add_argument("--tag", default="", help="part file name suffix (a variant's pilot)")
    p.add_argument("--archdisc-from", help="with --merge: archdisc's rows from this tag")
    p.add_argument("--merge", action="store_true")
    args = p.parse_args()
    set_threads(1)
    started = time.perf_counter()
    if args.merge:
        print(merge(started, args.tag, args.archdisc_from))
        return
    PARTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        rows = run_seed(seed, args.limit, json.loads(args.archdisc), args.methods, args.model,
                        args.fracs)
        part = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "limit": args.limit,
                "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv])}
        atomic_write_text(PARTS / f"s{seed}{args.tag}.json", json.dumps(part, indent=2) + "\n")


if __name__ == "__main__":
    main()
