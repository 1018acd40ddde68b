"""Discovery vs. pruning vs. scratch on the Fashion-MNIST ConvNet (issue 9, ConvNet half).

Supernet: search_spaces.convnet() (conv5x5 64 -> pool -> conv5x5 64 -> pool -> fc 128 -> 10,
236,618 params). Training subset 20,000 images, val/test 4,000 each (``limit=20000``).
Equal compact parameters and 13 total epochs per method, batch 128, one CPU thread:

* ``archdisc``: run_discover, AdaBreg unit groups, target_params = budget (lam controller),
  lr 3e-3, 5 search epochs + 8 epochs cosine Adam fine-tune (MLP round-2 recipe).
* ``prune`` / ``prune_ftcosine``: dense Adam (lr 1e-3) 10 epochs -> keep the top-k output
  channels / neurons of conv1, conv2, fc1 by the L2 norm of (filter/row, bias), k = the
  archdisc widths -> 3 epochs Adam fine-tune, constant lr 1e-3 or cosine 1e-3 -> 0.
* ``scratch``: the same widths from scratch, Adam lr 1e-3, 13 epochs.

    .venv/bin/python experiments/convnet_vs_prune.py --seeds 0 1
    .venv/bin/python experiments/convnet_vs_prune.py --seeds 0 --tag archdisc_deep0.5 \
        --archdisc '{"lam_layers": {"conv2": 0.5, "fc1": 0.5}}'
    .venv/bin/python experiments/convnet_vs_prune.py --merge

Each seed writes experiments/results/convnet_vs_prune_parts/[<tag>_]s<seed>.json; ``--merge``
writes experiments/results/convnet_vs_prune.json and convnet_vs_prune.png (RESULTS.md section 7).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, acc, atomic_write_text, fit, mean_std,  # noqa: E402
                    n_params, read_parts, set_threads, workdir, write_results)

import torch  # noqa: E402

SUPERNET = 236_618
BUDGETS = [23_662, 59_155]  # 10% and 25% of the supernet
LIMIT, BATCH, DENSE_EPOCHS, FT_EPOCHS = 20_000, 128, 10, 3  # baselines: Adam lr 1e-3 (common.fit)
PARTS = RESULTS / "convnet_vs_prune_parts"
ARCHDISC = dict(select="none", dense_epochs=0, space="convnet", data="fashion-mnist", limit=LIMIT, optimizer="adabreg",
                group_mode="unit", lr=3e-3, lam=0.05, density=0.2, epochs=5, finetune=8,
                finetune_lr=1e-3, finetune_schedule="cosine", batch_size=BATCH, device="cpu")
LAYERS = ("conv1", "conv2", "fc1")


def convnet(widths):
    from archdisc.graph.compile import ArchNet
    from search_spaces import convnet as space
    return ArchNet(space(channels=tuple(widths[:2]), hidden=widths[2]).validate())


@torch.no_grad()
def prune(dense, widths, data):
    """Top-k units of conv1/conv2/fc1 by L2 norm of (output filter or row, bias); returns the
    small model and the max |difference| to the dense model with the removed units zeroed."""
    small, zeroed = convnet(widths), convnet((64, 64, 128))
    zeroed.load_state_dict(dense.state_dict())
    keep = {}
    for name, k in zip(LAYERS, widths):
        w, b = dense.layers[name].weight, dense.layers[name].bias
        norms = torch.cat([w.flatten(1), b[:, None]], 1).norm(dim=1)
        keep[name] = norms.topk(k).indices.sort().values
        drop = torch.ones(len(b), dtype=torch.bool)
        drop[keep[name]] = False
        zeroed.layers[name].weight[drop] = 0
        zeroed.layers[name].bias[drop] = 0
    c2 = keep["conv2"]
    flat = (c2[:, None] * 16 + torch.arange(16)).flatten()  # channel-major 4x4 maps
    cols = {"conv1": slice(None), "conv2": keep["conv1"], "fc1": flat, "fc2": keep["fc1"]}
    for name in (*LAYERS, "fc2"):
        src, dst = dense.layers[name], small.layers[name]
        rows = keep.get(name, slice(None))
        dst.weight.copy_(src.weight[rows][:, cols[name]])
        dst.bias.copy_(src.bias[rows])
    x = data.val.tensors[0][:512]
    small.eval(), zeroed.eval()
    diff = (small(x) - zeroed(x)).abs().max().item()
    assert diff < 1e-4, f"pruned model differs from the zeroed dense model by {diff}"
    return small, diff


def run_archdisc(data, seed, budget, overrides, base, tag="archdisc"):
    from archdisc import Config, run_discover
    cfg = Config(**{**ARCHDISC, **overrides, "seed": seed, "target_params": budget})
    t0 = time.perf_counter()
    out = base / f"{tag}_s{seed}_{budget}"
    r = run_discover(cfg, out, force=True, progress=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    return {"method": tag, "seed": seed, "budget": budget,
            "params": r["params"]["compact"],
            "widths": [r["units"][n]["alive"] for n in LAYERS],
            "test_before_finetune": r["test"]["compact_extracted"], "test": r["test"]["compact"],
            "val": r["val"]["compact"], "epochs": r["epochs_total"], "lam_final": r["lam_final"],
            "alive_per_epoch": [m["alive"] for m in metrics],
            "params_per_epoch": [m.get("params") for m in metrics],
            "val_per_epoch": [m["val_accuracy"] for m in metrics],
            "seconds": round(time.perf_counter() - t0, 1),
            "config": {k: v for k, v in cfg.to_dict().items()
                       if k in {**ARCHDISC, **overrides} or k in ("seed", "target_params")}}


def run_seed(seed, overrides, base):
    from archdisc.data import load_data
    data = load_data("fashion-mnist", seed=seed, limit=LIMIT)
    rows = []
    for budget in BUDGETS:
        rows.append(run_archdisc(data, seed, budget, overrides, base))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dense = fit(convnet((64, 64, 128)), data, DENSE_EPOCHS, seed)
    t_dense = time.perf_counter() - t0
    rows.append({"method": "dense", "seed": seed, "params": n_params(dense),
                 "widths": [64, 64, 128], "test": acc(dense, data.test),
                 "val": acc(dense, data.val), "epochs": DENSE_EPOCHS,
                 "seconds": round(t_dense, 1)})
    print(json.dumps(rows[-1]), flush=True)
    for ad in [r for r in rows if r["method"] == "archdisc"]:
        widths = ad["widths"]
        for schedule in ("constant", "cosine"):
            t1 = time.perf_counter()
            small, diff = prune(dense, widths, data)
            before = acc(small, data.test)
            fit(small, data, FT_EPOCHS, seed, offset=100, schedule=schedule)
            assert n_params(small) == ad["params"]
            rows.append({"method": "prune" if schedule == "constant" else "prune_ftcosine",
                         "seed": seed, "budget": ad["budget"], "params": n_params(small),
                         "widths": widths, "prune_check_maxdiff": diff,
                         "test_before_finetune": before, "test": acc(small, data.test),
                         "val": acc(small, data.val), "epochs": DENSE_EPOCHS + FT_EPOCHS,
                         "seconds": round(t_dense + time.perf_counter() - t1, 1)})
            print(json.dumps(rows[-1]), flush=True)
        torch.manual_seed(seed)
        t1 = time.perf_counter()
        model = fit(convnet(widths), data, DENSE_EPOCHS + FT_EPOCHS, seed)
        rows.append({"method": "scratch", "seed": seed, "budget": ad["budget"],
                     "params": n_params(model), "widths": widths, "test": acc(model, data.test),
                     "val": acc(model, data.val), "epochs": DENSE_EPOCHS + FT_EPOCHS,
                     "seconds": round(time.perf_counter() - t1, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def merge(started, out=RESULTS):
    found = read_parts(out / PARTS.name)
    rows = [r for part in found for r in part["rows"]]
    commands = [part["command"] for part in found]
    seconds = sum(part["seconds"] for part in found)
    summary = []
    for budget in BUDGETS:
        for method in dict.fromkeys(["archdisc", "prune", "prune_ftcosine", "scratch"]
                                    + [r["method"] for r in rows]):
            rs = [r for r in rows if r["method"] == method and r.get("budget") == budget]
            if rs:
                summary.append({"method": method, "budget": budget, "seeds": [r["seed"] for r in rs],
                                "params": mean_std(r["params"] for r in rs),
                                "widths": [r["widths"] for r in rs],
                                "test": mean_std(r["test"] for r in rs),
                                "test_before_finetune": mean_std(r["test_before_finetune"]
                                                                 for r in rs)
                                if "test_before_finetune" in rs[0] else None})
    dense = [r for r in rows if r["method"] == "dense"]
    path = write_results("convnet_vs_prune", {
        "summary": summary, "dense": mean_std(r["test"] for r in dense) if dense else None,
        "runs": rows, "part_commands": commands, "compute_seconds": round(seconds, 1),
        "archdisc_config": ARCHDISC}, seeds=sorted({r["seed"] for r in rows}), started=started,
        notes=f"Fashion-MNIST, training subset {LIMIT} (val/test {LIMIT // 5}, first 4,000 "
              "test images), ConvNet supernet 236,618 params; equal compact params and 13 "
              "epochs per method; 1 CPU thread, one process at a time on a shared 2-core "
              "machine.", out_dir=out)
    plot(summary, out)
    return path, summary


def plot(summary, out=RESULTS):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    for i, method in enumerate(methods):
        ss = [s for s in summary if s["method"] == method]
        ax.errorbar([s["params"]["mean"] / 1000 + 0.4 * (i - len(methods) / 2) for s in ss],
                    [s["test"]["mean"] for s in ss], yerr=[s["test"]["std"] for s in ss],
                    marker="o", capsize=3, label=method,
                    ls="--" if method.startswith("archdisc_") else "-")
    ax.set_xlabel("compact parameters (thousands)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST ConvNet (20k train), 13 epochs per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "convnet_vs_prune.png", dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--archdisc", default="{}", help="JSON Config overrides for archdisc")
    p.add_argument("--tag", help="run only archdisc (with --archdisc overrides), rows "
                   "named TAG, part file TAG_s<seed>.json")
    p.add_argument("--merge", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help=f"folder of the part files and results (default {RESULTS})")
    args = p.parse_args()
    parts = args.out / PARTS.name
    set_threads(1)
    started = time.perf_counter()
    if args.merge:
        path, summary = merge(started, args.out)
        for s in summary:
            print(f"{s['method']:<15} {s['budget']:>6} params {s['params']['mean']:>8.0f} "
                  f"test {s['test']['mean']:.2f} ± {s['test']['std']:.2f} (n={s['test']['n']})")
        print(path)
        return
    parts.mkdir(parents=True, exist_ok=True)
    base = workdir()
    for seed in args.seeds:
        t0 = time.perf_counter()
        if args.tag:
            from archdisc.data import load_data
            data = load_data("fashion-mnist", seed=seed, limit=LIMIT)
            rows = [run_archdisc(data, seed, b, json.loads(args.archdisc), base, args.tag)
                    for b in BUDGETS]
        else:
            rows = run_seed(seed, json.loads(args.archdisc), base)
        part = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv])}
        atomic_write_text(parts / f"{args.tag + '_' if args.tag else ''}s{seed}.json",
                          json.dumps(part, indent=2) + "\n")


if __name__ == "__main__":
    main()
