"""The run folder: checkpoints, metrics.jsonl, the report, and whether ``out`` may be used.

Everything is written atomically (a kill never leaves half a file) and nothing is pickled:
weights and optimizer state are safetensors, the rest JSON, JSON lines or TOML::

    config.toml              the fully resolved Config (re-runnable: --config out/config.toml)
    metrics.jsonl            one JSON line per epoch
    checkpoint.safetensors   model + optimizer state + RNG state, rewritten every epoch
    supernet.safetensors/.json   trained supernet: weights + its ArchGraph
    compact.safetensors/.json    discovered model: weights + its (smaller) ArchGraph
    report.json, report.md   test metrics, sizes, widths, surviving edges, wall time
    checksums.json           sha256 of the model files (export refuses changed ones)
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from archdisc.errors import ConfigError, RunError
from archdisc.extract import format_report
from archdisc.graph.archgraph import ArchGraph
from archdisc.io import (atomic_write_json, atomic_write_text, load_tensors, read_toml,
                         remove_stale_temps, save_tensors)
from archdisc.optim import optimizer_state_from_tensors, optimizer_state_to_tensors
from archdisc.recipe.config import Config

__all__ = ["CHECKPOINT", "ARTEFACTS", "prepare_run", "save_checkpoint", "load_checkpoint",
           "write_metrics", "append_metrics", "write_report"]

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"  # the best in-budget epoch's supernet (see discover.search)
ARTEFACTS = ("config.toml", "metrics.jsonl", CHECKPOINT, BEST, "supernet.safetensors",
             "supernet.json", "compact.safetensors", "compact.json", "report.json",
             "report.md", "checksums.json")


def save_checkpoint(path, net, opt, meta: dict):
    """Atomically write weights, buffers, optimizer and RNG state (safetensors, no pickle)."""
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    opt_tensors, opt_meta = optimizer_state_to_tensors(opt)
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_tensors(path, tensors, {**meta, "optim": opt_meta, "format": "archdisc-checkpoint"})


def load_checkpoint(path, net, opt) -> dict:
    """Restore what :func:`save_checkpoint` wrote into ``net`` and ``opt``; returns its meta."""
    try:
        tensors, meta = load_tensors(path)
    except Exception as e:  # noqa: BLE001 - safetensors / JSON errors of a damaged file
        raise RunError(f"{path} cannot be read ({e}); it is damaged - start the run over "
                       f"with --force") from None
    if not meta or meta.get("format") != "archdisc-checkpoint":
        raise RunError(f"{path} is not an archdisc checkpoint")
    device = next(net.parameters()).device
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_state_from_tensors(
        opt, {k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
        meta["optim"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return meta


def prepare_run(out, config: Config, resume=False, force=False) -> Path | None:
    """Decide how to use the run folder ``out``; returns the checkpoint to resume from,
    or None for a fresh start. Raises RunError when ``out`` holds something else."""
    out = Path(out)
    cfg_file, ckpt = out / "config.toml", out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {str(out)!r} is a file; give a folder")
    if resume and not force and not cfg_file.exists():
        raise RunError(f"nothing to resume: {out} holds no archdisc run (no config.toml); "
                       f"start it without --resume")
    if force or not out.exists():
        return None
    if cfg_file.exists():
        try:
            old = Config.from_dict(read_toml(cfg_file))
        except ConfigError:
            old = None
        if old is None or old.hash() != config.hash():
            diff = [] if old is None else [k for k, v in config.to_dict().items()
                                            if old.to_dict()[k] != v]
            what = f" (differs in: {', '.join(diff)})" if diff else ""
            raise RunError(f"{out} holds another run{what}; choose another --out, or pass "
                           f"--force to overwrite it")
        if not resume:
            raise RunError(f"{out} already holds this run; pass --resume to continue it, or "
                           f"--force to start it over")
        return ckpt if ckpt.exists() else None
    if any(out.iterdir()):
        raise RunError(f"{out} exists and is not an archdisc run; choose another --out, or "
                       f"pass --force to write into it")
    return None


# render_run's files: NAME.{gv,svg,png,pdf}
DRAWN = ("compact", "supernet", "growth", "selection")


def clear(out: Path, fresh: bool):
    """Remove temporary files a killed run left in ``out`` (and, on a fresh start, the
    artefacts, drawings and exports of an earlier run), then write nothing: the caller
    writes config.toml."""
    remove_stale_temps(out)
    remove_stale_temps(out / "export")
    if fresh:
        for name in ARTEFACTS:
            (out / name).unlink(missing_ok=True)
        for name in DRAWN:
            for suffix in (".gv", ".svg", ".png", ".pdf"):
                (out / (name + suffix)).unlink(missing_ok=True)
        shutil.rmtree(out / "export", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def write_metrics(out: Path, records: list[dict]):
    """metrics.jsonl mirrors the checkpoint's records (a kill may have left one line more)."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in records))


