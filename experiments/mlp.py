"""Discovery vs. pruning vs. scratch on Fashion-MNIST (or MNIST), MLP 784-200-80-10 (issue 9).

Equal compact parameter counts and equal total epochs (13) for every method:

* ``archdisc``: ``run_discover`` with ``target_params`` = the size, 10 epochs of AdaBreg
  from a sparse supernet, extraction, then 3 epochs of Adam fine-tuning (regularizer off).
* ``prune``: dense Adam 10 epochs -> keep the top-k neurons per hidden layer by the L2
  norm of their incoming weights (row + bias) -> 3 epochs of Adam fine-tuning.
  ``prune_ftcosine``: the same with a per-step cosine lr (1e-3 -> 0) in the fine-tune.
* ``torch_pruning``: the same dense model, pruned to the same widths by Torch-Pruning
  (its dependency graph and group L2 magnitude importance: a neuron's incoming *and*
  outgoing weights), then the 3-epoch cosine fine-tune of ``prune_ftcosine``.
* ``scratch``: the pruned widths trained from scratch with Adam for 13 epochs.

Every method uses batch 128, Adam lr 1e-3 where it trains densely, the same data split
(55k/5k/10k, seeded) and one CPU thread. Each (method, seed) writes a part file; ``--merge``
collects them into ``experiments/results/mlp.json`` and ``mlp.png``. ``--data mnist
--data-root ROOT`` (ROOT/MNIST/raw/) uses MNIST instead, with its own files (``mlp_mnist*``)::

    python experiments/mlp.py --methods prune scratch --seeds 0 1 2
    python experiments/mlp.py --methods archdisc --seeds 0 1 2 --archdisc '{"lam": 0.05}'
    python experiments/mlp.py --merge
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, acc, atomic_write_text, fit, mean_std,  # noqa: E402
                    n_params, read_parts, set_threads, workdir, write_results)

import torch  # noqa: E402
from torch import nn  # noqa: E402

SIZES = {112925: (132, 65), 82935: (98, 55), 46727: (57, 29)}
EPOCHS, FINETUNE, LR, BATCH = 10, 3, 1e-3, 128
LABELS = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}
ARCHDISC = dict(select="none", dense_epochs=0, space="mlp", data="fashion-mnist", epochs=EPOCHS, finetune=FINETUNE,
                finetune_lr=LR, optimizer="adabreg", lr=1e-3, lam=0.05, density=0.2,
                batch_size=BATCH, device="cpu")


def mlp(widths) -> nn.Sequential:
    w = [784, *widths, 10]
    layers = [nn.Flatten()]
    for i in range(len(w) - 1):
        layers.append(nn.Linear(w[i], w[i + 1]))
        if i < len(w) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def prune(dense: nn.Sequential, widths) -> nn.Sequential:
    """Keep the top-k neurons of each hidden layer by the L2 norm of (incoming row, bias)."""
    lin = [m for m in dense if isinstance(m, nn.Linear)]
    small = mlp(widths)
    slin = [m for m in small if isinstance(m, nn.Linear)]
    cols = torch.arange(lin[0].in_features)
    for i, layer in enumerate(lin):
        w, b = layer.weight, layer.bias
        if i < len(widths):
            norms = torch.cat([w, b[:, None]], 1).norm(dim=1)
            rows = norms.topk(widths[i]).indices.sort().values
        else:
            rows = torch.arange(w.shape[0])
        slin[i].weight.copy_(w[rows][:, cols])
        slin[i].bias.copy_(b[rows])
        cols = rows
    return small


def tp_prune(dense: nn.Sequential, widths) -> nn.Sequential:
    """Torch-Pruning: score every hidden neuron's dependency group (incoming row and outgoing
    column) by L2 magnitude on the dense model, then remove the lowest of each layer."""
    import copy
    import torch_pruning as tp
    model = copy.deepcopy(dense)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 784))
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    hidden = [m for m in model if isinstance(m, nn.Linear)][:len(widths)]
    drop = [imp(dg.get_pruning_group(m, tp.prune_linear_out_channels, list(range(m.out_features))))
            .argsort()[:m.out_features - k].tolist() for m, k in zip(hidden, widths)]
    for m, idxs in zip(hidden, drop):
        dg.get_pruning_group(m, tp.prune_linear_out_channels, idxs).prune()
    return model


def run_prune(data, seed, schedule="constant", name="prune", pruner=prune):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dense = fit(mlp((200, 80)), data, EPOCHS, seed)
    t_dense = time.perf_counter() - t0
    rows = [{"method": "dense", "seed": seed, "params": n_params(dense), "widths": [200, 80],
             "test": acc(dense, data.test), "val": acc(dense, data.val), "epochs": EPOCHS,
             "seconds": round(t_dense, 1)}]
    for size, widths in SIZES.items():
        t1 = time.perf_counter()
        small = pruner(dense, widths)
        before = acc(small, data.test)
        fit(small, data, FINETUNE, seed, offset=100, schedule=schedule)
        assert n_params(small) == size
        assert [m.out_features for m in small if isinstance(m, nn.Linear)][:-1] == list(widths)
        rows.append({"method": name, "seed": seed, "params": size, "widths": list(widths),
                     "test_before_finetune": before, "test": acc(small, data.test),
                     "val": acc(small, data.val), "epochs": EPOCHS + FINETUNE,
                     "seconds": round(t_dense + time.perf_counter() - t1, 1)})
    return rows


def run_scratch(data, seed):
    rows = []
    for size, widths in SIZES.items():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        model = fit(mlp(widths), data, EPOCHS + FINETUNE, seed)
        rows.append({"method": "scratch", "seed": seed, "params": size, "widths": list(widths),
                     "test": acc(model, data.test), "val": acc(model, data.val),
                     "epochs": EPOCHS + FINETUNE, "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def run_archdisc(data, seed, overrides: dict, tag: str):
    from archdisc import Config, run_discover
    rows, base = [], workdir()
    for size in SIZES:
        cfg = Config(**{**ARCHDISC, **overrides, "seed": seed, "target_params": size})
        t0 = time.perf_counter()
        r = run_discover(cfg, base / f"{tag}_{seed}_{size}", force=True, progress=False)
        rows.append({"method": tag, "seed": seed, "params": r["params"]["compact"],
                     "target": size, "widths": [r["units"][n]["alive"] for n in ("fc1", "fc2")],
                     "test_before_finetune": r["test"]["compact_extracted"],
                     "test": r["test"]["compact"], "val": r["val"]["compact"],
                     "epochs": r["epochs_total"], "lam_final": r["lam_final"],
                     "seconds": round(time.perf_counter() - t0, 1),
                     "config": {k: v for k, v in cfg.to_dict().items()
                                if k in {**ARCHDISC, **overrides} or k == "target_params"}})
    return rows


def files(dataset, out=None):
    """(parts folder, results name): ``mlp_parts``/``mlp`` for Fashion-MNIST, else with the
    dataset in the names (``mlp_mnist_parts``/``mlp_mnist``), so results never mix."""
    name = "mlp" if dataset == "fashion-mnist" else f"mlp_{dataset}"
    return Path(out or RESULTS) / f"{name}_parts", name


def merge(started, dataset="fashion-mnist", out=None):
    parts, name = files(dataset, out)
    found = read_parts(parts)
    rows = [r for part in found for r in part["rows"]]
    commands = [part["command"] for part in found]
    table = {}
    for r in rows:
        if r["method"] == "dense":
            continue
        key = (r["method"], r.get("target", r["params"]))
        table.setdefault(key, []).append(r)
    summary = []
    for (method, size), rs in sorted(table.items()):
        summary.append({"method": method, "size": size,
                        "params": mean_std([r["params"] for r in rs]),
                        "test": mean_std([r["test"] for r in rs]),
                        "test_before_finetune": mean_std([r["test_before_finetune"] for r in rs])
                        if "test_before_finetune" in rs[0] else None,
                        "seeds": [r["seed"] for r in rs],
                        "widths": [r["widths"] for r in rs]})
    seeds = sorted({r["seed"] for r in rows})
    path = write_results(name, {"summary": summary, "runs": rows, "part_commands": commands},
                         seeds=seeds, started=started, out_dir=out,
                         notes=f"{LABELS[dataset]} 55k/5k/10k, MLP 784-200-80-10; equal compact "
                               "params (archdisc: <= target) and 13 total epochs per method; "
                               "1 CPU thread per process, 2 processes at a time on a shared "
                               "2-core machine (wall times are noisy).")
    plot(summary, path.with_suffix(".png"), LABELS[dataset])
    return path, summary


def plot(summary, path, label):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for method in sorted({s["method"] for s in summary}):
        ss = sorted((s for s in summary if s["method"] == method), key=lambda s: s["size"])
        ax.errorbar([s["params"]["mean"] / 1000 for s in ss], [s["test"]["mean"] for s in ss],
                    yerr=[s["test"]["std"] for s in ss], marker="o", capsize=3, label=method)
    ax.set_xlabel("compact parameters (thousands)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{label} MLP, 13 epochs per method")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["archdisc", "prune", "scratch"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--archdisc", default="{}", help="JSON config overrides for archdisc")
    p.add_argument("--tag", default="archdisc", help="method name of the archdisc rows")
    p.add_argument("--data", choices=list(LABELS), default="fashion-mnist")
    p.add_argument("--data-root", help="dataset folder (MNIST: ROOT/MNIST/raw/)")
    p.add_argument("--out", help=f"folder of the part files and results (default {RESULTS})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true")
    args = p.parse_args()
    set_threads(args.threads)
    started = time.perf_counter()
    if args.merge:
        path, summary = merge(started, args.data, args.out)
        for s in summary:
            print(f"{s['method']:<16} {s['size']:>7} params {s['params']['mean']:>9.0f} "
                  f"test {s['test']['mean']:.2f} ± {s['test']['std']:.2f} (n={s['test']['n']})")
        print(path)
        return
    from archdisc.data import load_data
    parts, _ = files(args.data, args.out)
    parts.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        data = load_data(args.data, root=args.data_root, seed=seed)
        for method in args.methods:
            t0 = time.perf_counter()
            if method == "prune":
                rows = run_prune(data, seed)
            elif method in ("prune_ftcosine", "torch_pruning"):  # archdisc_r2's cosine lr
                pruner = tp_prune if method == "torch_pruning" else prune
                rows = [r for r in run_prune(data, seed, "cosine", method, pruner)
                        if r["method"] != "dense"]
            elif method == "scratch":
                rows = run_scratch(data, seed)
            else:
                data_opts = {"data": args.data, **({"data_root": args.data_root}
                                                   if args.data_root else {})}
                rows = run_archdisc(data, seed, {**data_opts, **json.loads(args.archdisc)},
                                    args.tag)
            name = args.tag if method == "archdisc" else method
            part = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                    "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv])}
            atomic_write_text(parts / f"{name}_s{seed}.json", json.dumps(part, indent=2) + "\n")
            for r in rows:
                print(json.dumps({k: v for k, v in r.items() if k != "config"}), flush=True)


if __name__ == "__main__":
    main()
