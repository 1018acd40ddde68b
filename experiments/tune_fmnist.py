"""The size/quality Pareto front on Fashion-MNIST, and what stopping hopeless trials saves.

Two `archdisc tune` studies of the MLP 784-200-80-10 supernet with the same sampler seed:
one with the size-aware abort rule, one without. Prints and writes the wall time and the
training epochs of each, and the quality of their fronts (hypervolume in (validation accuracy, log10 params),
reference point: 10% accuracy at the supernet's size).

    python experiments/tune_fmnist.py [--trials 16] [--epochs 5] [--margin 5]

Writes experiments/results/tune_fmnist_margin<margin>.json and copies the abort study's
front to experiments/results/tune_fmnist_pareto.png (RESULTS.md section 4).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from archdisc import Config
from archdisc.tune import TuneSettings, front, tune

RESULTS = Path(__file__).parent / "results"


def hypervolume(rows, supernet_params: int) -> float:
    """Area dominated by the front in (accuracy - 10, log10(supernet) - log10(params))."""
    pts = sorted((math.log10(r["params"]), r["metric"]) for r in rows if r["pareto"])
    area, best, x_ref = 0.0, 10.0, math.log10(supernet_params)
    for i, (x, m) in enumerate(pts):  # sweep from the smallest model to the largest
        x_next = pts[i + 1][0] if i + 1 < len(pts) else x_ref
        best = max(best, m)
        area += (x_next - x) * (best - 10.0)
    return area


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--margin", type=float, default=5.0,
                    help="abort margin in accuracy points (default 5)")
    ap.add_argument("--out", type=Path, default=Path("runs/tune_fmnist"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = Config(select="none", space="mlp", data="fashion-mnist", epochs=args.epochs, density=0.2,
                  device="cpu", seed=0)
    result = {"command": "python " + " ".join(sys.argv), "trials": args.trials,
              "margin": args.margin,
              "epochs": args.epochs, "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "studies": {}}
    for name, abort in (("abort", True), ("no_abort", False)):
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        settings = TuneSettings(trials=args.trials, abort=abort, abort_margin=args.margin)
        t0 = time.perf_counter()
        study = tune(base, out, settings)
        seconds = time.perf_counter() - t0
        rows = front(study, settings)
        states = [t.state.name for t in study.trials]
        result["studies"][name] = {
            "wall_seconds": round(seconds, 1),
            "epochs_trained": sum(len(t.user_attrs.get("curve", {})) for t in study.trials),
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "hypervolume": round(hypervolume(rows, 173_890), 3),
            "front": [{k: r[k] for k in ("trial", "metric", "test_metric", "params", "lam",
                                         "lr", "density")} for r in rows if r["pareto"]]}
        if name == "abort":
            shutil.copy(out / "pareto.png", RESULTS / "tune_fmnist_pareto.png")
    a, b = result["studies"]["abort"], result["studies"]["no_abort"]
    result["time_saved"] = round(1 - a["wall_seconds"] / b["wall_seconds"], 3)
    result["epochs_saved"] = round(1 - a["epochs_trained"] / b["epochs_trained"], 3)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"tune_fmnist_margin{args.margin:g}.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["studies"].items():
        print(f"{name:<9} {s['wall_seconds']:>7.1f} s  {s['epochs_trained']:>3} epochs  "
              f"complete {s['complete']:>2}  "
              f"pruned {s['pruned']:>2}  hypervolume {s['hypervolume']:.3f}")
    print(f"abort rule saves {100 * result['time_saved']:.0f}% of the wall time, "
          f"{100 * result['epochs_saved']:.0f}% of the training epochs")


if __name__ == "__main__":
    main()
