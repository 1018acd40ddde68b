"""Why resnet18's sparse start admits no channel (issue 26 D): do the dead units' gradients add up?

AdaBreg switches a dead unit on when its subgradient variable v, the sum of its (normalised)
gradients, leaves the ball lam * sqrt(n). A gradient with a steady direction makes the sum grow
like t steps; pure noise like sqrt(t). This trains torchvision resnet18 (imported, sparse start,
density 0.2) with the search's optimizer on 1,800 Fashion-MNIST images as 3-channel 28x28 images
(RESULTS.md 11's ImageFolder run; ``--images``, batch 128, 14 steps an epoch) and prints, each epoch, per layer
the median over its dead channels of the coherence ||sum_t g_t|| / sqrt(sum_t ||g_t||^2): 1 for
noise, sqrt(t) (8.4 after 70 steps) for a steady gradient, and how many exceed 3; and the alive
channels per layer. ``--model mlp``: the same for the MLP 784-200-80-10 (its layers fc1, fc2).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/entry_signal.py [--lam 0.05] [--epochs 5] [--images 1800] [--optimizer linbreg] [--frozen]
    OMP_NUM_THREADS=1 .venv/bin/python experiments/entry_signal.py --model mlp --images 20000 --epochs 2
"""
from __future__ import annotations

import argparse

import torch
import torchvision

import archdisc
from archdisc import Config
from archdisc.data.builtin import load_data
from archdisc.recipe.setup import make_optimizer
from archdisc.sparsity.groups import unit_members

LAYERS = {"resnet18": ("conv1", "layer1_0_conv1", "layer2_0_conv1", "layer3_0_conv1",
                       "layer4_0_conv1", "layer4_1_conv1"),
          "mlp": ("fc1", "fc2")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lam", type=float, default=Config.lam)
    p.add_argument("--lr", type=float, default=Config.lr)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=1800, help="training images")
    p.add_argument("--model", choices=sorted(LAYERS), default="resnet18")
    p.add_argument("--optimizer", choices=["adabreg", "linbreg"], default="adabreg",
                   help="linbreg: with momentum 0.9")
    p.add_argument("--frozen", action="store_true", help="no step: the gradients at the start")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x, y = load_data("fashion-mnist", limit=args.images, seed=args.seed).train.tensors
    if args.model == "mlp":
        x = x.reshape(len(x), -1)
        net = archdisc.compile_graph(archdisc.build_space("mlp", widths=[784, 200, 80, 10]))
    else:
        x = x.view(-1, 1, 28, 28).expand(-1, 3, -1, -1).contiguous()
        net = archdisc.from_module(torchvision.models.resnet18(num_classes=10), x[:64])
    layers = LAYERS[args.model]
    archdisc.sparse_init(net, density=0.2, seed=args.seed)
    opt = make_optimizer(net, Config(lam=args.lam, lr=args.lr, optimizer=args.optimizer,
                                    momentum=0.9))
    params, members = dict(net.named_parameters()), unit_members(net)
    weight = {n: params[members[n][0]] for n in layers}

    def rows(w):
        return w.reshape(w.shape[0], -1)

    dead = {n: rows(w).eq(0).all(1) for n, w in weight.items()}
    total = {n: 0.0 for n in layers}
    squares = {n: 0.0 for n in layers}
    net.train()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            for n, w in weight.items():
                g = rows(w.grad)[dead[n]]
                total[n] = total[n] + g
                squares[n] = squares[n] + g.pow(2).sum(1)
            if not args.frozen:
                opt.step()
        r = {n: total[n].norm(dim=1) / squares[n].sqrt() for n in layers}
        coherence = {n: (round(float(c.median()), 2), int((c > 3).sum())) for n, c in r.items()}
        alive = {n: int(rows(w).ne(0).any(1).sum()) for n, w in weight.items()}
        print(f"epoch {epoch} loss {loss.item():.3f} coherence {coherence} alive {alive}",
              flush=True)


if __name__ == "__main__":
    main()
