"""Shared helpers of the experiment scripts: threads, one discover run, sparsity counts,
mean ± std, and the results JSON (command, seeds, machine, torch version, wall time).

Imported by the scripts, not run on its own; ``write_results`` writes
experiments/results/<name>.json.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
if str(ROOT) not in sys.path:  # `python experiments/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

from archdisc.io import atomic_write_text  # noqa: E402


def set_threads(n: int) -> int:
    torch.set_num_threads(n)
    return torch.get_num_threads()


def limit_arg(text: str) -> int | None:
    """``--limit`` values: a training-subset size, or 0 for the whole training set."""
    n = int(text)
    return None if n == 0 else n


def data_note(limit) -> str:
    return ("full training set (55k; val 5k, test 10k)" if limit is None
            else f"training subset {limit} (val/test {limit // 5})")


def workdir(path=None) -> Path:
    """Folder for the run folders (checkpoints etc.); a fresh temp dir by default."""
    p = Path(path) if path else Path(tempfile.mkdtemp(prefix="archdisc-exp-"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def discover(config, run_dir):
    """``run_discover`` into ``run_dir`` (overwritten); returns (report, metrics, supernet),
    or None on a torchrun rank other than 0 (rank 0 writes and reports)."""
    from archdisc import load
    from archdisc import run_discover
    report = run_discover(config, run_dir, force=True, progress=False)
    if not report:  # a torchrun rank other than 0
        return None
    metrics = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text()
               .splitlines() if line.strip()]
    return report, metrics, load(Path(run_dir) / "supernet")


@torch.no_grad()
def nonzeros(net) -> dict:
    """Non-zero fractions (%) of a model: conv kernels ((out, in) slices of a conv weight),
    conv weights, linear weights, and all parameters."""
    kern = [0, 0]
    conv, lin, total = [0, 0], [0, 0], [0, 0]
    for name, p in net.named_parameters():
        total[0] += int(p.count_nonzero()); total[1] += p.numel()
        if p.dim() == 4:
            k = p.reshape(p.shape[0], p.shape[1], -1).ne(0).any(-1)
            kern[0] += int(k.sum()); kern[1] += k.numel()
            conv[0] += int(p.count_nonzero()); conv[1] += p.numel()
        elif p.dim() == 2 and not name.startswith("gates."):
            lin[0] += int(p.count_nonzero()); lin[1] += p.numel()
    pct = lambda a: round(100 * a[0] / a[1], 3) if a[1] else None  # noqa: E731
    return {"kernels_pct": pct(kern), "conv_weights_pct": pct(conv),
            "linear_weights_pct": pct(lin), "params_pct": pct(total),
            "params_nonzero": total[0], "params_total": total[1],
            "kernels_nonzero": kern[0], "kernels_total": kern[1],
            "linear_nonzero": lin[0], "linear_total": lin[1]}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def final_sparsity(supernet, compact) -> dict:
    """Non-zero kernels / linear weights / parameters (%) of the final compact model,
    relative to the supernet's totals. Counting on the supernet instead would include
    kernels that only read channels the extraction folds away as constants."""
    sup, fin = nonzeros(supernet), nonzeros(compact)
    return {"kernels_pct": 100 * fin["kernels_nonzero"] / sup["kernels_total"],
            "linear_weights_pct": 100 * fin["linear_nonzero"] / sup["linear_total"],
            "params_nonzero_pct": 100 * fin["params_nonzero"] / sup["params_total"]}


def read_parts(folder, pattern: str = "*.json") -> list[dict]:
    """The part files a benchmark wrote into ``folder`` (one per method / seed), by name."""
    return [json.loads(f.read_text()) for f in sorted(Path(folder).glob(pattern))]


def mean_std(xs) -> dict:
    xs = [float(x) for x in xs]
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs), "values": xs}


def fmt(ms: dict, digits: int = 2) -> str:
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def write_results(name: str, results: dict, *, seeds, started: float, out_dir=None,
                  notes: str = "") -> Path:
    """Write ``<out_dir>/<name>.json``: the results plus how they were made."""
    out_dir = Path(out_dir) if out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "seeds": list(seeds),
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                    else None},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "notes": notes,
        **results,
    }
    path = out_dir / f"{name}.json"
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def fit(model, data, epochs, seed, lr=1e-3, batch=128, offset=0, schedule="constant"):
    """Plain Adam on ``data.train`` (classification), data order from (seed, offset + epoch);
    ``schedule="cosine"`` decays lr per step to 0, as archdisc's ``finetune_schedule``."""
    import math
    from archdisc.recipe.loop import cosine_steps, epoch_order, train_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data.train.tensors
    total = epochs * math.ceil(len(x) / batch)
    on_step = cosine_steps(opt, lr, total) if schedule == "cosine" else None
    for e in range(1, epochs + 1):
        train_epoch(model, opt, x, y, "classification", batch,
                    epoch_order(seed, offset + e, len(x)), on_step=on_step)
    return model


def acc(model, split) -> float:
    from archdisc.data import evaluate
    return evaluate(model, split, "accuracy")
