"""Does an imported model run as fast as the original? (issue 29, item 3)

The eager forward time of a user's module against the ArchNet that ``archdisc.from_module``
imports from it (same function, same weights), eval mode, batch 64, one thread, timed
interleaved (original, ArchNet, original, ...) after a warm-up; median and p90 of each and
the ratio of the medians. Models: a user-style CNN (BatchNorm, a residual add, a depthwise
conv, a squeeze-excitation gate), torchvision's resnet18 and mobilenet_v3_small, all with
random weights on 3 x 32 x 32 inputs::

    python experiments/bench_import.py              # writes experiments/results/bench_import.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import set_threads, write_results  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from archdisc import from_module  # noqa: E402


class UserCNN(nn.Module):
    """The kind of CNN a user brings: conv-BN-ReLU, a residual block, a depthwise conv and a
    squeeze-excitation gate, global pooling and a linear head."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(32), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
                                nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 1))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 16, 1), nn.ReLU(),
                                nn.Conv2d(16, 64, 1), nn.Sigmoid())
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = self.dw(x)
        x = x * self.se(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"user_cnn": UserCNN,
          "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
          "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10)}


@torch.no_grad()
def interleaved(fns: dict, x, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        for f in fns.values():
            f(x)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(x)
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: {"median_ms": statistics.median(v),
                "p90_ms": sorted(v)[int(0.9 * (len(v) - 1))]} for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = p.parse_args()
    started, threads = time.perf_counter(), set_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    rows = {}
    for name in args.models:
        module = MODELS[name]().eval()
        net = from_module(module, x[:2]).eval()
        t = interleaved({"original": module, "archnet": net}, x, args.repeats)
        t["ratio"] = t["archnet"]["median_ms"] / t["original"]["median_ms"]
        rows[name] = t
        print(f"{name:<20} original {t['original']['median_ms']:7.2f} ms  archnet "
              f"{t['archnet']['median_ms']:7.2f} ms  ratio {t['ratio']:.2f}", flush=True)
    write_results("bench_import", {"batch": args.batch, "threads": threads, "models": rows},
                  seeds=[0], started=started)


if __name__ == "__main__":
    main()
