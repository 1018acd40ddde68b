"""Compress a trained model to a MACs fraction (issue 27): archdisc from the trained weights
against one-shot pruning (L2 norm, Torch-Pruning's group-norm and Taylor importance) and the
same widths trained from scratch, at equal epochs.

The model: the Fashion-MNIST MLP 784-200-80-10, trained here with Adam for 10 epochs (the
"user's model", shared by every method). Each method then gets 3 epochs:

* ``archdisc``: ``run_discover`` with ``--weights`` (the search starts from the trained
  weights), ``target_macs`` = the fraction, 1 search epoch (AdaBreg; the target falls from
  the full size to the fraction along a cubic, units cut with the survivors' weights
  kept) + 2 fine-tune epochs, cosine lr; ``_kd``: the fine-tune distilled from the trained
  model (weight 0.5, T 4).
* ``prune`` / ``tp_norm`` / ``tp_taylor``: every hidden layer cut by the same ratio to the
  MACs target (the ratio Torch-Pruning's default, uniform per-layer pruning, uses), units
  ranked by their incoming row's L2 norm / Torch-Pruning's GroupMagnitudeImportance (in- and
  outgoing weights) / its GroupTaylorImportance (gradients of 10 training batches), then 3
  epochs of Adam with the same cosine lr; ``prune_kd``: with the fine-tune distilled.
* ``scratch``: the widths of ``prune`` trained 13 epochs from a fresh init.

    python experiments/compress.py --seeds 0 1 2          # -> results/compress_parts/s<seed>.json
    python experiments/compress.py --merge                # -> results/compress.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, acc, atomic_write_text, fit, mean_std, read_parts,  # noqa: E402
                    set_threads, workdir, write_results)

import torch  # noqa: E402
from torch import nn  # noqa: E402

FRACS = (0.5, 0.25, 0.1)
DENSE_EPOCHS, EPOCHS, BATCH = 10, 3, 128
PARTS = RESULTS / "compress_parts"


def mlp(widths=(200, 80)) -> nn.Sequential:
    """The user's model (``--model compress:mlp``)."""
    w = [784, *widths, 10]
    layers = [nn.Flatten()]
    for i in range(len(w) - 1):
        layers += [nn.Linear(w[i], w[i + 1])] + ([nn.ReLU()] if i < len(w) - 2 else [])
    return nn.Sequential(*layers)


def macs(widths) -> int:
    """MACs of the MLP with these hidden widths."""
    w = [784, *widths, 10]
    return sum(a * b for a, b in zip(w, w[1:]))


def hidden(model) -> list[int]:
    return [m.out_features for m in model if isinstance(m, nn.Linear)][:-1]


def uniform_widths(frac) -> list[int]:
    """The largest per-layer keep ratio (in steps of 0.001) whose widths fit the MACs
    fraction."""
    def widths(r):
        return [max(1, round(w * r / 1000)) for w in (200, 80)]
    r = max(r for r in range(1, 1001) if macs(widths(r)) <= frac * macs((200, 80)))
    return widths(r)


@torch.no_grad()
def keep_rows(dense, rows_of) -> nn.Sequential:
    """The dense model with hidden layer i cut to the rows ``rows_of[i]`` (sorted)."""
    lin = [m for m in dense if isinstance(m, nn.Linear)]
    small = mlp([len(r) for r in rows_of])
    cols = torch.arange(784)
    for i, (src, dst) in enumerate(zip(lin, [m for m in small if isinstance(m, nn.Linear)])):
        rows = rows_of[i] if i < len(rows_of) else torch.arange(src.out_features)
        dst.weight.copy_(src.weight[rows][:, cols])
        dst.bias.copy_(src.bias[rows])
        cols = rows
    return small


def scores(dense, how, data) -> list[torch.Tensor]:
    """Importance of every hidden unit: its row's L2 norm (``how="norm"``), or Torch-Pruning's
    group magnitude (``"magnitude"``) or Taylor (``"taylor"``) importance."""
    lin = [m for m in dense if isinstance(m, nn.Linear)][:-1]
    if how == "norm":
        return [torch.cat([m.weight, m.bias[:, None]], 1).norm(dim=1) for m in lin]
    import torch_pruning as tp
    model = copy.deepcopy(dense)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 1, 28, 28))
    if how == "taylor":
        imp = tp.importance.GroupTaylorImportance()
        x, y = data.train.tensors
        model.zero_grad()
        for i in range(10):
            nn.functional.cross_entropy(model(x[i * BATCH:(i + 1) * BATCH]),
                                        y[i * BATCH:(i + 1) * BATCH]).backward()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    hidden = [m for m in model if isinstance(m, nn.Linear)][:-1]
    return [imp(dg.get_pruning_group(m, tp.prune_linear_out_channels,
                                     list(range(m.out_features)))) for m in hidden]


