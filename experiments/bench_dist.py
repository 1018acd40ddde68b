"""Search-epoch time of data-parallel discovery: N = 1 (no torchrun) against N = 2, 4, ...
processes under torchrun (gloo on CPU, or nccl with --device cuda), same config, same
global batch. Prints the mean epoch time of each N (first epoch left out), the speedup
over N = 1 measured in the same run, and whether the discovered widths agree.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_dist.py            # N = 1, 2
    .venv/bin/python experiments/bench_dist.py --nproc 1 2 4 8 --device cuda -- \\
        --space resnet18 --data cifar10 --data-root ROOT --epochs 3 --finetune 0  # GPUs

Every process gets --threads 1 on the CPU: the processes are the parallelism.

Prints the table (RESULTS.md section 12); writes no results file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT = ["--config", "examples/fmnist_mlp_sparse.toml", "--epochs", "4", "--finetune", "0",
           "--select", "none"]


def run(n: int, out: Path, device: str, extra: list[str]) -> dict:
    cli = ["-m", "archdisc", "discover", *extra, "--device", device, "--out", str(out),
           "--quiet", "--force"]
    if device == "cpu":
        cli += ["--threads", "1"]
    if n == 1:
        cmd = [sys.executable, *cli]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(n), *cli]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    return {"epoch_s": statistics.mean(m["seconds"] for m in metrics[1:] or metrics),
            "widths": metrics[-1]["alive"], "world": report["world_size"],
            "test": report["test"]["compact"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("extra", nargs="*", help="discover options after --")
    args = ap.parse_args()
    extra = args.extra or DEFAULT
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nproc:
            rows[n] = run(n, Path(tmp) / f"n{n}", args.device, extra)
    base = rows[args.nproc[0]]
    print(f"discover {' '.join(extra)} on {args.device}")
    print("| processes | epoch (s) | speedup | widths | test |")
    print("|---|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['epoch_s']:.2f} | {base['epoch_s'] / r['epoch_s']:.2f}x | "
              f"{r['widths']} | {r['test']:.2f} |")


if __name__ == "__main__":
    main()
