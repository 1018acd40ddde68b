"""Why resnet18's sparse start admits no channel (issue 26 D): do the dead units' gradients add up?

AdaBreg switches a dead unit on when its subgradient variable v, the sum of its (normalised)
gradients, leaves the ball lam * sqrt(n). A gradient with a steady direction makes the sum grow
like t steps; pure noise like sqrt(t). This trains torchvision resnet18 (imported, sparse start,
density 0.2) with the search's optimizer on Fashion-MNIST as 3-channel 28x28 images (``--images``:
1,800 as in RESULTS.md 11's ImageFolder run, batch 128, 15 steps an epoch) and prints, each epoch,
per unit group (a residual stream's layers are one group, named by its first) the median over its
dead units of the coherence ||sum_t g_t|| / sqrt(sum_t ||g_t||^2): 1 for noise, sqrt(t) (8.7 after
75 steps) for a steady gradient, with how many exceed 3; the alive units; validation accuracy.
``--model mlp`` / ``convnet``: the MLP 784-200-80-10 / the built-in ConvNet instead. Pilots
(HISTORY.md 20): ``--frozen`` takes no step (the start's gradients); ``--hold K`` zeroes the alive
units' gradients for the first K steps; ``--gate KAPPA`` switches a dead unit on when its coherence
passes KAPPA (after 5 steps), its v set just outside the ball in the direction of its summed descent; ``--trial SHARE`` switches on that
share of each group's dead units at random after epoch 1, to see which the loss keeps. Does the
loss need the channels the signal points to? ``--alive conv1,layer1,layer2`` starts those unit
groups (by name prefix) with every channel alive (torchvision's init), ``--density`` sets the
others'; the end prints the compact model's parameters and its accuracy on the full 10k test set.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/entry_signal.py [--lam 0.05] [--epochs 5] [--images 1800]
        [--optimizer linbreg] [--frozen] [--hold 28] [--gate 3] [--trial 0.3]
        [--alive conv1,layer1,layer2] [--density 0.33]
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
from archdisc.sparsity.budget import compact_params


def rows(t):
    return t.reshape(t.shape[0], -1)


def joined(tensors):
    return torch.cat([rows(t) for t in tensors], 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lam", type=float, default=Config.lam)
    p.add_argument("--lr", type=float, default=Config.lr)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=1800, help="training images")
    p.add_argument("--model", choices=["resnet18", "mlp", "convnet"], default="resnet18")
    p.add_argument("--optimizer", choices=["adabreg", "linbreg"], default="adabreg",
                   help="linbreg: with momentum 0.9")
    p.add_argument("--frozen", action="store_true", help="no step: the gradients at the start")
    p.add_argument("--hold", type=int, default=0, help="steps with the alive units held")
    p.add_argument("--gate", type=float, help="admit a dead unit at this coherence")
    p.add_argument("--trial", type=float, default=0.0,
                   help="switch on this share of each group's dead units at random after epoch 1")
    p.add_argument("--density", type=float, default=0.2, help="of the sparse start")
    p.add_argument("--alive", default="", help="unit groups (name prefixes, comma-separated) "
                                               "that start with every channel alive")
    args = p.parse_args()
    if args.frozen and (args.gate is not None or args.hold):
        p.error("--frozen takes no step: it goes with neither --gate nor --hold")
    net, (x, y), (xv, yv) = fmnist(args.images, args.seed, args.model)
    dense = {id(t): t.detach().clone() for t in net.parameters()}
    archdisc.sparse_init(net, density=args.density, seed=args.seed)
    opt = make_optimizer(net, Config(lam=args.lam, lr=args.lr, optimizer=args.optimizer,
                                    momentum=0.9))
    groups = [g for g in opt.param_groups if g.get("kind") == "unit"]
    prefixes = tuple(filter(None, args.alive.split(",")))
    with torch.no_grad():
        for g in groups:
            if prefixes and g["name"].startswith(prefixes):
                for t in g["params"]:
                    t.copy_(dense[id(t)])
    grouped = {id(t) for g in groups for t in g["params"]}

    def alive(g):
        return joined(g["params"]).ne(0).any(1)

    dead0 = {id(g): ~alive(g) for g in groups}
    total = {id(g): 0.0 for g in groups}
    squares = {id(g): 0.0 for g in groups}
    step = 0
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            for g in groups:
                grad = joined([t.grad for t in g["params"]])
                total[id(g)] = total[id(g)] + grad
                squares[id(g)] = squares[id(g)] + grad.pow(2).sum(1)
            if step < args.hold:  # only the dead units' v move
                for g in groups:
                    live = alive(g)
                    for t in g["params"]:
                        t.grad[live] = 0
                for t in net.parameters():
                    if id(t) not in grouped and t.grad is not None:
                        t.grad.zero_()
            if not args.frozen:
                opt.step()
            step += 1
            if args.gate is not None and step >= 5:
                admit(opt, groups, total, squares, args.gate)
            if args.trial and step == len(range(0, len(x), 128)):
                for g in groups:
                    dead = ~alive(g)
                    pick = dead & (torch.rand(len(dead)) < args.trial)
                    switch_on(opt, g, pick, -total[id(g)][pick])
        net.eval()
        with torch.no_grad():
            val = (net(xv).argmax(1) == yv).float().mean().item() * 100
        report = {}
        for g in groups:
            c = (total[id(g)].norm(dim=1) / squares[id(g)].clamp_min(1e-30).sqrt())[dead0[id(g)]]
            name = g["name"].split("+")[0]
            report[name] = (round(float(c.median()), 2) if len(c) else None, int((c > 3).sum()),
                            f"{int(alive(g).sum())}/{len(c) + int((~dead0[id(g)]).sum())}")
        print(f"epoch {epoch} step {step} loss {loss.item():.3f} val {val:.1f}% "
              f"(coherence median, above 3, alive): {report}", flush=True)
    test = test_accuracy(net, args.seed, x.shape[1:])
    print(f"params {compact_params(net)[0]:,}, test {test:.2f}% (10,000 images)")


def shaped(t, shape):
    """Fashion-MNIST images ``t`` as inputs of ``shape``: (784,), (1, 28, 28) or (3, 28, 28)."""
    if len(shape) == 1:
        return t.reshape(len(t), -1)
    return t.reshape(len(t), 1, 28, 28).expand(len(t), *shape).contiguous()


def fmnist(images: int, seed: int, model: str = "resnet18"):
    """One thread, seeded: ``model`` (torchvision resnet18 on 3-channel 28x28 images, the MLP
    784-200-80-10 or the built-in ConvNet) and ``images`` Fashion-MNIST training images and the
    validation split, shaped for it: (net, (x, y), (xv, yv))."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = load_data("fashion-mnist", limit=images, seed=seed)
    (x, y), (xv, yv) = data.train.tensors, data.val.tensors
    shape = {"mlp": (784,), "convnet": (1, 28, 28)}.get(model, (3, 28, 28))
    x, xv = shaped(x, shape), shaped(xv, shape)
    if model == "mlp":
        net = archdisc.compile_graph(archdisc.build_space("mlp", widths=[784, 200, 80, 10]))
    elif model == "convnet":
        net = archdisc.compile_graph(archdisc.build_space("convnet"))
    else:
        net = archdisc.from_module(torchvision.models.resnet18(num_classes=10), x[:64])
    return net, (x, y), (xv, yv)


