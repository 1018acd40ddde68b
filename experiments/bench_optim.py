"""Time one optimizer step on a ResNet-18-sized parameter set.

AdaBreg vs torch.optim.Adam and LinBreg(momentum=0.9) vs torch.optim.SGD(momentum=0.9)
on the 62 parameter tensors of a CIFAR ResNet-18 (11.17M parameters), each of ours in
its three paths (loop, foreach, fused = torch.compile'd) against torch's foreach and
fused=True steps; the ratio column is to torch's *fused* step. Each conv layer with its
BatchNorm weight and bias is one param group; ``--reg half`` puts the first conv of
every basic block and the three shortcut convs (33 of 62 tensors) under GroupL2, the
rest unregularized; ``--reg all``: every conv layer; ``--reg none``: nothing; the
default runs half and all. Fresh random gradients are written before every step
(outside the timed region); the optimizers take turns step by step, so drift in
machine speed hits all of them alike. The first (compiling) call of each fused
optimizer is timed separately, against an empty inductor cache unless --warm-cache.

    python experiments/bench_optim.py                 # 1 thread, 5 warm-up + 30 steps
    python experiments/bench_optim.py --threads 2 --reg all --no-fused

Prints the table (RESULTS.md section 1); writes no results file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from archdisc.optim import AdaBreg, GroupL2, LinBreg


def resnet18_layers(num_classes: int = 10) -> list[tuple[str, tuple, bool]]:
    """(name, conv weight shape, first-conv-of-block or shortcut) for each conv layer."""
    layers = [("stem", (64, 3, 3, 3), False)]
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            layers.append((f"layer{stage}.{block}.conv1", (cout, cin, 3, 3), True))
            layers.append((f"layer{stage}.{block}.conv2", (cout, cout, 3, 3), False))
            if stride != 1 or cin != cout:
                layers.append((f"layer{stage}.{block}.shortcut", (cout, cin, 1, 1), True))
            cin = cout
    return layers


def make_groups(reg_mode: str, lam: float = 1e-3, seed: int = 0):
    """Fresh parameters (same values for every call) as param groups."""
    gen = torch.Generator().manual_seed(seed)

    def param(*shape):
        p = torch.randn(shape, generator=gen).mul_(0.05).requires_grad_()
        p.grad = torch.zeros_like(p)
        return p

    groups, rest = [], []
    for name, shape, first in resnet18_layers():
        tensors = [param(*shape), param(shape[0]), param(shape[0])]  # conv, bn weight, bn bias
        if reg_mode == "all" or (reg_mode == "half" and first):
            groups.append({"params": tensors, "reg": GroupL2(lam)})
        else:
            rest += tensors
    rest += [param(10, 512), param(10)]
    groups.append({"params": rest})
    return groups


def build(reg_mode: str, fused: bool = True):
    def plain(groups):  # torch optimizers: no 'reg' key
        return [p for g in groups for p in g["params"]]

    makers = {
        "torch Adam (fused)": lambda: torch.optim.Adam(plain(make_groups(reg_mode)), lr=1e-3,
                                                       fused=True),
        "torch Adam (foreach)": lambda: torch.optim.Adam(plain(make_groups(reg_mode)), lr=1e-3,
                                                         foreach=True),
        "AdaBreg (fused)": lambda: AdaBreg(make_groups(reg_mode), lr=1e-3, fused=True),
        "AdaBreg (foreach)": lambda: AdaBreg(make_groups(reg_mode), lr=1e-3, fused=False),
        "AdaBreg (loop)": lambda: AdaBreg(make_groups(reg_mode), lr=1e-3, foreach=False),
        "torch SGD m=0.9 (fused)": lambda: torch.optim.SGD(
            plain(make_groups(reg_mode)), lr=0.1, momentum=0.9, fused=True),
        "torch SGD m=0.9 (foreach)": lambda: torch.optim.SGD(
            plain(make_groups(reg_mode)), lr=0.1, momentum=0.9, foreach=True),
        "LinBreg m=0.9 (fused)": lambda: LinBreg(make_groups(reg_mode), lr=0.1, momentum=0.9,
                                                 fused=True),
        "LinBreg m=0.9 (foreach)": lambda: LinBreg(make_groups(reg_mode), lr=0.1, momentum=0.9,
                                                   fused=False),
        "LinBreg m=0.9 (loop)": lambda: LinBreg(make_groups(reg_mode), lr=0.1, momentum=0.9,
                                                foreach=False),
    }
    if not fused:
        makers = {k: v for k, v in makers.items() if "(fused)" not in k}
    return makers


def run(args, reg_mode: str) -> None:
    makers = build(reg_mode, fused=not args.no_fused)
    if args.no_loop:
        makers = {k: v for k, v in makers.items() if "loop" not in k}
    opts = {name: make() for name, make in makers.items()}
    params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in opts.items()}
    first = next(iter(opts.values()))
    n_params = sum(p.numel() for g in first.param_groups for p in g["params"])
    n_tensors = sum(len(g["params"]) for g in first.param_groups)
    example = AdaBreg(make_groups(reg_mode), lr=1e-3)
    n_reg_t = sum(len(g["params"]) for g in example.param_groups if g["reg"] is not None)
    n_reg_p = sum(p.numel() for g in example.param_groups if g["reg"] is not None
                  for p in g["params"])

    gen = torch.Generator().manual_seed(1)
    times = {name: [] for name in opts}
    first_call = {}
    for i in range(args.warmup + args.steps):
        for name, opt in opts.items():
            for p in params[name]:
                p.grad.normal_(generator=gen)
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if i == 0:
                first_call[name] = dt
            if i >= args.warmup:
                times[name].append(dt * 1e3)

    print(f"\n### reg={reg_mode}: torch {torch.__version__}, {args.threads} thread(s); "
          f"{n_params / 1e6:.2f}M params in {n_tensors} tensors; GroupL2 on {n_reg_t} tensors "
          f"({n_reg_p / 1e6:.2f}M params); {args.steps} steps after {args.warmup} warm-up\n")
    fused_ref = not args.no_fused
    base = {"Ada": statistics.median(times[f"torch Adam ({'fused' if fused_ref else 'foreach'})"]),
            "Lin": statistics.median(times[f"torch SGD m=0.9 ({'fused' if fused_ref else 'foreach'})"])}
    ref_name = "torch fused" if fused_ref else "torch foreach"
    print(f"| optimizer | median ms | p90 ms | ratio to {ref_name} | first call s |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        ts = sorted(ts)
        med, p90 = statistics.median(ts), ts[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]
        ref = base["Ada"] if ("Adam" in name or "AdaBreg" in name) else base["Lin"]
        print(f"| {name} | {med:.1f} | {p90:.1f} | {med / ref:.2f}x | {first_call[name]:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reg", choices=("half", "all", "none", "half,all"), default="half,all")
    ap.add_argument("--no-loop", action="store_true", help="skip the per-parameter loop paths")
    ap.add_argument("--no-fused", action="store_true",
                    help="skip the fused paths (no torch.compile)")
    ap.add_argument("--warm-cache", action="store_true",
                    help="keep the inductor cache (the first-call time then is not a cold "
                         "compile)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.warm_cache:  # a cold compile: an empty inductor / triton cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_optim_inductor_")
    try:
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at start")
    except OSError:
        pass
    for reg_mode in args.reg.split(","):
        run(args, reg_mode)


if __name__ == "__main__":
    main()
