"""Levers of discovery at a fixed budget: Fashion-MNIST MLP 784-200-80-10, one size, 10 + 3
epochs, one seed per setting. Each setting is a JSON dict of Config overrides on top of
experiments/mlp.py's ARCHDISC; results are appended to experiments/results/mlp_sweep.json.

    python experiments/sweep_mlp.py --size 46727 '{}' '{"density": 0.5}' ...
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, atomic_write_text, set_threads, workdir  # noqa: E402
from mlp import ARCHDISC  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("settings", nargs="+", help="JSON Config overrides, one per run")
    p.add_argument("--size", type=int, default=46727)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "mlp_sweep.json"))
    args = p.parse_args()
    set_threads(1)
    from archdisc import Config, run_discover
    data_seed = args.seed
    base = workdir()
    for i, s in enumerate(args.settings):
        over = json.loads(s)
        cfg = Config(**{**ARCHDISC, "seed": data_seed, "target_params": args.size, **over})
        t0 = time.perf_counter()
        r = run_discover(cfg, base / f"r{i}", force=True, progress=False)
        metrics = [json.loads(x) for x in (base / f"r{i}" / "metrics.jsonl").read_text()
                   .splitlines()]
        row = {"setting": over, "size": args.size, "seed": args.seed,
               "params": r["params"]["compact"],
               "widths": [r["units"][n]["alive"] for n in ("fc1", "fc2")],
               "test_before_finetune": r["test"]["compact_extracted"],
               "test": r["test"]["compact"], "val": r["val"]["compact"],
               "lam_final": r["lam_final"], "epochs_total": r["epochs_total"],
               "alive_per_epoch": [m["alive"] for m in metrics],
               "seconds": round(time.perf_counter() - t0, 1),
               "command": " ".join(shlex.quote(a) for a in ["python", sys.argv[0],
                                                            "--size", str(args.size),
                                                            "--seed", str(args.seed), s])}
        out = Path(args.out)
        rows = json.loads(out.read_text()) if out.exists() else []
        rows.append(row)
        atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
        print(json.dumps({k: row[k] for k in ("setting", "params", "widths",
                                              "test_before_finetune", "test", "seconds")}),
              flush=True)


if __name__ == "__main__":
    main()
