"""CPU latency of a supernet and its discovered (compact) model: eager PyTorch,
TorchScript and onnxruntime, at batch 1 (latency) and 256 (throughput).

    python experiments/bench_latency.py [--threads 1] [--run RUN_DIR] [--round-to K]

With ``--run`` it reads ``RUN/supernet.{safetensors,json}`` and ``RUN/compact.{...}``.
By default it runs a synthetic demo: built-in supernets (mlp, convnet, skip_mlp,
resnet18 at width 0.25 on 3x32x32) with half the units of every searchable node zeroed
(and one random skip gate, where there are gates), shrunk by ``archdisc.extract``.

Four variants are timed: the supernet and the compact model as extracted (plain
exports), and both again through the *deployment pipeline* (``archdisc.deploy``:
``for_runtime`` per runtime - for onnxruntime and TorchScript, sums widened so they need
no gather, (C, H, W) widths padded to the conv kernels' channel block, MLPs with a gather
computed feature-major; eager unchanged - and TorchScript loaded with
``load_torchscript``: frozen, ``optimize_for_inference``). Threads are pinned (torch.set_num_threads, onnxruntime
intra_op_num_threads). Each case is warmed up, then timed 60 times at batch 1 and 10
times at batch 256, in 5 interleaved rounds (every variant and backend in turn, so load
from other processes hits them alike); the table gives the median, the same-backend
speedup ``supernet X / compact X`` (and ``/ deploy X``) and its fraction of the MACs
ratio (the ideal speedup). TorchScript and ONNX files come from ``archdisc.deploy`` (so
they are verified against the eager model before being timed). ``--round-to K`` passes
``round_to=K`` to the demo's ``extract`` (kept widths rounded up to multiples of K).
Results also go to ``experiments/results/latency.json``.

``--out`` chooses another file (RESULTS.md section 3 uses ``latency_deploy_run<i>.json``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from archdisc import build_space, compile_graph, count_macs, count_params  # noqa: E402
from archdisc.deploy import export, load  # noqa: E402
from archdisc.io import atomic_write_json  # noqa: E402

BACKENDS = ("eager", "torchscript", "onnx")
BATCHES = {1: (10, 60), 256: (2, 10)}  # batch: (warm-up runs, timed runs)
DEMO = {
    "mlp": dict(),  # 784-200-80-10
    "convnet": dict(),  # 2 conv 5x5 (64 ch) + 128 hidden, 1x28x28
    "skip_mlp": dict(blocks=6, width=256, in_shape=(1, 16, 16)),
    "resnet18": dict(width_mult=0.25, in_shape=(3, 32, 32)),
}


# ---------------------------------------------------------------------- models
@torch.no_grad()
def kill_half(net, seed=0):
    """Zero the unit groups of a random half of every searchable node's units, and one
    random candidate-edge gate: a stand-in for a trained, sparse supernet."""
    from archdisc.sparsity.groups import unit_members

    gen = torch.Generator().manual_seed(seed)
    params = dict(net.named_parameters())
    for node, names in unit_members(net).items():
        units = params[names[0]].shape[0]
        dead = torch.randperm(units, generator=gen)[: units // 2]
        for name in names:
            params[name][dead] = 0
    gates = sorted(net.gates.keys())
    if gates:
        net.gates[gates[int(torch.randint(len(gates), (1,), generator=gen))]].zero_()
    return net


def demo_pair(name, options, round_to=1):
    from archdisc.extract import extract

    torch.manual_seed(0)
    supernet = compile_graph(build_space(name, **options))
    for m in supernet.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    supernet = kill_half(supernet).eval()
    _, compact = extract(supernet, round_to=round_to)
    return supernet, compact.eval()


def run_pair(run_dir):
    run = Path(run_dir)
    return load(run / "supernet"), load(run / "compact")


# ---------------------------------------------------------------------- timing
def timings(fn, x, warmup, runs, raw=False):
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    if raw:
        return times
    times = np.array(times) * 1e3
    return float(np.median(times)), float(np.percentile(times, 90))


def backends(nets, threads, workdir, optimize_ts=False):
    """backend name -> callable(x). ``nets``: backend -> the model timed there (the
    deployment form differs per runtime); the exported files are verified first.
    ``optimize_ts``: the TorchScript file is loaded by archdisc.deploy.load_torchscript
    (frozen, optimize_for_inference), checked here against the model."""
    import onnxruntime as ort
    from archdisc.deploy import load_torchscript

    ts_path = export(nets["torchscript"], None, Path(workdir) / "ts",
                     formats=("torchscript",))["torchscript"]
    onnx_path = export(nets["onnx"], None, Path(workdir) / "onnx", formats=("onnx",))["onnx"]
    ts = load_torchscript(ts_path, optimize=optimize_ts)
    if optimize_ts:
        g = nets["torchscript"].graph
        x = torch.randn(3, *g.nodes[g.input_nodes()[0]]["shape"])
        with torch.no_grad():
            want, got = nets["torchscript"](x), ts(x)
        assert float((want - got).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    net = nets["eager"]

    def eager(x):
        with torch.inference_mode():
            return net(x)

    def script(x):
        with torch.inference_mode():
            return ts(x)

    def onnx(x):
        return sess.run(None, {in_name: x.numpy()})

    return {"eager": eager, "torchscript": script, "onnx": onnx}


def deploy_forms(compact):
    """backend -> the compact model's deployment form there (archdisc.deploy.for_runtime)."""
    from archdisc.deploy import for_runtime
    return {b: for_runtime(compact, "onnxruntime" if b == "onnx" else b) for b in BACKENDS}


