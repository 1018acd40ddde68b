"""Data-parallel discovery under ``torchrun`` (torch.distributed + DistributedDataParallel).

    torchrun --nproc_per_node 2 -m archdisc discover --config c.toml --out runs/a

Every rank computes each epoch's seeded order; of every global batch of ``batch_size``
samples rank r takes the r-th of ``world`` contiguous slices (in-memory data: each rank
holds it all; a streamed Dataset: each rank reads only its slices). DDP averages the
gradients, and each rank weights its loss so that the average is the gradient of the
global batch's mean loss (see loop.train_epoch): the Bregman step then runs on the same
numbers on every rank, and :func:`check_agree`
verifies once an epoch that parameters, alive counts and lam agree. Rank 0 alone writes
the run folder, extracts, selects and fine-tunes (the compact model is small).

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything.
"""
from __future__ import annotations

import datetime
import functools
import os
import signal

import torch
from torch.nn.parallel import DistributedDataParallel

from archdisc.errors import ConfigError, Stopped, TrainingError

__all__ = ["Dist", "Stopped", "start", "lost", "peer_lost"]


def _as_param(p, grad):
    """``grad`` in ``p``'s memory layout. On CPU conv returns channels-last weight grads
    for a channels-last input (one-channel images from numpy often are: that path is
    ~1.4x faster here), and DDP would copy them into its row-major buckets with a
    "Grad strides do not match" warning from every rank."""
    if grad.stride() == p.stride():
        return grad
    return torch.empty_strided(p.shape, p.stride(), dtype=grad.dtype,
                               device=grad.device).copy_(grad)


class Dist:
    """This process's place in the job: ``rank`` of ``world`` (1 without torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owned=False):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.owned = owned  # whether start() made the process group (close() ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            _collective(torch.distributed.barrier)

    def wrap(self, net):
        """The module to train: ``net`` itself, or net in DistributedDataParallel."""
        if self.world == 1:
            return net
        ids = [net_device(net).index] if net_device(net).type == "cuda" else None
        for p in net.parameters():
            if p.requires_grad:
                p.register_hook(functools.partial(_as_param, p))
        return DistributedDataParallel(net, device_ids=ids)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the ranks (``t`` itself with one process)."""
        if self.world > 1:
            t = t.clone()
            _collective(torch.distributed.all_reduce, t)
        return t

    def check_agree(self, values: list[float], what: str):
        """Raise TrainingError unless every rank holds the same ``values`` (call it with
        more than one process only: the caller skips computing ``values`` otherwise)."""
        mine = torch.tensor(values, dtype=torch.float64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        _collective(torch.distributed.all_gather, every, mine)
        for r, theirs in enumerate(every):
            if not torch.equal(theirs, every[0]):
                raise TrainingError(f"the ranks disagree on {what} (rank 0: "
                                    f"{every[0].tolist()[:6]}, rank {r}: "
                                    f"{theirs.tolist()[:6]}); the data-parallel run is not "
                                    f"deterministic on this backend")

    @property
    def device(self) -> torch.device:
        if self.world > 1 and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def close(self):
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def net_device(net) -> torch.device:
    return next(net.parameters()).device


def start(device_name: str) -> Dist:
    """Join the torchrun job this process belongs to (gloo on CPU, nccl with CUDA);
    returns ``Dist()`` when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"config field 'device': rank {rank} has local rank {local} "
                              f"but this machine has {torch.cuda.device_count()} GPU(s); "
                              f"start at most that many processes per machine")
        torch.cuda.set_device(local)
    signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    owned = not torch.distributed.is_initialized()  # else the caller's script made it
    if owned:
        torch.distributed.init_process_group(
            "nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    return Dist(rank, world, local, owned)


RESUME = "continue it with the same torchrun command and --resume"


def lost(e: Exception) -> Stopped:
    """The error of a rank whose peer is gone (killed, crashed, unreachable)."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return Stopped(f"lost contact with another process of the torchrun job "
                   f"({first[:200]}); the job stops - {RESUME}")


def peer_lost(e: RuntimeError) -> bool:
    """Whether ``e`` says another process of the job is gone (gloo raises a plain
    RuntimeError from DDP's backward; collectives raise DistError)."""
    return isinstance(e, torch.distributed.DistError) or any(
        k in str(e) for k in ("gloo/transport", "NCCL", "Connection reset", "Connection closed"))


def _collective(fn, *args):
    """Run a collective; a lost peer becomes one clear TrainingError."""
    try:
        fn(*args)
    except RuntimeError as e:
        if not peer_lost(e):
            raise
        raise lost(e) from None


def _stopped_by_torchrun(signum, frame):
    raise Stopped(f"stopped by torchrun (signal {signum}): another process of the job "
                  f"failed or was killed; the last finished epoch is in the checkpoint - "
                  f"{RESUME}")
