"""Issue 15, target B/C: the sparse-start demo config (examples/fmnist_mlp_sparse.toml) with only the initial
density, lam or the length changed. Does the discovered size stay put?

    python experiments/discovery_demo.py                         # densities and lam x0.5, x2
    python experiments/discovery_demo.py --select none --tag none  # the search alone

One thread; writes experiments/results/discovery_demo[_TAG].json.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import ROOT, set_threads, write_results
from discovery import parse_set

from archdisc import load_config, run_discover

VARIANTS = {"density 0.02": {"density": 0.02}, "density 0.05": {"density": 0.05},
            "density 0.1": {"density": 0.1}, "density 0.2 (demo)": {},
            "density 0.4": {"density": 0.4}, "lam x0.5": {"lam": 0.1}, "lam x2": {"lam": 0.4},
            "2x length": {"epochs": 10, "finetune": 16}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", default="shrink")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--set", nargs="*", default=[], help="other config fields, KEY=VALUE")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    set_threads(1)
    started, rows = time.perf_counter(), {}
    for name, over in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        config = load_config(ROOT / "examples" / "fmnist_mlp_sparse.toml",
                             {**parse_set(args.set), **over, "select": args.select})
        with tempfile.TemporaryDirectory() as tmp:
            rep = run_discover(config, tmp, progress=False)
        rows[name] = {"widths": [rep["units"][n]["alive"] for n in ("fc1", "fc2")],
                      "params": rep["params"]["compact"], "test": rep["test"]["compact"],
                      "wall": rep["wall_seconds"],
                      "select_path": [{k: s.get(k) for k in ("widths", "metric", "se", "params",
                                                             "chosen")}
                                      for s in rep["select"]["path"]]}
        print(name, rows[name], flush=True)
    base = [r for k, r in rows.items() if k != "2x length"]
    med = statistics.median(r["params"] for r in base)
    summary = {"median_params": med,
               "params_vs_median": {k: round(r["params"] / med - 1, 3) for k, r in rows.items()},
               "test_range": [min(r["test"] for r in base), max(r["test"] for r in base)]}
    print(summary)
    name = "discovery_demo" + (f"_{args.tag}" if args.tag else "")
    write_results(name, {"rows": rows, "summary": summary, "args": vars(args)}, seeds=[0],
                  started=started)


if __name__ == "__main__":
    main()