def append_metrics(out: Path, record: dict):
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


CHECKED = ("supernet.safetensors", "supernet.json", "compact.safetensors", "compact.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(out: Path):
    """checksums.json: the sha256 of each model file, so that a later change is noticed."""
    atomic_write_json(out / "checksums.json", {n: sha256(out / n) for n in CHECKED})


def verify_checksums(out: Path, names=CHECKED):
    """Raise RunError when a model file of the run differs from what the run wrote."""
    path = out / "checksums.json"
    if not path.exists():
        return
    try:
        sums = json.loads(path.read_text())
    except ValueError:
        raise RunError(f"{path} is damaged; re-run the discover command") from None
    for n in names:
        if n in sums and (not (out / n).exists() or sha256(out / n) != sums[n]):
            raise RunError(f"{out / n} changed after the run wrote it (its sha256 differs "
                           f"from checksums.json); re-run `archdisc discover --out {out} "
                           f"--force`, or restore the file")


def write_report(out: Path, report: dict):
    """report.json and report.md (with the headline) of a finished run."""
    report["headline"] = headline(report)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report, format_report))


def add_export_latency(out: Path, written: dict) -> dict:
    """Time the exported TorchScript / ONNX files of ``written`` ({format: path}) at the
    report's batch sizes and add them to report.json / report.md (when the run has a
    report); returns {format: [ms per batch size]}."""
    from archdisc.deploy.latency import BATCHES, file_ms
    graph = ArchGraph.from_json(out / "compact.json")
    timed = {f: [round(file_ms(f, p, graph, b), 3) for b in BATCHES]
             for f, p in written.items() if f in ("torchscript", "onnx")}
    path = out / "report.json"
    if timed and path.exists():
        report = json.loads(path.read_text())
        if report.get("latency"):
            report["latency"]["export"] = timed
            write_report(out, report)
    return timed


def _start_vs_compact(report: dict) -> list[str]:
    """The table of start against compact: size, measured latency, test metric."""
    lat = report.get("latency")
    if not lat:
        return []
    unit = "%" if report["metric"] == "accuracy" else " dB"
    rows = [(m, report[m]["supernet"], report[m]["compact"]) for m in ("params", "macs")]
    for fmt, times in [("eager", lat["eager"])] + [
            ({"onnx": "onnxruntime"}.get(f, f), {"compact": t})
            for f, t in lat.get("export", {}).items()]:
        start = times.get("start")
        for i, b in enumerate(lat["batches"]):
            rows.append((f"{fmt} ms, batch {b}", start[i] if start else None,
                         times["compact"][i]))
    out = ["## Start vs compact", "", f"Latency: median on CPU, {lat['threads']} thread(s); "
           f"the start's is its architecture's, the supernet's. TorchScript and onnxruntime "
           f"rows come from `archdisc export`.", "", "| | start | compact | start / compact |",
           "|---|---|---|---|"]
    for name, a, b in rows:
        ratio = f"{a / b:.2f}x" if a and b else ""
        fa, fb = (("" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3g}")
                  for v in (a, b))
        out.append(f"| {name} | {fa} | {fb} | {ratio} |")
    start, ft = report["stages"][1].get("test"), report.get("finetune") or {}
    if start is not None or ft.get("epochs"):
        out.append(f"| test {report['metric']} | "
                   f"{'' if start is None else f'{start:.2f}{unit}'} | "
                   f"{ft.get('test_before', report['test']['compact']):.2f}{unit} before "
                   f"fine-tune, {report['test']['compact']:.2f}{unit} after | |")
    return out + [""]


