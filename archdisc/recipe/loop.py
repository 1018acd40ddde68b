"""The training loop: one epoch, the learning-rate schedules, augmentation, the loss,
and the fine-tune of a compact model.

Every epoch's data order (and random crops / flips) is drawn from ``(seed, epoch)`` alone,
so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdisc.errors import ConfigError, TrainingError

__all__ = ["tensors", "batches", "train_epoch", "loss_fn", "epoch_order", "cosine", "set_lr",
           "cosine_steps", "crop_flip", "augmenter", "masked_adam", "finetune"]


def loss_fn(out, y, task):
    if task == "classification":
        return F.cross_entropy(out.flatten(0, -2), y.flatten())  # (N, C) or per token
    return F.mse_loss(out.reshape(y.shape), y)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of ``epoch``: a function of (seed, epoch) only, so resume sees it too."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2 ** 63)
    return torch.randperm(n, generator=gen)


def cosine(base: float, t: float, total: float) -> float:
    """The cosine schedule: ``base`` at t = 0 down to 0 at t = total."""
    return base * 0.5 * (1 + math.cos(math.pi * t / total))


def set_lr(opt, config, epoch: int) -> float:
    """The learning rate of (1-based) ``epoch``: constant, or cosine from lr to ~0."""
    lr = config.lr
    if config.lr_schedule == "cosine":
        lr = cosine(config.lr, epoch - 1, config.epochs)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def cosine_steps(opt, lr: float, total: int):
    """An ``on_step`` hook for :func:`train_epoch`: after each of ``total`` steps, set the
    lr of every group of ``opt`` to the next value of a cosine from ``lr`` down to 0."""
    done = [0]

    def step(_):
        done[0] += 1
        for g in opt.param_groups:
            g["lr"] = cosine(lr, done[0], total)
    return step


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4, rows=None) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch (``pad`` pixels each side) and
    random horizontal flip, for (N, C, H, W) ``x`` on its own device, drawn from ``gen``
    (a generator on that device). On standardised data zero padding is the mean colour.
    Per sample: out = padded[:, dy:dy + H, dx:dx + W], mirrored left-right with p = 1/2.
    ``rows = (start, total)``: ``x`` is rows start.. of a batch of ``total``, and gets the
    draws those rows would get in the whole batch."""
    n, c, h, w = x.shape
    dev = x.device
    start, total = rows or (0, n)
    shift = torch.randint(0, 2 * pad + 1, (2, total), generator=gen, device=dev)
    flip = torch.rand(total, generator=gen, device=dev) < 0.5
    shift, flip = shift[:, start:start + n], flip[start:start + n]
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (shift[0, :, None] + torch.arange(h, device=dev)).view(n, 1, h, 1)
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * pad))
    j = torch.arange(w, device=dev)
    cols = shift[1, :, None] + torch.where(flip[:, None], w - 1 - j, j)  # flip: read j backwards
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def augmenter(config, seed: int, epoch: int, device):
    """The batch augmentation of ``epoch`` (None for ``augment="none"``): a function
    ``(xb, yb) -> (xb, yb)`` drawing from a generator seeded by (seed, epoch) alone, so a
    resumed run augments exactly like an uninterrupted one. Denoising targets (clean
    images) get the same crop / flip as their inputs."""
    if config.augment == "none":
        return None
    key = (seed * 1_000_003 + epoch) % 2 ** 63 ^ 0x5DEECE66D  # not epoch_order's stream
    gen = torch.Generator(device=device).manual_seed(key)

    def augment(xb, yb, rows=None):
        if xb.dim() != 4:
            raise ConfigError(f"config field 'augment': {config.augment!r} needs image "
                              f"batches (N, C, H, W), got shape {list(xb.shape)}")
        if yb.dim() < 2:  # class labels
            return crop_flip(xb, gen, rows=rows), yb
        c = xb.shape[1]
        both = crop_flip(torch.cat([xb, yb.reshape(xb.shape)], 1), gen, rows=rows)
        return both[:, :c], both[:, c:].reshape(yb.shape)
    return augment


def tensors(split, device):
    """``(x, y)`` of an in-memory split (a TensorDataset), moved to ``device`` once; or
    ``(split, None)`` for any other Dataset, which is then streamed batch by batch."""
    if isinstance(split, torch.utils.data.TensorDataset):
        return tuple(t.to(device) for t in split.tensors[:2])
    return split, None


def _loader(dataset, batch_lists, workers: int, device):
    # its own generator: iterating must not draw from torch's global RNG (dropout's)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_lists,
                                       num_workers=workers,
                                       pin_memory=torch.device(device).type == "cuda",
                                       generator=torch.Generator().manual_seed(0))


