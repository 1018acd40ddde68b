"""Fashion-MNIST ConvNet (2 x conv5x5-64 + fc128 + head): LinBreg and AdaBreg with kernel and
channel group sparsity vs dense Adam vs ProxSGD.

Table: test accuracy, % non-zero conv kernels and linear weights of the trained supernet,
% parameters of the compact (extracted) model, and its MACs (FLOPs ~ 2 x MACs, executed
dense: kernel sparsity inside a surviving channel is not counted as saved).

    .venv/bin/python experiments/fmnist_convnet.py --limit 20000 --epochs 15 --seeds 0
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, data_note, discover, fmt, limit_arg,  # noqa: E402
                    mean_std, nonzeros, set_threads, workdir, write_results)

# name: Config overrides (lr, lam, group_mode, density, momentum)
METHODS = {
    "AdaBreg, kernel groups": dict(optimizer="adabreg", lr=1e-3, lam=0.1, group_mode="kernel",
                                   density=0.05),
    "AdaBreg, channel groups": dict(optimizer="adabreg", lr=1e-3, lam=0.1, group_mode="unit",
                                    density=0.05),
    "LinBreg, kernel groups": dict(optimizer="linbreg", lr=0.07, lam=0.5, group_mode="kernel",
                                   density=0.05),
    "ProxSGD, kernel groups": dict(optimizer="proxsgd", lr=0.05, lam=3e-3, group_mode="kernel",
                                   density=1.0),
    "dense Adam": dict(optimizer="adam", lr=1e-3, lam=0.0, density=1.0),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--limit", type=limit_arg, default=20000, help="training subset (0: all 55k)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--finetune", type=int, default=3,
                    help="epochs of Adam (lr 1e-3) on the compact model, reported separately")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", help="folder for run folders (default: a temp dir)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    set_threads(args.threads)
    from archdisc.render import plot_growth
    from archdisc import load
    from archdisc.train import Config

    work = workdir(args.work)
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            cfg = Config(space="convnet", data="fashion-mnist", limit=args.limit, seed=seed,
                         epochs=args.epochs, lr_schedule="cosine", device="cpu",
                         finetune=args.finetune, finetune_lr=1e-3,
                         **METHODS[method])
            run = work / f"convnet_{cfg.optimizer}_{cfg.group_mode}_s{seed}"
            rep, metrics, supernet = discover(cfg, run)
            compact = load(run / "compact")
            rows.append({"method": method, "seed": seed, "config": cfg.to_dict(),
                         "test_accuracy": rep["test"]["supernet"],  # = extracted compact
                         "test_accuracy_finetuned": rep["test"]["compact"],
                         "supernet": nonzeros(supernet), "compact_nonzero": nonzeros(compact),
                         "params_compact_pct": 100 * rep["params"]["ratio"],
                         "params": rep["params"], "macs": rep["macs"],
                         "widths": {n: u["alive"] for n, u in rep["units"].items()},
                         "val_accuracy_per_epoch": [m["val_accuracy"] for m in metrics],
                         "alive_per_epoch": [m["alive"] for m in metrics],
                         "train_seconds": rep["train_seconds"]})
            r = rows[-1]
            print(f"{method} seed {seed}: test {r['test_accuracy']:.2f}% (fine-tuned "
                  f"{r['test_accuracy_finetuned']:.2f}%), kernels "
                  f"{r['supernet']['kernels_pct']:.2f}%, linear {r['supernet']['linear_weights_pct']:.2f}%, "
                  f"compact params {r['params_compact_pct']:.2f}%, MACs {rep['macs']['compact']:,} "
                  f"({rep['train_seconds']:.0f} s)", flush=True)
            if seed == args.seeds[0] and cfg.optimizer in ("adabreg", "linbreg"):
                plot_growth(run / "metrics.jsonl", RESULTS / f"fmnist_convnet_growth_"
                            f"{cfg.optimizer}_{cfg.group_mode}.png", 0)
    summary = {}
    for method in args.methods:
        rs = [r for r in rows if r["method"] == method]
        summary[method] = {
            "test_accuracy": mean_std(r["test_accuracy"] for r in rs),
            "test_accuracy_finetuned": mean_std(r["test_accuracy_finetuned"] for r in rs),
            "kernels_pct": mean_std(r["supernet"]["kernels_pct"] for r in rs),
            "linear_weights_pct": mean_std(r["supernet"]["linear_weights_pct"] for r in rs),
            "params_nonzero_pct": mean_std(r["supernet"]["params_pct"] for r in rs),
            "params_compact_pct": mean_std(r["params_compact_pct"] for r in rs),
            "macs_compact": mean_std(r["macs"]["compact"] for r in rs),
        }
    print(f"\n| method | test acc. (%) | after {args.finetune} ep. Adam fine-tune (%) | non-zero kernels (%) | non-zero linear weights (%) | "
          "compact params (%) | compact MACs |\n|---|---|---|---|---|---|---|")
    for m, s in summary.items():
        print(f"| {m} | {fmt(s['test_accuracy'])} | {fmt(s['test_accuracy_finetuned'])} | "
              f"{fmt(s['kernels_pct'])} | "
              f"{fmt(s['linear_weights_pct'])} | {fmt(s['params_compact_pct'])} | "
              f"{s['macs_compact']['mean']:,.0f} |")
    path = write_results("fmnist_convnet", {"settings": vars(args), "methods": METHODS,
                                            "summary": summary, "runs": rows},
                         seeds=args.seeds, started=started,
                         notes=f"{data_note(args.limit)}, "
                               f"{args.epochs} epochs, cosine lr, CPU {args.threads} thread(s)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
