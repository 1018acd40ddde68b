"""Skip encoder: denoising Fashion-MNIST with ``skip_mlp`` (6 blocks of 784, every earlier
state gated into every later block), trained with AdaBreg from 1% alive neurons.

Records alive units per layer over the epochs, which skip gates survive with a skip
penalty (lam_edge = edge_scale * lam; the reference used 28 * lam) and without one
(lam_edge = 0), and the PSNR of the compact model against a dense autoencoder with the
discovered widths (no skips) trained with Adam for the same epochs.

    .venv/bin/python experiments/skip_encoder.py --seeds 0 1 2 --limit 10000 --epochs 20

Writes experiments/results/skip_encoder<--suffix>.json and its plots (skip_encoder_growth_*,
skip_encoder_widths*, skip_encoder_compact_*; RESULTS.md section 6).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, data_note, discover, fmt, limit_arg,  # noqa: E402
                    mean_std, set_threads, workdir, write_results)


def layer_widths(report):
    return [u["alive"] for n, u in report["units"].items() if n.startswith("fc")]


def bar_chart(runs, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 3.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    for k, (label, reps) in enumerate(runs.items()):
        ws = [layer_widths(r) for r in reps]
        ms = [mean_std(col) for col in zip(*ws)]
        xs = [i + (k - 0.5) * 0.38 for i in range(len(ms))]
        ax.bar(xs, [m["mean"] for m in ms], 0.38, yerr=[m["std"] for m in ms], capsize=3,
               label=label)
    ax.set_xticks(range(len(ms)), [f"fc{i + 1}" for i in range(len(ms))])
    ax.set_ylabel(f"alive neurons (of 784), mean ± std over {len(ws)} seeds")
    ax.set_title("Discovered widths of the skip encoder")
    ax.legend(fontsize=8)
    fig.savefig(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--limit", type=limit_arg, default=10000, help="training subset (0: all 55k)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lam", type=float, default=0.07)
    ap.add_argument("--edge-scale", type=float, default=28.0,
                    help="skip penalty lam_edge = edge_scale * lam (reference: 28)")
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--target-density", type=float,
                    help="size budget as a fraction of the supernet: lam is steered to it")
    ap.add_argument("--dense-epochs", type=int,
                    help="the search's first epochs with every unit alive, lam 0; then cut "
                         "to --target-density from those weights (unset: discover's default)")
    ap.add_argument("--group-weight", default="auto",
                    help="discover's group_weight (fisher: units cut by importance per cost)")
    ap.add_argument("--finetune", type=int, default=0,
                    help="the last this many of --epochs fine-tune the compact model (Adam, "
                         "cosine lr) instead of searching; the dense baseline trains all --epochs")
    ap.add_argument("--noise-sigma", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", help="folder for run folders (default: a temp dir)")
    ap.add_argument("--only-penalty", action="store_true", help="skip the lam_edge = 0 runs")
    ap.add_argument("--suffix", default="", help="appended to every output file name")
    ap.add_argument("--select", choices=["none", "shrink"], default="none",
                    help="discover's select stage for the skip_mlp runs (the recorded tables "
                         "above were made with none; shrink is discover's default)")
    args = ap.parse_args(argv)
    sfx = args.suffix
    started = time.perf_counter()
    set_threads(args.threads)
    from archdisc.graph import ArchGraph
    from archdisc.plots import plot_growth
    from archdisc.render import render
    from archdisc import Config

    work = workdir(args.work)
    common = dict(data="fashion-mnist", task="denoising", limit=args.limit,
                  noise_sigma=args.noise_sigma, device="cpu")
    variants = {"skip penalty": args.edge_scale * args.lam, "no skip penalty": 0.0}
    if args.only_penalty:
        del variants["no skip penalty"]
    runs = {v: [] for v in variants}
    rows = []
    for seed in args.seeds:
        for variant, lam_edge in variants.items():
            cfg = Config(select=args.select, space="skip_mlp", seed=seed, optimizer="adabreg", lr=args.lr,
                         lam=args.lam, lam_edge=lam_edge, density=args.density,
                         target_density=args.target_density, dense_epochs=args.dense_epochs,
                         group_weight=args.group_weight, epochs=args.epochs - args.finetune,
                         finetune=args.finetune, finetune_schedule="cosine", finetune_lr=args.lr,
                         **common)
            tag = "skip" if lam_edge else "noskip"
            run = work / f"skip_encoder_{tag}_s{seed}"
            rep, metrics, _ = discover(cfg, run)
            widths = [w for w in layer_widths(rep) if w > 0]
            dense = Config(select="none", space="mlp", space_options={"widths": [784, *widths, 784]},
                           seed=seed, optimizer="adam", lr=args.lr, lam=0.0, density=1.0,
                           epochs=args.epochs, finetune=0, **common)
            drep, _, _ = discover(dense, work / f"dense_ae_{tag}_s{seed}")
            runs[variant].append(rep)
            rows.append({"variant": variant, "seed": seed, "lam_edge": lam_edge,
                         "psnr_compact": rep["test"]["compact"],
                         "psnr_supernet": rep["test"]["supernet"],
                         "psnr_dense_same_widths": drep["test"]["compact"],
                         "widths": layer_widths(rep), "params_compact": rep["params"]["compact"],
                         "params_supernet": rep["params"]["supernet"],
                         "params_dense": drep["params"]["compact"],
                         "gates_kept": rep["edges"]["kept"], "nodes_removed": rep["nodes_removed"],
                         "alive_per_epoch": [m["alive"] for m in metrics],
                         "alive_edges_per_epoch": [m["alive_edges"] for m in metrics],
                         "val_psnr_per_epoch": [m["val_psnr"] for m in metrics],
                         "train_seconds": rep["train_seconds"],
                         "select_seconds": rep["select"]["seconds"],
                         "select_path": [{k: s[k] for k in ("widths", "metric", "se", "params",
                                                             "chosen")}
                                         for s in rep["select"]["path"]]})
            print(f"seed {seed} {variant}: PSNR compact {rep['test']['compact']:.2f} dB vs "
                  f"dense same widths {drep['test']['compact']:.2f} dB; widths "
                  f"{layer_widths(rep)}; gates kept {len(rep['edges']['kept'])}", flush=True)
            if seed == args.seeds[0]:
                n_edges = len(rep["edges"]["kept"]) + len(rep["edges"]["removed"])
                plot_growth(run / "metrics.jsonl", RESULTS / f"skip_encoder_growth_{tag}{sfx}.png",
                            n_edges)
                svg = render(ArchGraph.from_json(run / "compact.json"), run / "compact.svg",
                             supernet=ArchGraph.from_json(run / "supernet.json"))
                shutil.copy(svg, RESULTS / f"skip_encoder_compact_{tag}{sfx}.svg")
    bar_chart(runs, RESULTS / f"skip_encoder_widths{sfx}.png")

    summary = {}
    for variant in variants:
        rs = [r for r in rows if r["variant"] == variant]
        gates = {}
        for r in rs:
            for u, v in r["gates_kept"]:
                gates[f"{u}->{v}"] = gates.get(f"{u}->{v}", 0) + 1
        summary[variant] = {
            "psnr_compact": mean_std(r["psnr_compact"] for r in rs),
            "psnr_dense_same_widths": mean_std(r["psnr_dense_same_widths"] for r in rs),
            "widths": [mean_std(c) for c in zip(*(r["widths"] for r in rs))],
            "params_compact": mean_std(r["params_compact"] for r in rs),
            "gates_kept_count": mean_std(len(r["gates_kept"]) for r in rs),
            "gates_kept_in_n_seeds": gates,
        }
        print(f"{variant}: PSNR compact {fmt(summary[variant]['psnr_compact'])} dB, dense "
              f"{fmt(summary[variant]['psnr_dense_same_widths'])} dB, widths "
              f"{[round(w['mean']) for w in summary[variant]['widths']]}, gates {gates}")
    from archdisc.data import load_data, psnr
    d = load_data("fashion-mnist", task="denoising", limit=args.limit,
                  noise_sigma=args.noise_sigma)
    noisy = psnr(d.test.tensors[0].clamp(0, 1), d.test.tensors[1])
    path = write_results(
        f"skip_encoder{sfx}", {"settings": vars(args), "summary": summary, "runs": rows,
                         "psnr_noisy_input_clipped": noisy,
                         "plots": [f"skip_encoder_{k}{sfx}.{e}" for k, e in (
                             ("growth_skip", "png"), ("growth_noskip", "png"), ("widths", "png"),
                             ("compact_skip", "svg"), ("compact_noskip", "svg"))]},
        seeds=args.seeds, started=started,
        notes=f"{data_note(args.limit)}, {args.epochs} "
              f"epochs, CPU {args.threads} thread(s)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
