"""A small GPT on Python's own standard library, byte by byte: compress the trained model.

Data: the standard library's ``*.py`` files (on every machine), sorted by path; file i goes to
validation when i % 10 == 0, to test when i % 10 == 1, else to training; each split's bytes
cut into sequences of ``--length`` (the label of a byte: the next one). The model
(nanoGPT's layout, written here: token + position embeddings, ``--blocks`` pre-norm blocks of
causal self-attention with ``--heads`` heads and a GELU MLP of 4 x ``--width``, a tied head)
is trained ``--dense-epochs`` with Adam, then each method gets ``--epochs`` more:

* ``archdisc``: ``run_discover`` from the trained weights, ``target_params``: 1 search
  epoch (heads, MLP units and, with ``--depth``, whole branches) + the rest fine-tune, cosine;
* ``prune``: the same parameter count by weight norm, uniform over the layers (each block
  keeps the same share of its heads and of its MLP units, the strongest by L2 norm of
  their weights: Torch-Pruning's default ranking), extracted exactly, then fine-tuned with
  Adam, cosine, all ``--epochs``.

Reported on the test split: bits per byte (cross-entropy / ln 2) and next-byte accuracy.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/lm_stdlib.py [--fracs 0.5 0.3] [--seed 0]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import fit, set_threads, workdir, write_results
from archdisc import Config, count_params, extract, from_module, load, run_discover
from archdisc.sparsity.groups import unit_members


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads, self.c_attn, self.c_proj = heads, nn.Linear(width, 3 * width), \
            nn.Linear(width, width)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (p.view(B, T, self.heads, C // self.heads).transpose(1, 2) for p in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(width), Attention(width, heads), \
            nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, width=64, heads=4, blocks=4, length=64, vocab=256):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(length, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(blocks)))
        self.ln_f, self.lm_head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)
        self.wte.weight = self.lm_head.weight

    def forward(self, idx):
        b, t = idx.size()
        x = self.wte(idx) + self.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
        return self.lm_head(self.ln_f(self.blocks(x)))


def stdlib_text(length: int, train_bytes: int, eval_bytes: int):
    """(train, val, test) TensorDatasets of byte sequences and their next bytes."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    parts = [bytearray(), bytearray(), bytearray()]
    for i, f in enumerate(files):
        k = 1 if i % 10 == 0 else 2 if i % 10 == 1 else 0
        if len(parts[k]) < (train_bytes if k == 0 else eval_bytes):
            parts[k] += f.read_bytes()
    out = []
    for k, part in enumerate(parts):
        b = torch.tensor(list(part[: (train_bytes if k == 0 else eval_bytes) + 1]))
        n = (len(b) - 1) // length
        ds = torch.utils.data.TensorDataset(b[: n * length].view(n, length),
                                            b[1: n * length + 1].view(n, length))
        ds.classes = list(range(256))
        out.append(ds)
    return out


@torch.no_grad()
def score(model, split) -> dict:
    model.eval()
    x, y = split.tensors
    loss = correct = 0.0
    for i in range(0, len(x), 256):
        out = model(x[i:i + 256])
        loss += F.cross_entropy(out.flatten(0, 1), y[i:i + 256].flatten(), reduction="sum")
        correct += (out.argmax(-1) == y[i:i + 256]).sum()
    return {"bpb": round(float(loss) / y.numel() / math.log(2), 4),
            "acc": round(100 * float(correct) / y.numel(), 2)}


@torch.no_grad()
def prune_uniform(net, params: int):
    """Zero, in every searchable layer, the same share of its weakest unit groups (L2 norm
    of the group's weights) so that the extracted model has at most ``params``: the share
    of heads and units first, then (heads fixed) the share of MLP units alone, each by
    bisection on the extracted size. Returns the extracted (verified) model."""
    members, named = unit_members(net), dict(net.named_parameters())
    norms = {n: sum(named[p].reshape(len(named[p]), -1).pow(2).sum(1) for p in names)
             for n, names in members.items()}

    def pruned(heads, units):
        trial = copy.deepcopy(net)
        tp = dict(trial.named_parameters())
        for n, names in members.items():
            share = heads if trial.graph.nodes[n]["op"] == "attention" else units
            dead = norms[n].argsort()[: len(norms[n]) - max(1, round(share * len(norms[n])))]
            for p in names:
                tp[p][dead] = 0
        return extract(trial)[1]  # verified: the zeroed net's function

    def bisect(lo, make):
        best, hi = make(lo), 1.0
        for _ in range(16):
            mid = (lo + hi) / 2
            trial = make(mid)
            if count_params(trial.graph) <= params:
                lo, best = mid, trial
            else:
                hi = mid
        return lo, best
    share, _ = bisect(0.0, lambda s: pruned(s, s))
    return bisect(share, lambda u: pruned(share, u))[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fracs", type=float, nargs="+", default=[0.5, 0.3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--train-bytes", type=int, default=1_000_000)
    ap.add_argument("--eval-bytes", type=int, default=100_000)
    ap.add_argument("--dense-epochs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--depth", action="store_true", help="archdisc may remove whole branches")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    set_threads(1)
    started, base = time.perf_counter(), workdir()
    train, val, test = stdlib_text(args.length, args.train_bytes, args.eval_bytes)
    data = argparse.Namespace(train=train)
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    dense = fit(GPT(args.width, args.heads, args.blocks, args.length), data, args.dense_epochs,
                args.seed, lr=3e-3, schedule="cosine")
    rows = [{"method": "dense", "params": sum(p.numel() for p in dense.parameters()),
             **score(dense, test), "seconds": round(time.perf_counter() - t, 1)}]
    print(json.dumps(rows[-1]), flush=True)
    weights = base / "dense.pt"
    torch.save(dense.state_dict(), weights)
    net = from_module(dense, train.tensors[0][:2])
    full = count_params(net.graph)
    for frac in args.fracs:
        target = int(frac * full)
        t = time.perf_counter()
        model = GPT(args.width, args.heads, args.blocks, args.length)
        model.load_state_dict(torch.load(weights, weights_only=True))
        rep = run_discover(Config(target_params=target, epochs=1, finetune=args.epochs - 1,
                                  finetune_schedule="cosine", select="none", lr=1e-3,
                                  control_every=10, seed=args.seed, depth=args.depth,
                                  device="cpu"),
                           base / f"archdisc_{frac}", force=True, progress=False,
                           data=(train, val, test), model=model)
        compact = load(base / f"archdisc_{frac}" / "compact")
        rows.append({"method": "archdisc", "frac": frac, "params": count_params(compact.graph),
                     "widths": {n: u["alive"] for n, u in rep["units"].items()
                                if u["op"] in ("attention", "linear") and n != "lm_head"},
                     **score(compact, test), "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
        t = time.perf_counter()
        pruned = prune_uniform(net, rows[-1]["params"])
        before = score(pruned, test)
        fit(pruned, data, args.epochs, args.seed, offset=100, schedule="cosine")
        rows.append({"method": "prune", "frac": frac, "params": count_params(pruned.graph),
                     "widths": {n: pruned.graph.nodes[n].get("heads", pruned.graph.nodes[n][
                         "units"]) for n in rows[-1]["widths"] if n in pruned.graph},
                     **score(pruned, test), "before_finetune": before,
                     "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    write_results(f"lm_stdlib{args.tag}", {"args": vars(args), "rows": rows},
                  seeds=[args.seed], started=started,
                  notes="GPT on the standard library's bytes; test bits per byte and accuracy")


if __name__ == "__main__":
    main()