def finetune(model, data, seed, teacher=None, epochs=EPOCHS):
    """Adam 1e-3 with a per-step cosine to 0, optionally distilled (0.5, T 4) from teacher."""
    from archdisc.recipe.loop import cosine_steps, distill_loss, epoch_order, train_epoch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.train.tensors
    on_step = cosine_steps(opt, 1e-3, epochs * math.ceil(len(x) / BATCH))
    loss_of = distill_loss(teacher, 0.5, "classification") if teacher is not None else None
    for e in range(1, epochs + 1):
        train_epoch(model, opt, x, y, "classification", BATCH, epoch_order(seed, 100 + e, len(x)),
                    on_step=on_step, loss_of=loss_of)
    return model.eval()


def run_seed(seed, archdisc_opts: dict):
    from safetensors.torch import save_file

    from archdisc import Config, run_discover
    from archdisc.data import load_data
    data = load_data("fashion-mnist", seed=seed)
    base = workdir()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dense = fit(mlp(), data, DENSE_EPOCHS, seed).eval()
    weights = base / f"dense_s{seed}.safetensors"
    save_file(dense.state_dict(), str(weights))
    full = macs(hidden(dense))
    rows = [{"method": "dense", "seed": seed, "macs": 1.0, "test": acc(dense, data.test),
             "seconds": round(time.perf_counter() - t0, 1)}]

    def row(method, frac, model, t, **extra):
        rows.append({"method": method, "seed": seed, "frac": frac,
                     "macs": macs(hidden(model)) / full, "widths": hidden(model),
                     "test": acc(model, data.test), "seconds": round(time.perf_counter() - t, 1),
                     **extra})
        print(json.dumps(rows[-1]), flush=True)

    for frac in FRACS:
        widths = uniform_widths(frac)
        for how, name in (("norm", "prune"), ("norm", "prune_kd"), ("magnitude", "tp_norm"),
                          ("taylor", "tp_taylor")):
            t = time.perf_counter()
            imp = scores(dense, how, data)
            small = keep_rows(dense, [s.argsort(descending=True)[:k].sort().values
                                      for s, k in zip(imp, widths)])
            before = acc(small, data.test)
            row(name, frac, finetune(small, data, seed, dense if name.endswith("_kd") else None),
                t, test_before_finetune=before)
        t = time.perf_counter()
        torch.manual_seed(seed)
        row("scratch", frac, fit(mlp(widths), data, DENSE_EPOCHS + EPOCHS, seed).eval(), t)
        for name, distill in (("archdisc", 0.0), ("archdisc_kd", 0.5)):
            t = time.perf_counter()
            cfg = Config(**{**dict(model="compress:mlp", weights=str(weights), target_macs=frac,
                                   data="fashion-mnist", seed=seed, epochs=1, finetune=2,
                                   finetune_schedule="cosine", select="none", lr=1e-3,
                                   control_every=10, batch_size=BATCH, device="cpu",
                                   distill=distill), **archdisc_opts})
            rep = run_discover(cfg, base / f"{name}_{frac}_s{seed}", force=True, progress=False)
            rows.append({"method": name, "seed": seed, "frac": frac,
                         "macs": rep["macs"]["compact"] / rep["macs"]["supernet"],
                         "widths": [u["alive"] for u in rep["units"].values()],
                         "test": rep["test"]["compact"],
                         "test_before_finetune": rep["test"]["compact_extracted"],
                         "seconds": round(time.perf_counter() - t, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def merge(started, tag=""):
    found = read_parts(PARTS, f"s?{tag}.json")
    return summarise(f"compress{tag}", [r for part in found for r in part["rows"]],
                     [part["command"] for part in found], started,
                     "Fashion-MNIST 55k/5k/10k, MLP 784-200-80-10 trained 10 epochs (Adam), then "
                     "3 epochs per method; 1 CPU thread")


def summarise(name, rows, commands, started, notes):
    """Mean and spread of every (MACs fraction, method) cell of ``rows``, written to
    results/<name>.json and printed; the file's path."""
    cells = {}
    for r in rows:
        cells.setdefault((r.get("frac", 1.0), r["method"]), []).append(r)
    summary = [{"frac": frac, "method": m, "test": mean_std([r["test"] for r in rs]),
                "macs": mean_std([r["macs"] for r in rs]), "seeds": [r["seed"] for r in rs],
                "widths": [r.get("widths") for r in rs]}
               for (frac, m), rs in sorted(cells.items(), key=lambda kv: (-kv[0][0], kv[0][1]))]
    path = write_results(name, {"summary": summary, "runs": rows, "part_commands": commands},
                         seeds=sorted({r["seed"] for r in rows}), started=started, notes=notes)
    for s in summary:
        print(f"{s['frac']:>5} {s['method']:<12} test {s['test']['mean']:.2f} ± "
              f"{s['test']['std']:.2f}  MACs {s['macs']['mean']:.3f} (n={s['test']['n']})")
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--archdisc", default="{}", help="JSON config overrides for archdisc")
    p.add_argument("--tag", default="", help="part / result file name suffix (a variant)")
    p.add_argument("--merge", action="store_true")
    args = p.parse_args()
    set_threads(1)
    started = time.perf_counter()
    if args.merge:
        print(merge(started, args.tag))
        return
    PARTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        rows = run_seed(seed, json.loads(args.archdisc))
        part = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv])}
        atomic_write_text(PARTS / f"s{seed}{args.tag}.json", json.dumps(part, indent=2) + "\n")


if __name__ == "__main__":
    main()