def plain_epoch(net, opt, x, y) -> float:
    """One epoch of ``opt`` in shuffled batches of 128; the last batch's loss."""
    net.train()
    order = torch.randperm(len(x))
    for i in range(0, len(x), 128):
        idx = order[i:i + 128]
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@torch.no_grad()
def test_accuracy(net, seed: int, shape) -> float:
    """Accuracy (%) on the full 10k Fashion-MNIST test set, its images shaped as ``shape``."""
    xt, yt = load_data("fashion-mnist", seed=seed).test.tensors
    xt = shaped(xt, shape)
    return 100 * sum(int((net(a).argmax(1) == b).sum())
                     for a, b in zip(xt.split(1000), yt.split(1000))) / len(xt)


@torch.no_grad()
def admit(opt, groups, total, squares, kappa):
    """Switch on every dead unit whose coherence passes ``kappa``, in the direction of its
    summed descent."""
    for g in groups:
        coherence = total[id(g)].norm(dim=1) / squares[id(g)].clamp_min(1e-30).sqrt()
        new = ~joined(g["params"]).ne(0).any(1) & (coherence > kappa)
        if not new.any():
            continue
        switch_on(opt, g, new, -total[id(g)][new])


@torch.no_grad()
def switch_on(opt, g, new, descent):
    """Units ``new`` of group ``g`` on: v just outside the ball lam sqrt(n) in the direction
    ``descent``, the weights the prox of that v."""
    v = descent / descent.norm(dim=1, keepdim=True) * 1.05 * g["reg"].lam * descent.shape[1] ** 0.5
    start = 0
    for t in g["params"]:
        k = rows(t).shape[1]
        rows(opt.state[t]["v"])[new] = v[:, start:start + k]
        rows(t.data)[new] = v[:, start:start + k] * (1 - 1 / 1.05)
        start += k


if __name__ == "__main__":
    main()
