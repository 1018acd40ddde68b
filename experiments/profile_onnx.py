"""Where onnxruntime spends its time: per-op shares of the supernet, the compact model
and its deployment form (archdisc.deploy.for_runtime), and the node types of each
exported ONNX graph before and after onnxruntime's graph optimisations.

    python experiments/profile_onnx.py [--models resnet18 skip_mlp] [--batch 256]

Op shares come from onnxruntime's profiler (kernel time per node, summed by op type over
the profiled runs); they are robust to load from other processes in a way that absolute
times are not. Same synthetic demo models as bench_latency.py. Writes
``experiments/results/profile_onnx.json``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_latency import DEMO, demo_pair  # noqa: E402
from archdisc import count_macs  # noqa: E402
from archdisc.deploy import for_runtime  # noqa: E402
from archdisc.deploy import export  # noqa: E402
from archdisc.io import atomic_write_json  # noqa: E402


def profile(path, x, runs, tmp):
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tmp) / "prof")
    opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    count = lambda p: dict(collections.Counter(  # noqa: E731
        n.op_type for n in onnx.load(str(p)).graph.node).most_common())
    return {"kernel_ms_per_run": total / 1e3 / runs,
            "share": {k: round(v / total, 4) for k, v in per_op.most_common()},
            "nodes_exported": count(path), "nodes_optimized": count(opts.optimized_model_filepath)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=sorted(DEMO), default=list(DEMO))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_onnx.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {"batch": args.batch, "runs": args.runs, "models": {}}
    for name in args.models:
        sup, comp = demo_pair(name, DEMO[name])
        nets = {"supernet": sup, "compact": comp, "deploy": for_runtime(comp, "onnxruntime")}
        shape = sup.graph.nodes[sup.graph.input_nodes()[0]]["shape"]
        x = np.random.default_rng(0).standard_normal((args.batch, *shape), dtype=np.float32)
        res = {}
        for v, net in nets.items():
            with tempfile.TemporaryDirectory() as tmp:
                path = export(net, None, Path(tmp) / "m", formats=("onnx",))["onnx"]
                res[v] = {"macs": count_macs(net.graph), "type": type(net).__name__, **profile(path, x, args.runs, tmp)}
            share = ", ".join(f"{k} {100 * s:.0f}%" for k, s in res[v]["share"].items()
                              if s >= 0.01)
            print(f"{name:9s} {v:8s} MACs {res[v]['macs']:>11,}  kernel "
                  f"{res[v]['kernel_ms_per_run']:8.2f} ms/run  {share}")
            print(f"{'':18s} exported: {res[v]['nodes_exported']}")
            print(f"{'':18s} optimized: {res[v]['nodes_optimized']}", flush=True)
        out["models"][name] = res
    atomic_write_json(args.out, out)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
