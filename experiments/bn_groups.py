"""Pilot (issue 26 D): resnet18's sparse search with the unit group on BatchNorm's scale and shift.

archdisc groups a conv channel's weights with its BatchNorm shift; behind BatchNorm the loss's
gradient is orthogonal to those weights and a dead channel's gradient is noise (HISTORY.md 20), so
without a budget no channel enters or leaves. Here, as in network slimming, each BatchNorm
channel's (scale, shift) pair is the group (2 entries) and the conv weights are dense and
unregularized: a dead channel (scale and shift 0) outputs exactly 0, and its scale's gradient is the
first-order worth of a fixed random feature. ``--density`` of each BatchNorm's channels start alive
(independently: a residual stream's BatchNorms are not tied, so this is not an extractable model);
AdaBreg at ``--lam`` trains 5 epochs on 1,800 Fashion-MNIST images (``--images``) as in
entry_signal.py. Prints the alive channels per epoch and the test accuracy on the full 10k test set.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bn_groups.py [--lam 0.01] [--seed 0] [--images 20000 --epochs 3]
"""
from __future__ import annotations

import argparse

import torch

from archdisc.optim import AdaBreg
from archdisc.optim.regularizers import GroupL2
from entry_signal import fmnist, plain_epoch, test_accuracy


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lam", type=float, default=0.01)
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--images", type=int, default=1800, help="training images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    net, (x, y), (xv, yv) = fmnist(args.images, args.seed)
    bns = {n.split(".")[-1]: m for n, m in net.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d)}
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for m in bns.values():
            dead = torch.rand(m.num_features, generator=gen) >= args.density
            m.weight[dead] = 0
            m.bias[dead] = 0
    grouped = {id(t) for m in bns.values() for t in (m.weight, m.bias)}
    groups = [{"params": [m.weight, m.bias], "reg": GroupL2(args.lam)} for m in bns.values()]
    groups.append({"params": [t for t in net.parameters() if id(t) not in grouped], "reg": None})
    opt = AdaBreg(groups, lr=1e-3)

    def alive():
        return {n: int((m.weight.ne(0) | m.bias.ne(0)).sum()) for n, m in bns.items()}
    start = alive()
    for epoch in range(1, args.epochs + 1):
        loss = plain_epoch(net, opt, x, y)
        net.eval()
        with torch.no_grad():
            val = (net(xv).argmax(1) == yv).float().mean().item() * 100
        now = alive()
        print(f"epoch {epoch} loss {loss:.3f} val {val:.1f}% alive {sum(now.values())} of "
              f"{sum(m.num_features for m in bns.values())} (start {sum(start.values())}; "
              f"{sum(now[n] != start[n] for n in now)} of {len(now)} BatchNorms changed): "
              f"{ {n: f'{start[n]}->{now[n]}' for n in now} }", flush=True)
    print(f"test {test_accuracy(net, args.seed, x.shape[1:]):.2f}% (10,000 images)")


if __name__ == "__main__":
    main()
