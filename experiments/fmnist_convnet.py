"""Fashion-MNIST ConvNet (2 x conv5x5-64 + fc128 + head): LinBreg and AdaBreg with kernel and
channel group sparsity vs dense Adam vs ProxSGD.

Every method trains for the same number of epochs: ``--epochs`` of search, then
``--finetune`` epochs of Adam (cosine lr) on the extracted compact model, which keeps the
zero kernels the search left inside surviving channels; dense Adam trains for all of
them at once. Table: test accuracy after the search and after the fine-tune, % non-zero
conv kernels and linear weights of the final model (relative to the supernet), % of the
supernet's parameters in the compact model, and its MACs (FLOPs ~ 2 x MACs, executed
dense: kernel sparsity inside a surviving channel is not counted as saved).

    .venv/bin/python experiments/fmnist_convnet.py             # all methods, seeds 0 1 2
    .venv/bin/python experiments/fmnist_convnet.py --merge     # rebuild the JSON and plot

Each (method, seed) writes experiments/results/fmnist_convnet_parts/<method>_s<seed>.json;
the run (or ``--merge``) writes experiments/results/fmnist_convnet.json, fmnist_convnet.png and
the growth plots fmnist_convnet_growth_*.png (RESULTS.md section 6).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, data_note, discover, final_sparsity, fmt,  # noqa: E402
                    limit_arg, mean_std, nonzeros, read_parts, set_threads, workdir,
                    write_results)

# name: Config overrides. lam_layers: conv1 (64 kernels of 25 weights) and fc1 (whole neurons
# of c2*16 weights) at a tenth of the conv2 penalty; without it conv1 kept 4-5 real filters.
CHEAP = {"conv1": 0.1, "fc1": 0.1}
METHODS = {
    "AdaBreg, kernel groups": dict(optimizer="adabreg", lr=1e-3, lam=0.3, group_mode="kernel",
                                   density=0.05, lam_layers=CHEAP),
    "AdaBreg, channel groups": dict(optimizer="adabreg", lr=1e-3, lam=0.3, group_mode="unit",
                                    density=0.05, lam_layers=CHEAP),
    "LinBreg, kernel groups": dict(optimizer="linbreg", lr=0.07, lam=0.15, group_mode="kernel",
                                   density=0.05, lam_layers=CHEAP),
    "ProxSGD, kernel groups": dict(optimizer="proxsgd", lr=0.05, lam=3e-3, group_mode="kernel",
                                   density=1.0),
    "ProxSGD λ 1e-2, kernel groups": dict(optimizer="proxsgd", lr=0.05, lam=1e-2,
                                          group_mode="kernel", density=1.0),
    "dense Adam": dict(optimizer="adam", lr=1e-3, lam=0.0, density=1.0),
}
PARTS = RESULTS / "fmnist_convnet_parts"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10, help="search epochs")
    ap.add_argument("--finetune", type=int, default=5,
                    help="epochs of Adam (lr 1e-3, cosine) on the compact model; dense Adam "
                         "trains epochs + finetune epochs instead")
    ap.add_argument("--limit", type=limit_arg, default=None,
                    help="training subset size (default, or 0: all 55k)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", help="folder for run folders (default: a temp dir)")
    ap.add_argument("--merge", action="store_true",
                    help="only rebuild fmnist_convnet.json from the part files")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    set_threads(args.threads)
    from archdisc.plots import plot_growth
    from archdisc import load
    from archdisc import Config

    if args.merge:
        return merge(started)
    work = workdir(args.work)
    for method in args.methods:
        dense = METHODS[method]["optimizer"] == "adam"
        for seed in args.seeds:
            cfg = Config(select="none", space="convnet", data="fashion-mnist", limit=args.limit, seed=seed,
                         epochs=args.epochs + args.finetune * dense, lr_schedule="cosine",
                         device="cpu", finetune=0 if dense else args.finetune, finetune_lr=1e-3,
                         finetune_schedule="cosine", **METHODS[method])
            slug = re.sub(r"[^a-z0-9]+", "_", method.split(",")[0].lower()) + f"_{cfg.group_mode}"
            run = work / f"convnet_{slug}_s{seed}"
            rep, metrics, supernet = discover(cfg, run)
            compact = load(run / "compact")
            r = {"method": method, "seed": seed, "config": cfg.to_dict(),
                 "test_accuracy_search": rep["test"]["supernet"],  # = extracted compact
                 "test_accuracy": rep["test"]["compact"],  # after the fine-tune
                 **final_sparsity(supernet, compact),
                 "supernet_nonzero": nonzeros(supernet), "compact_nonzero": nonzeros(compact),
                 "params_compact_pct": 100 * rep["params"]["ratio"],
                 "params": rep["params"], "macs": rep["macs"],
                 "widths": {n: u["alive"] for n, u in rep["units"].items()},
                 "val_accuracy_per_epoch": [m["val_accuracy"] for m in metrics],
                 "alive_per_epoch": [m["alive"] for m in metrics],
                 "train_seconds": rep["train_seconds"],
                 "finetune_seconds": rep["finetune"]["seconds"]}
            write_results(f"{slug}_s{seed}", {"settings": vars(args), "row": r}, seeds=[seed],
                          started=started, out_dir=PARTS, notes=note(args))
            print(f"{method} seed {seed}: test {r['test_accuracy']:.2f}% (after the search "
                  f"{r['test_accuracy_search']:.2f}%), kernels {r['kernels_pct']:.2f}%, linear "
                  f"{r['linear_weights_pct']:.2f}%, compact params {r['params_compact_pct']:.2f}%, "
                  f"MACs {rep['macs']['compact']:,} ({rep['wall_seconds']:.0f} s)", flush=True)
            if seed == args.seeds[0] and not dense and cfg.optimizer != "proxsgd":
                plot_growth(run / "metrics.jsonl", RESULTS / f"fmnist_convnet_growth_"
                            f"{cfg.optimizer}_{cfg.group_mode}.png", 0)
    merge(started)


def note(args) -> str:
    return (f"{data_note(args.limit)}, {args.epochs} search + {args.finetune} fine-tune epochs "
            f"(dense Adam: all {args.epochs + args.finetune} at once), cosine lr, CPU "
            f"{args.threads} thread(s)")


def plot(rows, path):
    """Test accuracy against the final model's non-zero kernels (left) and non-zero
    parameters (right), one point per run, with the reference implementation's run."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.3), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, ref, label in ((axes[0], "kernels_pct", 3.6, "conv kernels (of 4,160)"),
                                (axes[1], "params_nonzero_pct", 3.5, "parameters (of 236,618)")):
        for method in METHODS:
            rs = [r for r in rows if r["method"] == method]
            if rs:
                ax.scatter([r[key] for r in rs], [r["test_accuracy"] for r in rs],
                           label=f"{method} ({len(rs)} seeds)")
        ax.scatter([ref], [88.0], marker="*", s=140, color="k", label="reference implementation")
        ax.axhline(89, color="0.5", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel(f"non-zero {label} of the final model, %")
        ax.grid(alpha=0.3)
    axes[0].axvspan(0, 3.5, color="0.93", zorder=0)
    axes[0].text(0.01, 89.05, "target: >= 89% at <= 3.5% kernels (shaded)", fontsize=8,
                 va="bottom", transform=axes[0].get_yaxis_transform())
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.suptitle("Fashion-MNIST ConvNet, 15 epochs: accuracy against sparsity")
    fig.savefig(path)


def merge(started):
    """Collect the part files into ``fmnist_convnet.json`` and print the table."""
    parts = read_parts(PARTS)
    rows = [p["row"] for p in parts]
    keys = ("test_accuracy", "test_accuracy_search", "kernels_pct", "linear_weights_pct",
            "params_nonzero_pct", "params_compact_pct")
    summary = {m: {k: mean_std(r[k] for r in rows if r["method"] == m) for k in keys}
               | {"macs_compact": mean_std(r["macs"]["compact"] for r in rows
                                           if r["method"] == m)}
               for m in METHODS if any(r["method"] == m for r in rows)}
    print("\n| method | test acc. (%) | after the search (%) | non-zero kernels (%) | "
          "non-zero linear weights (%) | compact params (%) | compact MACs |\n"
          "|---|---|---|---|---|---|---|")
    for m, s in summary.items():
        print(f"| {m} | {fmt(s['test_accuracy'])} | {fmt(s['test_accuracy_search'])} | "
              f"{fmt(s['kernels_pct'])} | {fmt(s['linear_weights_pct'])} | "
              f"{fmt(s['params_compact_pct'])} | {s['macs_compact']['mean']:,.0f} |")
    plot(rows, RESULTS / "fmnist_convnet.png")
    path = write_results("fmnist_convnet", {
        "methods": METHODS, "summary": summary, "runs": rows,
        "part_commands": sorted({p["command"] for p in parts})},
        seeds=sorted({r["seed"] for r in rows}), started=started, out_dir=RESULTS,
        notes="; ".join(sorted({p["notes"] for p in parts})))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