def batches(split, batch_size: int, device, workers: int = 0):
    """``(xb, yb)`` on ``device`` for the samples of ``split`` in order, ``batch_size`` at
    a time: slices of in-memory tensors, or a DataLoader (``workers`` processes) over any
    other Dataset."""
    n = len(split)
    if isinstance(split, torch.utils.data.TensorDataset):
        x, y = split.tensors[:2]
        for start in range(0, n, batch_size):
            yield x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        return
    lists = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    for xb, yb in _loader(split, lists, workers, device):
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def train_epoch(net, opt, x, y, task, batch_size, order, bar=None, on_step=None,
                augment=None, dist=None, workers: int = 0, loss_of=None) -> float:
    """One pass over (x, y) in ``order``; returns the mean loss, raises TrainingError when
    it is not finite. ``augment(xb, yb) -> (xb, yb)`` (see :func:`augmenter`) transforms
    each batch. The loss stays on the device during the epoch (no sync per step).
    With ``y = None``, ``x`` is a Dataset read through a DataLoader with ``workers``
    processes (see :func:`tensors`), so memory does not grow with the dataset.
    ``loss_of(out, xb, yb)`` replaces the task's loss (e.g. distillation).

    Data-parallel (``dist``, an :class:`archdisc.dist.Dist` of more than one process,
    ``net`` in DDP): each rank takes its slice of every global batch, with the
    augmentation draws the whole batch would give it, and scales its mean loss by
    ``len(slice) * world / len(batch)``, so that DDP's average of the gradients is the
    gradient of the global batch's mean loss (a batch of fewer than 2 x world samples is
    run whole by every rank). A streamed rank reads only its slice."""
    net.train()
    device = next(net.parameters()).device
    world = 1 if dist is None else dist.world
    total = torch.zeros((), dtype=torch.float64, device=device)
    shown = bar is not None and not bar.disable
    chunks = order.to(device if y is not None else "cpu").split(batch_size)

    def mine(n):  # (start, count) of this rank's rows in a batch of n
        if world == 1 or n < 2 * world:  # tiny batch: every rank runs it whole (BatchNorm
            return 0, n                   # needs 2 samples); DDP averages equal gradients
        rows = torch.arange(n).tensor_split(world)[dist.rank]
        return int(rows[0]), len(rows)
    stream = None if y is not None else iter(_loader(
        x, [c[s:s + k].tolist() for c in chunks for s, k in [mine(len(c))]], workers, device))
    for step, idx in enumerate(chunks):
        s, k = mine(len(idx))
        if stream is None:
            xb, yb = x[idx], y[idx]
            if augment is not None:  # the whole batch, as one process would
                xb, yb = augment(xb, yb)
            xb, yb = xb[s:s + k], yb[s:s + k]
        else:
            xb, yb = (t.to(device, non_blocking=True) for t in next(stream))
            if augment is not None:  # the draws these rows get in the whole batch
                xb, yb = augment(xb, yb, rows=(s, len(idx)))
        opt.zero_grad(set_to_none=True)
        out = net(xb)
        loss = loss_fn(out, yb, task) if loss_of is None else loss_of(out, xb, yb)
        if k < len(idx):  # this rank's share of the global batch's mean loss
            loss = loss * (k * world / len(idx))
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step)
        total += loss.detach().double() * (len(idx) / world)
        if bar is not None:
            bar.update(1)
            if shown and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    if world > 1:
        total = dist.sum(total)
    mean = total.item() / len(order)
    if not math.isfinite(mean):
        raise TrainingError(f"the mean training loss of the epoch is {mean}")
    return mean


@torch.no_grad()
def recalibrate_bn(net, split, batch_size: int, device, samples: int = 2048) -> None:
    """BatchNorm running statistics re-estimated (train mode, the plain mean over batches)
    on the first ``samples`` training samples, in order: after a cut they describe the
    network before it. A no-op without BatchNorm."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momentum = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    was_training = net.training
    net.train()
    seen = 0
    for xb, _ in batches(split, batch_size, device):
        if seen >= samples:
            break
        net(xb)
        seen += len(xb)
    for m, mo in zip(norms, momentum):
        m.momentum = mo
    net.train(was_training)


def masked_adam(net, config, lr: float, total: int, cosine: bool, weight_decay: float = 0.0):
    """Adam (AdamW with ``weight_decay``) on a compact model and its ``on_step`` hook: the
    cosine lr over ``total`` steps, and, with kernel or element groups, keeping the zeros the
    search found inside surviving units (so the sparsity is not lost). Returns (opt, hook)."""
    opt = (torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
           if weight_decay > 0 else torch.optim.Adam(net.parameters(), lr=lr))
    schedule = cosine_steps(opt, lr, total) if cosine else None
    keep = ([(p, p != 0) for p in net.parameters() if p.dim() > 1]
            if config.group_mode != "unit" else [])

    @torch.no_grad()
    def on_step(i):
        if schedule is not None:
            schedule(i)
        for p, mask in keep:
            p.mul_(mask)
    return opt, on_step


def distill_loss(teacher, weight: float, task: str, temperature: float = 4.0):
    """(1 - weight) x the task's loss + weight x T^2 KL(teacher || student) of the outputs
    softened at temperature T (classification; denoising: the squared error to the
    teacher's output)."""
    teacher.eval()

    def loss_of(out, xb, yb):
        with torch.no_grad():
            t = teacher(xb)
        if task == "classification":
            t, s = (F.log_softmax(o.flatten(0, -2) / temperature, -1) for o in (t, out))
            soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2
        else:
            soft = F.mse_loss(out, t)
        return (1 - weight) * loss_fn(out, yb, task) + weight * soft
    return loss_of


def finetune(net, data, config, device, bar=None, teacher=None) -> list[float]:
    """``config.finetune`` epochs of plain Adam (``config.finetune_lr``) on the compact model;
    AdamW when ``config.weight_decay`` > 0, with ``config.augment`` as in the search;
    distilled from ``teacher`` with ``config.distill`` > 0."""
    x, y = tensors(data.train, device)
    n = len(data.train)
    total = math.ceil(n / config.batch_size) * config.finetune
    opt, on_step = masked_adam(net, config, config.finetune_lr, total,
                               config.finetune_schedule == "cosine", config.weight_decay)
    loss_of = (distill_loss(teacher, config.distill, data.task)
               if teacher is not None and config.distill > 0 else None)
    return [train_epoch(net, opt, x, y, data.task, config.batch_size,
                        epoch_order(config.seed + 1, e, n), bar, on_step=on_step,
                        augment=augmenter(config, config.seed + 1, e, device),
                        workers=config.loader_workers, loss_of=loss_of)
            for e in range(1, config.finetune + 1)]
