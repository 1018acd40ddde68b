"""Benchmark: extraction of a full-width ResNet-18 supernet with half its channels dead.

Every searchable conv of ``resnet18`` (width 1, CIFAR 3x32x32, 11.17M parameters) loses a
random half of its channels: the filter, and the affine entries of the BatchNorm after it,
are zeroed (running statistics are random, so eval-mode BatchNorm is not trivial). We time
``archdisc.extract.extract`` (verification on its default batch of 4 random images
included): one warm-up, then the median of ``--runs`` runs.

    .venv/bin/python experiments/bench_extract.py [--threads 2] [--runs 3]

Prints the timings (RESULTS.md section 2); writes no results file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from archdisc import compile_graph, count_params
from archdisc.extract import extract
from search_spaces import resnet18


@torch.no_grad()
def half_dead_resnet18(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    net = compile_graph(resnet18(width_mult=1.0, in_shape=(3, 32, 32))).eval()
    g = net.graph
    for n in g.order():
        a = g.nodes[n]
        if a["op"] != "conv2d" or not a["searchable"]:
            continue
        dead = torch.randperm(a["units"], generator=gen)[: a["units"] // 2]
        net.layers[n].weight[dead] = 0
        (bn,) = g.successors(n)
        net.layers[bn].weight[dead] = 0
        net.layers[bn].bias[dead] = 0
        net.layers[bn].running_mean.normal_(generator=gen)
        net.layers[bn].running_var.uniform_(0.5, 2.0, generator=gen)
    return net


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    net = half_dead_resnet18()
    graph, compact = extract(net)  # warm-up
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        graph, compact = extract(net)
        times.append(time.perf_counter() - t0)
    p0, p1 = count_params(net.graph), count_params(graph)
    assert p1 == sum(p.numel() for p in compact.parameters())
    print(f"resnet18 (width 1, 3x32x32): params {p0:,} -> {p1:,} ({100 * p1 / p0:.1f}%)")
    t0 = time.perf_counter()
    extract(net, verify=False)
    no_verify = time.perf_counter() - t0
    print(f"extract (verify=True): median {statistics.median(times):.3f} s over {args.runs} runs "
          f"(all: {', '.join(f'{t:.3f}' for t in times)}); verify=False: {no_verify:.3f} s")
    print(f"machine load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
