"""What would a new channel be worth? A GradMax-style readout per residual block (issue 26 D).

entry_signal.py shows that a dead channel's own gradient, read through its fixed random fan-out,
points to stage 4, while the loss needs stages 1-2. This asks instead what the best new channel
could do. In a block conv1 -> BatchNorm -> ReLU -> conv2, a new conv1 channel with fan-in f outputs
(after BatchNorm, ReLU ignored) h = f.(P - mean) / std, P its input patches; the gradient of the
loss with respect to its fan-out u into conv2, at u = 0, is M f / std with M = sum over samples and
positions of conv2's output gradient times P, so the best f gives the top singular value of
M Sigma^-1/2 (Sigma: the patches' covariance). It is compared with (a) the same with conv2's output
gradients shuffled across samples (no relation to the inputs: the noise floor of a finite sample)
and (b) the median fan-out gradient norm of the block's alive channels; last, the ratio to (a)
without whitening (the top singular value of M itself: a fan-in of unit norm, as if no BatchNorm
rescaled the channel, less sensitive to the patches' small directions). resnet18 from the sparse
start (density 0.2) on Fashion-MNIST as in entry_signal.py; the readout over ``--batches`` batches
at the start and after each epoch of the search's AdaBreg.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/new_channel_value.py [--epochs 5] [--images 1800]
"""
from __future__ import annotations

import argparse

import torch
from torch.nn.functional import unfold

import archdisc
from archdisc import Config
from archdisc.recipe.setup import make_optimizer
from entry_signal import fmnist, plain_epoch


def readout(net, blocks, x, y, batches, gen):
    """Per block: the best new channel's value, the same with shuffled output gradients, the
    alive channels' median fan-out gradient, the alive count, and the unwhitened ratio."""
    mods = dict(net.named_modules())
    seen = {}
    hooks = []
    for b in blocks:
        c1, c2 = mods[f"layers.{b}_conv1"], mods[f"layers.{b}_conv2"]

        def keep_in(m, i, o, b=b, c1=c1):
            seen.setdefault(b, {})["P"] = unfold(i[0].detach(), c1.kernel_size, c1.dilation,
                                                 c1.padding, c1.stride)

        def keep_out(m, i, o, b=b):
            o.register_hook(lambda g, b=b: seen[b].__setitem__("d", g.detach()))
        hooks += [c1.register_forward_hook(keep_in), c2.register_forward_hook(keep_out)]
    stats = {b: {"M": 0, "Ms": 0, "Md": 0, "Msd": 0, "S": 0, "m": 0, "n": 0, "fan_out": 0}
             for b in blocks}
    net.train()
    for _ in range(batches):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        for b in blocks:
            c2 = mods[f"layers.{b}_conv2"]
            P, d = seen[b]["P"], seen[b]["d"]  # (B, F, L), (B, K, H, W)
            h, w = d.shape[-2:]
            image = P.reshape(P.shape[0], P.shape[1], h, w)
            s = stats[b]
            for key, grad in (("M", d), ("Ms", d[torch.randperm(len(d), generator=gen)])):
                m = torch.nn.grad.conv2d_weight(image, (d.shape[1], P.shape[1], *c2.kernel_size),
                                                grad, c2.stride, c2.padding)
                s[key] = s[key] + m.permute(0, 2, 3, 1).reshape(-1, P.shape[1])
                s[key + "d"] = s[key + "d"] + grad.sum((0, 2, 3)).repeat_interleave(
                    c2.kernel_size[0] * c2.kernel_size[1])
            flat = P.transpose(1, 2).reshape(-1, P.shape[1])
            s["S"] = s["S"] + flat.T @ flat
            s["m"] = s["m"] + flat.sum(0)
            s["n"] += len(flat)
            s["fan_out"] = s["fan_out"] + c2.weight.grad.detach()
    for hk in hooks:
        hk.remove()
    out = {}
    for b in blocks:
        s = stats[b]
        mean = s["m"] / s["n"]
        cov = s["S"] / s["n"] - torch.outer(mean, mean)
        e, V = torch.linalg.eigh(cov.double())
        e = e.clamp_min(1e-3 * e.clamp_min(0).mean())
        white = (V / e.sqrt()) @ V.T
        # BatchNorm centres the new channel: M - (summed output gradients) x mean (padding aside)
        centred = [(s[k] - torch.outer(s[k + "d"], mean)).double() for k in ("M", "Ms")]
        top = [float(torch.linalg.matrix_norm(m @ white, 2)) for m in centred]
        plain = [float(torch.linalg.matrix_norm(m, 2)) for m in centred]  # |f| = 1, no whitening
        w1 = mods[f"layers.{b}_conv1"].weight
        alive = w1.reshape(w1.shape[0], -1).ne(0).any(1)
        norms = s["fan_out"].transpose(0, 1).reshape(w1.shape[0], -1).norm(dim=1)
        out[b] = (top[0], top[1], float(norms[alive].median()), f"{int(alive.sum())}/{len(alive)}",
                  plain[0] / plain[1])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--images", type=int, default=1800)
    p.add_argument("--batches", type=int, default=8, help="per readout")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    net, (x, y), _ = fmnist(args.images, args.seed)
    archdisc.sparse_init(net, density=0.2, seed=args.seed)
    opt = make_optimizer(net, Config())
    blocks = [f"layer{s}_{i}" for s in range(1, 5) for i in range(2)]

    def show(when):
        r = readout(net, blocks, x, y, args.batches, gen)
        print(f"{when}: block: new channel / shuffled / new over median alive; unwhitened ratio")
        for b, (new, noise, alive, count, plain) in r.items():
            print(f"  {b}: {new:.3g} / {noise:.3g} = {new / noise:.2f}; {new / alive:.1f} x "
                  f"alive ({count}); {plain:.2f}", flush=True)
    show("start")
    for epoch in range(1, args.epochs + 1):
        plain_epoch(net, opt, x, y)
        show(f"epoch {epoch}")


if __name__ == "__main__":
    main()
