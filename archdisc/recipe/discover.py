"""The discover recipe: setup -> search -> extract -> select -> fine-tune -> report.

``run_discover(config, out)`` is the whole job, one short function per stage::

    run = setup(config, out)      validate, load the data, build the supernet, prepare ``out``
    search(run)                   Bregman training of the supernet, a checkpoint every epoch
    extract_compact(run)          the surviving architecture as an exact compact model
    select_compact(run)           the width the validation data asks for (archdisc.recipe.select)
    finetune_compact(run)         plain Adam on the compact model
    report(run)                   test / val metrics, sizes, widths -> report.json / .md

Resuming is bit-identical to an uninterrupted run on the CPU: each epoch's data order is a
function of ``(seed, epoch)`` and the checkpoint holds everything else.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from archdisc import dist as distributed
from archdisc.data import evaluate
from archdisc.deploy.formats import save as save_model
from archdisc.deploy.latency import eager_table
from archdisc.dist import Dist
from archdisc.errors import TrainingError
from archdisc.extract import extract, extract_graph, extraction_report
from archdisc.graph.archgraph import ArchGraph, count_macs, count_params
from archdisc.graph.compile import ArchNet, compile_graph
from archdisc.io import atomic_write_text, save_tensors
from archdisc.recipe import diagnose, rundir
from archdisc.recipe.byo import float_inputs, python_data, python_model, token_ids
from archdisc.recipe.config import BREGMAN, BUDGETS, Config
from archdisc.recipe.loop import (augmenter, batches, epoch_order, finetune, recalibrate_bn, set_lr,
                                  train_epoch)
from archdisc.recipe.select import shrink_select
from archdisc.recipe.setup import (SearchState, load_dataset, load_supernet, resolve_device,
                                   start_search)
from archdisc.sparsity.budget import limits_of, measure_of, target_of
from archdisc.sparsity.groups import alive, clear_dead_means

__all__ = ["run_discover", "setup", "search", "extract_compact", "select_compact",
           "finetune_compact", "report", "Run"]


@dataclass
class Run:
    """What the stages of one discover run hand to each other."""
    config: Config
    out: Path
    device: torch.device
    data: object
    graph: ArchGraph
    resume_from: Path | None = None
    progress: bool = True
    dist: Dist = field(default_factory=Dist)
    t_start: float = field(default_factory=time.perf_counter)
    net: ArchNet | None = None
    metrics: list = field(default_factory=list)
    train_seconds: float = 0.0
    compact_graph: ArchGraph | None = None
    compact: ArchNet | None = None
    test: dict = field(default_factory=dict)
    val: dict = field(default_factory=dict)
    select_path: list = field(default_factory=list)
    select_seconds: float = 0.0
    finetune_losses: list = field(default_factory=list)
    finetune_kept: bool = True
    finetune_seconds: float = 0.0
    weights: dict | None = None  # a model's imported weights (the start with start = weights)
    alive0: dict = field(default_factory=dict)  # alive units at the start of the search
    stages: list = field(default_factory=list)  # diagnose.stage rows, in order


def run_discover(config: Config, out, resume=False, force=False, progress=True,
                 on_epoch=None, data=None, model=None) -> dict:
    """Search, extract, select, fine-tune, evaluate and write the run folder ``out``; returns the
    report. An ``out`` holding another run is refused unless ``force``; the same run is
    continued from its last checkpoint with ``resume`` (see :func:`rundir.prepare_run`).
    ``on_epoch(epoch, record, net)`` is called after each epoch's checkpoint is on disk.
    ``data``: a ``torch.utils.data.Dataset`` (split by seed) or a tuple (train, val, test) of
    them instead of ``config.data`` (see :func:`archdisc.recipe.byo.python_data`).
    ``model``: a ``torch.nn.Module`` instance instead of ``config.model``; the search
    starts from its weights unless ``config.start = "sparse"`` (a resume needs it again)."""
    run = setup(config, out, resume, force, progress, data, model)
    try:
        search(run, on_epoch)
        if not run.dist.main:  # under torchrun rank 0 alone finishes the run
            return {}
        extract_compact(run)
        select_compact(run)
        finetune_compact(run)
        return report(run)
    finally:
        run.dist.close()


def _log(run: Run, line: str):
    """One progress line on stderr (a log file tells the story); silent without progress."""
    if run.progress:
        print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- stages
def setup(config: Config, out, resume=False, force=False, progress=True, data=None,
          model=None) -> Run:
    """Validate ``config``, load its data, build the supernet graph, prepare ``out``.
    Everything that can be refused is refused before the folder is touched. Under
    torchrun every rank checks, and rank 0 alone prepares the folder."""
    if data is not None:  # a Dataset: config.toml records its class as the data
        data = python_data(data, config.validate())
        config = dataclasses.replace(config, data=data.name)
    if model is not None:
        config = python_model(model, config)
    config = config.validate()
    out = Path(out)
    resume_from = rundir.prepare_run(out, config, resume=resume, force=force)
    device = resolve_device(config.device)
    data = data if data is not None else load_dataset(config)
    graph, weights = load_supernet(config, data, model)
    if token_ids(data) and not any(graph.nodes[r]["op"] == "embed" for n in graph.input_nodes()
                                   for r in graph.successors(n)):
        data = float_inputs(data)  # int64 features, not token ids
    dist = distributed.start(config.device)
    if dist.world > 1:
        device = dist.device
        dist.barrier()  # every rank has read the folder before rank 0 changes it
    if dist.main:
        rundir.clear(out, fresh=resume_from is None)
        atomic_write_text(out / "config.toml", config.to_toml())
    dist.barrier()
    run = Run(config, out, device, data, graph, resume_from, progress and dist.main, dist,
              weights=weights)
    if config.model is not None and not config.from_weights():
        init = (f"a random init, {config.dense()} dense epochs first" if config.dense()
                else "a sparse random init")
        _log(run, f"the search starts from {init}: {config.model}'s own weights are not "
                  f"used (--start weights starts from them)")
    if "target" in data.meta and "target" not in config.data_options:
        _log(run, f"{config.data}: the label is column {data.meta['target']!r}, the last "
                  f"(--data-option target=COLUMN takes another)")
    return run


def search(run: Run, on_epoch=None):
    """Train the sparse-initialised supernet with the configured optimizer; checkpoint,
    metrics line and progress line after every epoch."""
    config, dist = run.config, run.dist
    s = start_search(run)
    show = run.progress and sys.stderr.isatty()
    bar = tqdm(total=config.epochs * s.steps, initial=s.start * s.steps, disable=not show,
               unit="batch", desc=f"discover {config.space}", file=sys.stderr, leave=False)
    try:
        for epoch in range(s.start + 1, config.epochs + 1):
            t0 = time.perf_counter()
            lr = set_lr(s.opt, config, epoch)
            loss = _search_epoch(run, s, epoch, lr, bar)
            a = alive(s.net)
            if dist.world > 1:
                dist.check_agree(diagnose.fingerprint(s.net, a, s.opt),
                                 "the parameters, alive units and lam")
            if not dist.main:  # rank 0 alone evaluates and writes
                continue
            record = _end_epoch(run, s, epoch, loss, lr, a, t0)
            line = rundir.epoch_line(record, config.epochs, run.data.metric)
            if show:
                bar.write(line)
            else:
                _log(run, line)
            if on_epoch is not None:
                on_epoch(epoch, record, s.net)
    finally:
        bar.close()
    dist.barrier()
    if s.best is not None and s.best[1] != config.epochs:
        s.net.load_state_dict(s.best[2])
        _log(run, f"kept epoch {s.best[1]}'s supernet: the best within the budget (val "
                  f"{run.data.metric} {s.best[0]:.2f})")
    run.net, run.alive0 = s.net, s.alive0
    start = ("weights" if config.from_weights() else
             f"{config.dense()} dense epochs" if config.dense() else "sparse init")
    run.stages = [diagnose.stage(f"search start ({start})", s.params0)]


def _search_epoch(run: Run, s: SearchState, epoch: int, lr: float, bar) -> float:
    """One epoch of the search (the lam controller and the decoupled weight decay after
    each step); its mean loss, or a TrainingError naming what the checkpoint keeps."""
    config, opt, control, steps = run.config, s.opt, s.control, s.steps
    decay = config.weight_decay > 0 and config.optimizer in BREGMAN  # else torch's own

    def on_step(step):
        if decay:
            opt.decay_unregularized_(config.weight_decay)
        if not control.active:
            return
        control.observe()
        g = (epoch - 1) * steps + step + 1  # the next step's number
        if (control.target or config.group_weight == "sqrt_alive") and \
                g % config.control_every == 0:
            control.look(s.net, g)
        control.set(g)

    if control.active and epoch == s.start + 1:  # as the last step before it set it
        control.set(max(1, (epoch - 1) * steps))
    n = len(run.data.train)
    try:
        loss = train_epoch(s.model, opt, s.x, s.y, run.data.task, config.batch_size,
                           epoch_order(config.seed, epoch, n), bar, on_step,
                           augmenter(config, config.seed, epoch, run.device), run.dist,
                           config.loader_workers)
        if control.target and epoch == config.epochs:
            control.finish(s.net)  # the last cut: no step after it updates BatchNorm's stats
            recalibrate_bn(s.net, run.data.train, config.batch_size, run.device)
        if not all(torch.isfinite(p).all() for p in s.net.parameters()):
            raise TrainingError("parameters are not finite")
        if loss > DIVERGED * s.initial:
            raise TrainingError(f"the training loss {loss:.3g} is over {DIVERGED}x "
                                f"the starting loss {s.initial:.3g} (the untrained model's, "
                                f"at least a uniform guess's)")
    except distributed.Stopped:
        raise
    except TrainingError as e:
        kept = (f"{run.out / rundir.CHECKPOINT} keeps epoch {run.metrics[-1]['epoch']}"
                if run.metrics else "no epoch finished, so there is no checkpoint")
        raise TrainingError(f"training diverged in epoch {epoch}: {e}. Stopped; "
                            f"{kept}. Try a smaller lr (now {lr:g}).") from None
    except RuntimeError as e:
        if run.dist.world == 1 or not distributed.peer_lost(e):  # e.g. out of memory
            raise
        raise distributed.lost(e) from None
    return loss


def _end_epoch(run: Run, s: SearchState, epoch, loss, lr, a: dict, t0: float) -> dict:
    """Score the epoch on validation, append its record to metrics.jsonl and write the
    checkpoint; returns the record."""
    net, opt, control = s.net, s.opt, s.control
    clear_dead_means(net)
    val = evaluate(net, run.data.val, run.data.metric, 1024, run.device,
                   run.config.loader_workers)
    run.train_seconds += time.perf_counter() - t0
    record = {"epoch": epoch, "train_loss": loss, f"val_{run.data.metric}": val,
              "density": diagnose.density(net), "alive": a["units"],
              "alive_edges": sum(a["edges"].values()), "lam": diagnose.current_lam(opt),
              "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
    if control.active:
        record["lam"] = control.lam(epoch * s.steps)
        record["lam_layers"] = {g["name"]: g["reg"].lam for g in control.groups}
        graph = extract_graph(net, **control.limits)[0]
        record["params"], record["macs"] = count_params(graph), count_macs(graph)
        record["latency_ms"] = control.last_ms  # under target_latency_ms
        if control.holds(record[control.measure]) and (s.best is None or val >= s.best[0]):
            s.best = (val, epoch, {k: v.clone() for k, v in net.state_dict().items()})
            save_tensors(run.out / rundir.BEST, s.best[2], {"val": val, "epoch": epoch})
    run.metrics.append(record)
    rundir.append_metrics(run.out, record)
    rundir.save_checkpoint(run.out / rundir.CHECKPOINT, net, opt,
                           {"epoch": epoch, "config_hash": run.config.hash(),
                            "metrics": run.metrics, "train_seconds": run.train_seconds,
                            "lam_control": control.state(), "initial_loss": s.initial})
    return record


def extract_compact(run: Run):
    """Save the trained supernet, extract the compact model (verified on validation
    inputs) and score both on the validation and test splits."""
    net = run.net.eval()
    save_model(net, run.out / "supernet")
    sample = next(batches(run.data.val, 256, run.device))[0]
    run.compact_graph, compact = extract(net, verify=True, inputs=sample,
                                         **limits_of(run.config, net))
    run.compact = compact.to(run.device).eval()
    for split, scores in ((run.data.test, run.test), (run.data.val, run.val)):
        scores["supernet"] = _score(run, net, split)
        scores["compact"] = _score(run, run.compact, split)
    run.stages.append(_stage(run, "search (extracted)"))
    widths = " ".join(f"{n}={u['alive']}/{u['supernet']}" for n, u in
                      extraction_report(net.graph, run.compact_graph)["units"].items())
    _log(run, f"extracted (exact, verified): {widths}; val {run.data.metric} "
              f"{run.val['compact']:.2f}")


def select_compact(run: Run):
    """Unless ``select = "none"``: choose the compact model's width on the validation split
    (archdisc.recipe.select: ``shrink`` or ``scale``)."""
    if run.config.select == "none":
        return
    if any(getattr(run.config, n) is not None for n in BUDGETS):
        _log(run, "select: skipped, the target sets the size")
        return
    t0 = time.perf_counter()
    run.compact, run.select_path = shrink_select(
        run.compact, run.data, run.config, run.device, lambda s: _log(run, s), run.net,
        limits_of(run.config, run.net))
    run.compact_graph = run.compact.graph
    run.select_seconds = time.perf_counter() - t0
    for split, scores in ((run.data.test, run.test), (run.data.val, run.val)):
        scores["compact_extracted"] = scores["compact"]
        scores["compact"] = scores["compact_selected"] = _score(run, run.compact, split)
    run.stages.append(_stage(run, f"select ({run.config.select})"))


def finetune_compact(run: Run):
    """``config.finetune`` epochs of Adam on the compact model, kept only if it does not
    make the validation metric worse (a diverging fine-tune never replaces the model)."""
    if run.config.finetune:
        t0 = time.perf_counter()
        before, val_before = copy.deepcopy(run.compact.state_dict()), run.val["compact"]
        steps = math.ceil(len(run.data.train) / run.config.batch_size) * run.config.finetune
        bar = tqdm(total=steps, unit="batch", desc="fine-tune", file=sys.stderr, leave=False,
                   disable=not (run.progress and sys.stderr.isatty()))
        teacher = run.net  # distillation's: the searched supernet, or the starting model
        if run.config.distill > 0 and run.config.from_weights():
            teacher = compile_graph(run.graph, run.weights).to(run.device)
        try:
            run.finetune_losses = finetune(run.compact, run.data, run.config, run.device, bar,
                                           teacher)
            val_after = _score(run, run.compact.eval(), run.data.val)
        except TrainingError:
            val_after = -math.inf
        finally:
            bar.close()
        run.finetune_seconds = time.perf_counter() - t0
        run.finetune_kept = val_after >= val_before
        if not run.finetune_kept:
            run.compact.load_state_dict(before)
            _log(run, f"fine-tune made val {run.data.metric} worse ({val_before:.2f} -> "
                      f"{val_after:.2f}); kept the model from before it. Try a smaller "
                      f"finetune_lr (now {run.config.finetune_lr:g})")
        run.compact.eval()
        for split, scores in ((run.data.test, run.test), (run.data.val, run.val)):
            scores.setdefault("compact_extracted", scores["compact"])
            scores["compact"] = _score(run, run.compact, split)
        _log(run, f"fine-tuned {run.config.finetune} epochs: val {run.data.metric} "
                  f"{run.val['compact']:.2f}  {run.finetune_seconds:.1f} s")
        run.stages.append(_stage(run, f"fine-tune ({run.config.finetune} epochs)"))
    save_model(run.compact, run.out / "compact")


def report(run: Run) -> dict:
    """Write report.json / report.md and return the report."""
    config, data, metrics, test = run.config, run.data, run.metrics, run.test
    rep = extraction_report(run.net.graph, run.compact_graph)
    rep.update({
        "metric": data.metric,
        "test": test,
        "val": run.val,
        "val_last": metrics[-1][f"val_{data.metric}"] if metrics else None,
        "data": {"name": data.name, "task": data.task, "in_shape": list(data.in_shape),
                 "sizes": [len(data.train), len(data.val), len(data.test)],
                 "meta": data.meta},
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "epochs": len(metrics),
        "finetune": {"epochs": config.finetune, "lr": config.finetune_lr,
                     "schedule": config.finetune_schedule,
                     "train_loss": run.finetune_losses,
                     "seconds": round(run.finetune_seconds, 2),
                     "test_before": test.get("compact_selected",
                                             test.get("compact_extracted", test["compact"])),
                     "test_after": test["compact"], "kept": run.finetune_kept},
        "select": {"mode": config.select, "seconds": round(run.select_seconds, 2),
                   "path": run.select_path},
        "epochs_total": len(metrics) + config.finetune,
        **{f"target_{m}": target_of(config, rep[m]["supernet"]) if m == measure_of(config)
           else None for m in ("params", "macs")},
        "target_latency_ms": config.target_latency_ms,
        "latency_ms_searched": metrics[-1].get("latency_ms") if metrics else None,
        "lam_final": metrics[-1]["lam"] if metrics else None,
        "train_seconds": round(run.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - run.t_start, 2),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "world_size": run.dist.world,
    })
    if run.weights is not None and config.from_weights():  # the user's model, as given
        start = compile_graph(run.graph, run.weights).to(run.device)
        run.stages[0].update(val=_score(run, start, data.val), test=_score(run, start, data.test))
    rep["latency"] = eager_table({"start": run.net, "compact": run.compact})
    rep["stages"] = diagnose.with_removed(
        [diagnose.stage("supernet (all units)", rep["params"]["supernet"]), *run.stages])
    rep["warnings"] = diagnose.warnings(
        run.alive0, [m["alive"] for m in metrics],
        {n: u["supernet"] for n, u in rep["units"].items()}, config, data.metric,
        run.val["supernet"], data.out_dim) + diagnose.over_budget(rep)
    for line in rep["warnings"]:
        _log(run, f"warning: {line}")
    rundir.write_report(run.out, rep)
    rundir.write_checksums(run.out)
    return rep


DIVERGED = 10.0  # an epoch's training loss over this many times the starting loss


def _stage(run: Run, name: str) -> dict:
    return diagnose.stage(name, count_params(run.compact_graph), run.val["compact"],
                          run.test["compact"])


def _score(run: Run, model, split) -> float:
    return evaluate(model, split, run.data.metric, 1024, run.device,
                    run.config.loader_workers)