def form_macs(net) -> int:
    """MACs of a deployment form: an ArchNet's graph; a FeatureMajorNet computes the
    graph it was built from."""
    return count_macs(net.graph)


def bench(name, supernet, compact, threads, rounds=5):
    graph = supernet.graph
    shape = graph.nodes[graph.input_nodes()[0]]["shape"]
    macs = {"supernet": count_macs(supernet.graph), "compact": count_macs(compact.graph)}
    params = {"supernet": count_params(supernet.graph), "compact": count_params(compact.graph)}
    # supernet / compact: the plain exports; supernet_deploy / deploy: both through the
    # deployment pipeline (for_runtime, TorchScript loaded optimised), so the deploy
    # speedup compares like with like
    forms = {"supernet": {b: supernet for b in BACKENDS},
             "compact": {b: compact for b in BACKENDS},
             "supernet_deploy": deploy_forms(supernet),
             "deploy": deploy_forms(compact)}
    deploy_info = {b: {"type": type(n).__name__, "macs": form_macs(n)}
                   for b, n in forms["deploy"].items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fns = {v: backends(nets, threads, Path(tmp) / v, optimize_ts="deploy" in v)
               for v, nets in forms.items()}
        for batch, (warmup, runs) in BATCHES.items():
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
            times = {}
            for variant in forms:  # warm-up
                for backend in BACKENDS:
                    timings(fns[variant][backend], x, warmup, 0, raw=True)
            # interleaved: each round times every (variant, backend) once in turn, so
            # load from other processes hits all of them alike
            for _ in range(rounds):
                for variant in forms:
                    for backend in BACKENDS:
                        times.setdefault((variant, backend), []).extend(
                            timings(fns[variant][backend], x, 0, runs // rounds or 1, raw=True))
            for (variant, backend), t in times.items():
                t = np.array(t) * 1e3
                rows.append({"variant": variant, "backend": backend, "batch": batch,
                             "median_ms": float(np.median(t)),
                             "p90_ms": float(np.percentile(t, 90)), "runs": len(t)})
    return {"name": name, "macs": macs, "params": params, "deploy": deploy_info,
            "macs_ratio": macs["supernet"] / max(macs["compact"], 1), "results": rows}


# ---------------------------------------------------------------------- report
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(models) -> str:
    """Same-runtime speedups and their fraction of the MACs ratio (the goal of issue 18:
    >= 0.8): plain exports (supernet X / compact X) and the deployment pipeline
    (supernet_deploy X / deploy X)."""
    head = ("| model | batch | backend | MACs ratio | supernet ms | compact ms | "
            "compact speedup (of MACs ratio) | supernet deploy ms | deploy ms | "
            "deploy speedup (of MACs ratio) |")
    lines = [head, "|" + "---|" * 10]
    for m in models:
        r = {(x["variant"], x["backend"], x["batch"]): x for x in m["results"]}
        ideal = m["macs_ratio"]
        for batch in BATCHES:
            for backend in BACKENDS:
                s, c, sd, d = (r[v, backend, batch]["median_ms"]
                               for v in ("supernet", "compact", "supernet_deploy", "deploy"))
                lines.append(
                    f"| {m['name']} | {batch} | {backend} | {ideal:.2f}x | {s:.3f} | {c:.3f} | "
                    f"{s / c:.2f}x ({s / c / ideal:.2f}) | {sd:.3f} | {d:.3f} | "
                    f"{sd / d:.2f}x ({sd / d / ideal:.2f}) |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--run", help="a run folder (RUN/supernet.*, RUN/compact.*); "
                                  "default: the synthetic demo")
    ap.add_argument("--models", nargs="+", choices=sorted(DEMO), default=list(DEMO),
                    help="demo models to time")
    ap.add_argument("--resnet-width", type=float, default=DEMO["resnet18"]["width_mult"],
                    help="demo resnet18's width_mult (default 0.25)")
    ap.add_argument("--round-to", type=int, default=1,
                    help="demo: round kept widths up to a multiple of K (default 1)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.json"))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    t0 = time.perf_counter()
    if args.run:
        pairs = [(Path(args.run).name, *run_pair(args.run))]
    else:
        demo = {**DEMO, "resnet18": {**DEMO["resnet18"], "width_mult": args.resnet_width}}
        pairs = [(n, *demo_pair(n, demo[n], args.round_to)) for n in args.models]
    models = []
    for name, sup, comp in pairs:
        models.append(bench(name, sup, comp, args.threads))
        print(f"{name}: {models[-1]['params']['supernet']:,} -> "
              f"{models[-1]['params']['compact']:,} params, MACs ratio "
              f"{models[-1]['macs_ratio']:.2f}", flush=True)

    import onnxruntime

    info = {"threads": args.threads, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "machine": platform.machine(),
            "cpu": cpu_name(), "cores": os.cpu_count(),
            "source": args.run or "synthetic demo (half the units zeroed, extract)",
            "round_to": args.round_to, "resnet_width": args.resnet_width,
            "seconds": round(time.perf_counter() - t0, 1)}
    print(f"\nthreads={args.threads}, torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; median (p90) over {BATCHES[1][1]} runs at batch 1, "
          f"{BATCHES[256][1]} at batch 256\n")
    print(table(models))
    atomic_write_json(args.out, {**info, "models": models})
    print(f"\nwritten {args.out} ({info['seconds']} s)")


if __name__ == "__main__":
    main()
