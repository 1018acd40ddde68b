"""Search-epoch time of `archdisc discover`: against a plain torch Adam loop, or against
another checkout.

Without ``--ref`` (issue 18's goal: a search epoch <= 1.15x a plain torch loop): in this
process, for each job, ``discover``'s search (setup + search, one thread, no select /
extract / fine-tune) is run for ``--epochs`` epochs, and the same sparse-initialised
supernet is trained on the same batches (epoch_order) by a plain torch loop with
``torch.optim.Adam`` (default, i.e. the single-tensor path on CPU, and fused=True); the
two alternate ``--repeats`` times. Reported per epoch (medians): the search epoch as
metrics.jsonl records it ("seconds": training + validation + alive count), its
train_epoch part alone (timed by wrapping archdisc.recipe.discover.train_epoch), the plain loop,
and the ratios. The first epoch of each run is dropped (warm-up) unless --keep-first.

With ``--ref`` (for instance a `git worktree` of an older commit): runs the same short
discover job (no fine-tune) under this tree and under ``--ref``, alternating the two
``--repeats`` times so that drift in machine speed hits both alike, and reports the median
seconds per search epoch (from each run's metrics.jsonl) and the ratio. One thread.

    python experiments/bench_epoch.py                       # vs a plain Adam loop
    python experiments/bench_epoch.py --fused               # AdaBreg(fused=True) vs Adam
    git worktree add /tmp/ref 0f79d41
    python experiments/bench_epoch.py --ref /tmp/ref

Prints the tables (RESULTS.md sections 1.1 and 9); writes no results file (the discover
runs go to a temp folder).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
JOBS = {
    "mlp (demo config)": ["--config", str(HERE / "examples/fmnist_mlp_sparse.toml"),
                          "--epochs", "3", "--finetune", "0"],
    "convnet": ["--space", "convnet", "--data", "fashion-mnist", "--limit", "10000",
                "--epochs", "2", "--finetune", "0", "--lam", "0.1", "--lr", "1e-3"],
}


def epoch_seconds(tree: Path, args: list[str]) -> list[float]:
    if tree == HERE:  # only the search epochs are timed; skip what the ref has not
        args = [*args, "--select", "none"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, "-m", "archdisc.cli", "discover", *args, "--out",
                        tmp + "/r", "--threads", "1", "--force", "--quiet"], check=True, env=env,
                       cwd=tree, stdout=subprocess.DEVNULL)
        lines = Path(tmp, "r", "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["seconds"] for line in lines]


# the same jobs as config overrides, for the in-process comparison with a plain Adam loop
CONFIGS = {
    "mlp (demo config)": (HERE / "examples/fmnist_mlp_sparse.toml", {}),
    "convnet": (None, {"space": "convnet", "data": "fashion-mnist", "limit": 10000,
                       "lam": 0.1, "lr": 1e-3}),
}


def _plain_net(run):
    import torch

    from archdisc.graph.compile import ArchNet
    from archdisc.sparsity.groups import sparse_init
    config = run.config
    torch.manual_seed(config.seed)
    return sparse_init(ArchNet(run.graph), density=config.density, mode=config.group_mode,
                       seed=config.seed)


def _plain_chunk(net, opt, x, y, task, batch_size, order):
    """The plain torch loop: zero_grad, forward, loss, backward, step."""
    import torch

    from archdisc.recipe.loop import loss_fn
    net.train()
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[idx]), y[idx], task)
        loss.backward()
        opt.step()
        total += loss.detach().double() * len(idx)
    return float(total)


def _search_vs_adam(path, overrides, epochs, chunk, profile=None, fused=None):
    """Run discover's search (one thread) with archdisc.recipe.discover.train_epoch wrapped: each
    epoch is cut into chunks of ``chunk`` batches, and after each chunk of the real
    train_epoch (with discover's own optimizer and on_step hook, step numbers offset so the
    lam schedule is unchanged) the same batches are trained by plain torch loops with
    Adam (default) and Adam(fused=True) on copies of the same sparse-initialised supernet.
    Interleaving chunk by chunk lets drift in machine speed hit all three alike.
    ``fused``: the Bregman optimizer's ``fused`` setting (True: its torch.compile'd step;
    the compilation falls in the first epoch).
    Returns per epoch: {"search": metrics seconds minus the plain loops' time,
    "train": discover's train_epoch, "adam": ..., "adam_fused": ...}."""
    import torch

    import archdisc.recipe.discover as discover
    from archdisc.recipe.config import load_config
    fused_setting = {} if fused is None else {"fused": fused}
    config = load_config(path, {**overrides, "epochs": epochs, "finetune": 0,
                                "select": "none", "device": "cpu", **fused_setting})
    inner, epochs_t, plain = discover.train_epoch, [], {}

    signature = inspect.signature(inner)

    def wrapped(*a, **k):  # whatever discover passes, by name
        bound = signature.bind(*a, **k)
        bound.apply_defaults()
        args = dict(bound.arguments)
        x, y, task, batch_size, order, on_step = (
            args[n] for n in ("x", "y", "task", "batch_size", "order", "on_step"))
        if y is None:
            raise SystemExit("bench_epoch: the data is streamed (y is None); the plain loop "
                             "needs in-memory tensors")
        if not plain:
            for key, fused in (("adam", None), ("adam_fused", True)):
                net = _plain_net(run)
                plain[key] = (net, torch.optim.Adam(net.parameters(), lr=config.lr,
                                                    fused=fused))
        t = {"train": 0.0, "adam": 0.0, "adam_fused": 0.0}
        total = 0.0
        for s0 in range(0, (len(order) + batch_size - 1) // batch_size, chunk):
            part = order[s0 * batch_size:(s0 + chunk) * batch_size]
            hook = None if on_step is None else (lambda s, s0=s0: on_step(s + s0))
            t0 = time.perf_counter()
            if profile is not None:
                profile.enable()
            total += inner(**{**args, "order": part, "bar": None, "on_step": hook}) * len(part)
            if profile is not None:
                profile.disable()
            t["train"] += time.perf_counter() - t0
            for key, (net, popt) in plain.items():
                t0 = time.perf_counter()
                _plain_chunk(net, popt, x, y, task, batch_size, part)
                t[key] += time.perf_counter() - t0
        epochs_t.append(t)
        return total / len(order)

    with tempfile.TemporaryDirectory() as tmp:
        run = discover.setup(config, Path(tmp) / "r", force=True, progress=False)
        discover.train_epoch = wrapped
        try:
            discover.search(run)
        finally:
            discover.train_epoch = inner
    for t, m in zip(epochs_t, run.metrics):
        t["search"] = m["seconds"] - t["adam"] - t["adam_fused"]
    return epochs_t


def vs_adam(args):
    import torch
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.2f} at "
          f"start; {args.epochs} epochs x {args.repeats} repeats, chunks of {args.chunk} "
          f"batches interleaved; Bregman optimizer fused={True if args.fused else None}; "
          f"medians per epoch"
          f"{'' if args.keep_first else ' (first epoch of each run dropped)'}\n")
    print("| job | search epoch s (metrics) | its train_epoch s | plain Adam s | plain Adam "
          "(fused) s | search / Adam | train_epoch / Adam | train_epoch / Adam (fused) |")
    print("|---|---|---|---|---|---|---|---|")
    skip = 0 if args.keep_first else 1
    for name, (path, overrides) in CONFIGS.items():
        rows = []
        for _ in range(args.repeats):
            rows += _search_vs_adam(path, overrides, args.epochs, args.chunk,
                                    fused=True if args.fused else None)[skip:]
        m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        ratio = {k: statistics.median(r["train"] / r[k] for r in rows)
                 for k in ("adam", "adam_fused")}
        print(f"| {name} | {m['search']:.2f} | {m['train']:.2f} | {m['adam']:.2f} | "
              f"{m['adam_fused']:.2f} | {m['search'] / m['adam']:.2f}x | "
              f"{ratio['adam']:.2f}x | {ratio['adam_fused']:.2f}x |", flush=True)
        if args.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            _search_vs_adam(path, overrides, 1, args.chunk, profile=prof,
                            fused=True if args.fused else None)
            print(f"\nprofile of one train_epoch of {name} (tottime, top 20):")
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="the other checkout (else: vs a plain Adam loop)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (vs Adam)")
    ap.add_argument("--keep-first", action="store_true", help="keep the first epoch of a run")
    ap.add_argument("--chunk", type=int, default=20, help="batches per interleaved chunk")
    ap.add_argument("--fused", action="store_true",
                    help="the Bregman optimizer with fused=True (torch.compile'd step; the "
                         "compile falls in the dropped first epoch)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile one train_epoch of each job (vs Adam)")
    args = ap.parse_args()
    if args.ref is None:
        return vs_adam(args)
    for name, job in JOBS.items():
        times = {"this": [], "ref": []}
        for _ in range(args.repeats):
            times["ref"] += epoch_seconds(args.ref, job)
            times["this"] += epoch_seconds(HERE, job)
        this, ref = (statistics.median(times[k]) for k in ("this", "ref"))
        print(f"{name}: search epoch {this:.2f} s here, {ref:.2f} s in {args.ref} "
              f"(ratio {this / ref:.2f}; medians of {len(times['this'])} epochs)")


if __name__ == "__main__":
    main()
