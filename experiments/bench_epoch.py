"""Search-epoch time of `archdisc discover` in this checkout against another checkout.

Runs the same short discover job (no fine-tune) under this tree and under ``--ref`` (for
instance a `git worktree` of an older commit), alternating the two ``--repeats`` times so
that drift in machine speed hits both alike, and reports the median seconds per search
epoch (from each run's metrics.jsonl) and the ratio. One thread.

    git worktree add /tmp/ref 0f79d41
    python experiments/bench_epoch.py --ref /tmp/ref
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

HERE = Path(__file__).resolve().parents[1]
JOBS = {
    "mlp (demo config)": ["--config", str(HERE / "examples/fmnist_mlp.toml"),
                          "--epochs", "3", "--finetune", "0"],
    "convnet": ["--space", "convnet", "--data", "fashion-mnist", "--limit", "10000",
                "--epochs", "2", "--finetune", "0", "--lam", "0.1", "--lr", "1e-3"],
}


def epoch_seconds(tree: Path, args: list[str]) -> list[float]:
    if tree == HERE:  # only the search epochs are timed; skip what the ref has not
        args = [*args, "--select", "none"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, "-m", "archdisc.cli", "discover", *args, "--out",
                        tmp + "/r", "--threads", "1", "--force", "--quiet"], check=True, env=env,
                       cwd=tree, stdout=subprocess.DEVNULL)
        lines = Path(tmp, "r", "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["seconds"] for line in lines]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="the other checkout")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for name, job in JOBS.items():
        times = {"this": [], "ref": []}
        for _ in range(args.repeats):
            times["ref"] += epoch_seconds(args.ref, job)
            times["this"] += epoch_seconds(HERE, job)
        this, ref = (statistics.median(times[k]) for k in ("this", "ref"))
        print(f"{name}: search epoch {this:.2f} s here, {ref:.2f} s in {args.ref} "
              f"(ratio {this / ref:.2f}; medians of {len(times['this'])} epochs)")


if __name__ == "__main__":
    main()
