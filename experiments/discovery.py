"""Issue 15: does the discovered width follow the data? Planted teachers and invariances.

For each planted teacher and seed: `archdisc discover` with its defaults (only the supernet,
the data and the lengths are given), against dense nets of 1x, 2x, 4x and 8x the teacher's
widths trained from scratch with Adam for as many epochs as the search plus the fine-tune,
and the dense supernet trained as long (its wall time is the cost baseline of target F).

    python experiments/discovery.py --teachers 8,4 32,8 16,16,4 --seeds 0 1 2
    python experiments/discovery.py --teachers 8,4 --seeds 0 1 2 --set density=0.4 --tag d04
    python experiments/discovery.py --teachers 8,4 --seeds 0 1 2 --epochs 40 --finetune 40

One thread; writes experiments/results/discovery[_TAG].json.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from common import acc, fit, set_threads, write_results

from archdisc import Config, build_space, compile_graph
from archdisc.data import load_data


def parse_set(items):
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        if v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
            continue
        try:
            out[k] = float(v) if any(c in v for c in ".e") else int(v)
        except ValueError:
            out[k] = v  # a word: select=scale
    return out


def dense(widths, data, epochs, seed, lr):
    torch.manual_seed(seed)
    net = compile_graph(build_space("mlp", widths=[20, *widths, 4], in_shape=None))
    t0 = time.perf_counter()
    fit(net, data, epochs, seed, lr=lr, schedule="cosine")
    return acc(net, data.test), time.perf_counter() - t0, sum(p.numel() for p in net.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", nargs="+", default=["8,4", "32,8", "16,16,4"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20, help="search epochs")
    ap.add_argument("--finetune", type=int, default=20, help="fine-tune epochs")
    ap.add_argument("--set", nargs="*", default=[], help="other config fields, KEY=VALUE")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense sweep")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    set_threads(1)
    started, rows = time.perf_counter(), []
    for t in args.teachers:
        tw = [int(v) for v in t.split(",")]
        for seed in args.seeds:
            config = Config(space="mlp", space_options={"widths": [20, *[256] * len(tw), 4]},
                            data="teacher", data_options={"teacher_widths": tw}, seed=seed,
                            epochs=args.epochs, finetune=args.finetune,
                            finetune_schedule="cosine", finetune_lr=3e-3, device="cpu",
                            **parse_set(args.set))
            from archdisc import run_discover
            with tempfile.TemporaryDirectory() as tmp:
                rep = run_discover(config, tmp, progress=False)
            widths = [u["alive"] for n, u in rep["units"].items()
                      if n != f"fc{len(tw) + 1}"]
            data = load_data("teacher", seed=seed, teacher_widths=tw)
            total = args.epochs + args.finetune
            row = {"teacher": t, "seed": seed, "widths": widths,
                   "ratio": [round(w / tt, 2) for w, tt in zip(widths, tw)],
                   "params": rep["params"]["compact"], "test": rep["test"]["compact"],
                   "wall": rep["wall_seconds"], "select_seconds": rep["select"]["seconds"],
                   "select_path": [{k: s.get(k) for k in ("stage", "layer", "widths",
                                                          "metric", "se", "params", "chosen")}
                                   for s in rep["select"]["path"]]}
            if not args.no_dense:
                row["dense"] = {}
                for k in (1, 2, 4, 8):
                    a, _, p = dense([k * w for w in tw], data, total, seed, 3e-3)
                    row["dense"][f"{k}x"] = {"test": a, "params": p}
                a, sec, _ = dense([256] * len(tw), data, total, seed, 3e-3)
                row["dense"]["supernet"] = {"test": a, "seconds": sec}
                row["best_dense"] = max(v["test"] for v in row["dense"].values())
                row["cost_ratio"] = rep["wall_seconds"] / sec
            rows.append(row)
            print(row, flush=True)
    summary = {}
    for t in args.teachers:
        rs = [r for r in rows if r["teacher"] == t]
        within = sum(all(1 <= q <= 4 for q in r["ratio"]) for r in rs)
        s = {"widths": [r["widths"] for r in rs], "within_1_4x": f"{within}/{len(rs)}",
             "params": [r["params"] for r in rs],
             "test_mean": statistics.mean(r["test"] for r in rs),
             "test_std": statistics.pstdev(r["test"] for r in rs)}
        if not args.no_dense:
            s["gap_to_best_dense"] = [round(r["test"] - r["best_dense"], 2) for r in rs]
            s["cost_ratio"] = [round(r["cost_ratio"], 2) for r in rs]
        summary[t] = s
        print(t, s, flush=True)
    name = "discovery" + (f"_{args.tag}" if args.tag else "")
    write_results(name, {"rows": rows, "summary": summary, "args": vars(args)},
                  seeds=args.seeds, started=started)


if __name__ == "__main__":
    main()
