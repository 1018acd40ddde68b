"""Median over several bench_latency.py runs of each same-runtime speedup and its
fraction of the MACs ratio (speedups are taken within each run, then the median across
runs, with the range).

    python experiments/summarize_latency.py experiments/results/latency_deploy_run*.json

Prints the markdown table of RESULTS.md section 3; writes no file.
"""
from __future__ import annotations

import json
import sys

import numpy as np


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    print(f"{len(runs)} runs: {', '.join(paths)}\n")
    print("| model | MACs ratio | batch | runtime | plain export: speedup (of MACs ratio) | "
          "deployment form: speedup (of MACs ratio) | deploy MACs ratio |")
    print("|" + "---|" * 7)
    for i, m in enumerate(runs[0]["models"]):
        ideal = m["macs_ratio"]
        for batch in (1, 256):
            for backend in ("eager", "torchscript", "onnx"):
                plain, dep = [], []
                for run in runs:
                    r = {(x["variant"], x["backend"], x["batch"]): x["median_ms"]
                         for x in run["models"][i]["results"]}
                    plain.append(r["supernet", backend, batch] / r["compact", backend, batch])
                    dep.append(r["supernet_deploy", backend, batch] / r["deploy", backend, batch])
                dmacs = m["macs"]["supernet"] / m["deploy"][backend]["macs"]
                cell = lambda v: (f"{np.median(v):.2f}x ({min(v):.2f}-{max(v):.2f}); "  # noqa: E731
                                  f"**{np.median(v) / ideal:.2f}**")
                print(f"| {m['name']} | {ideal:.2f}x | {batch} | {backend} | {cell(plain)} | "
                      f"{cell(dep)} | {dmacs:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