SUMMARISE = 6  # more searchable layers than this: the progress line summarises them


def epoch_line(record: dict, epochs: int, metric: str) -> str:
    """The progress line of one epoch's metrics record (a deep model's alive units as their
    total and the layers with the fewest and the most)."""
    alive = record["alive"]
    if len(alive) > SUMMARISE:
        few, most = min(alive, key=alive.get), max(alive, key=alive.get)
        units = (f"{sum(alive.values()):,} units in {len(alive)} layers (fewest "
                 f"{few}={alive[few]}, most {most}={alive[most]})")
    else:
        units = " ".join(f"{k}={v}" for k, v in alive.items())
    lam = f"  lam {record['lam']:.3g}" if record["lam"] is not None else ""
    return (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  val "
            f"{metric} {record[f'val_{metric}']:.2f}  alive {units}{lam}  "
            f"{record['seconds']:.1f} s")


def headline(report: dict) -> str:
    test, metric = report["test"], report["metric"]
    unit = "%" if metric == "accuracy" else " dB"
    kept, total = report["params"]["compact"], report["params"]["supernet"]
    c = report["config"]
    tuned = ", selected on validation" if report.get("select", {}).get("path") else ""
    if c["finetune"]:
        tuned += f", fine-tuned {c['finetune']} epochs"
    return (f"compact model{tuned}: test {metric} {test['compact']:.2f}{unit} (supernet "
            f"{test['supernet']:.2f}{unit}); parameters kept: {kept:,} of {total:,} "
            f"({100 * kept / max(1, total):.1f}%)")


def report_markdown(report: dict, format_report) -> str:
    c = report["config"]
    lines = [f"# archdisc discover: {c['space']} on {c['data']}", "",
             report["headline"], "",
             f"- optimizer {c['optimizer']}, lr {c['lr']:g}, lam {c['lam']:g}, "
             f"group mode {c['group_mode']}, initial density {c['density']:g}, "
             f"{report['epochs']} epochs, seed {c['seed']}",
             f"- data: {report['data']['name']} ({report['data']['task']}), train/val/test "
             f"{'/'.join(str(s) for s in report['data']['sizes'])}",
             f"- wall time {report['wall_seconds']:.1f} s (training "
             f"{report['train_seconds']:.1f} s) on {report['device']}"
             + (f", {report['threads']} thread(s)" if report["device"] == "cpu" else ""), "",
             "```", format_report(report), "```", ""]
    if report.get("warnings"):
        lines[3:3] = [f"**Warning:** {w}" for w in report["warnings"]] + [""]
    if report.get("stages"):
        unit = "%" if report["metric"] == "accuracy" else " dB"
        lines += ["## Stages", "", "| stage | parameters | change | val | test |",
                  "|---|---|---|---|---|"]
        for s in report["stages"]:
            val, test = (f"{s[k]:.2f}{unit}" if s[k] is not None else "" for k in ("val", "test"))
            change = "" if s["removed"] is None else f"{-s['removed']:+,}"
            lines.append(f"| {s['stage']} | {s['params']:,} | {change} | {val} | {test} |")
        lines.append("")
    lines += _start_vs_compact(report)
    path = (report.get("select") or {}).get("path") or []
    if path:
        lines += ["The select stage's path (parameters: val metric ± standard error after a "
                  "short refit; * kept):", ""]
        lines += [f"- {s['params']:,}: {s['metric']:.2f} ± {s['se']:.2f}"
                  f"{' *' if s.get('chosen') else ''}" for s in path] + [""]
    return "\n".join(lines)
