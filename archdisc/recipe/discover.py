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

import dataclasses
import inspect
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from archdisc.recipe import rundir
from archdisc.sparsity.budget import LamControl, compact_params, target_of
from archdisc.graph.compile import ArchNet
from archdisc.recipe.config import BREGMAN, Config
from archdisc.dist import Dist
from archdisc.errors import ConfigError, RunError, TrainingError
from archdisc.graph.archgraph import ArchGraph, GraphError
from archdisc.io import atomic_write_text
from archdisc.recipe.loop import (augmenter, batches, epoch_order, finetune, loss_fn, set_lr, tensors,
                   train_epoch)

__all__ = ["run_discover", "setup", "search", "extract_compact", "select_compact",
           "finetune_compact", "report", "Run", "load_dataset", "build_supernet",
           "make_optimizer"]


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


def run_discover(config: Config, out, resume=False, force=False, progress=True,
                 on_epoch=None, data=None) -> dict:
    """Search, extract, select, fine-tune, evaluate and write the run folder ``out``; returns the
    report. An ``out`` holding another run is refused unless ``force``; the same run is
    continued from its last checkpoint with ``resume`` (see :func:`rundir.prepare_run`).
    ``on_epoch(epoch, record, net)`` is called after each epoch's checkpoint is on disk.
    ``data``: a ``torch.utils.data.Dataset`` (split by seed) or a tuple (train, val, test) of
    them instead of ``config.data`` (read into memory; see :func:`archdisc.recipe.byo.python_data`)."""
    run = setup(config, out, resume, force, progress, data)
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
def setup(config: Config, out, resume=False, force=False, progress=True, data=None) -> Run:
    """Validate ``config``, load its data, build the supernet graph, prepare ``out``.
    Everything that can be refused is refused before the folder is touched. Under
    torchrun every rank checks, and rank 0 alone prepares the folder."""
    from archdisc import dist as distributed
    if data is not None:  # a Dataset: config.toml records its class as the data
        from archdisc.recipe.byo import python_data
        data = python_data(data, config.validate())
        config = dataclasses.replace(config, data=data.name)
    config = config.validate()
    out = Path(out)
    resume_from = rundir.prepare_run(out, config, resume=resume, force=force)
    device = resolve_device(config.device)
    data = data if data is not None else load_dataset(config)
    graph = build_supernet(config, data)
    dist = distributed.start(config.device)
    if dist.world > 1:
        device = dist.device
        dist.barrier()  # every rank has read the folder before rank 0 changes it
    if dist.main:
        rundir.clear(out, fresh=resume_from is None)
        atomic_write_text(out / "config.toml", config.to_toml())
    dist.barrier()
    return Run(config, out, device, data, graph, resume_from, progress and dist.main, dist)


def search(run: Run, on_epoch=None):
    """Train the sparse-initialised supernet with the configured optimizer; checkpoint,
    metrics line and progress line after every epoch."""
    from tqdm import tqdm
    from archdisc import dist as distributed
    from archdisc.data.core import evaluate
    from archdisc.sparsity.groups import alive, sparse_init
    config, out, data, device, dist = run.config, run.out, run.data, run.device, run.dist
    torch.manual_seed(config.seed)
    net = sparse_init(ArchNet(run.graph), density=config.density, mode=config.group_mode,
                      seed=config.seed).to(device)
    opt = make_optimizer(net, config)
    model = dist.wrap(net)  # net itself, or net in DDP under torchrun
    x, y = tensors(data.train, device)  # y is None: streamed through a DataLoader
    n, workers = len(data.train), config.loader_workers
    steps = math.ceil(n / config.batch_size)
    control = LamControl(net, opt, config, steps)
    decay = config.weight_decay > 0 and config.optimizer in BREGMAN  # else torch's own
    metrics, start, seconds = [], 0, 0.0
    initial = _initial_loss(net, data.train, data.task, device)
    if run.resume_from is not None:
        meta = rundir.load_checkpoint(run.resume_from, net, opt)
        if meta.get("config_hash") != config.hash():
            raise RunError(f"{run.resume_from} belongs to another config; pass --force to "
                           f"restart")
        metrics, start, seconds = meta["metrics"], meta["epoch"], meta["train_seconds"]
        control.load_state(meta.get("lam_control"))
        initial = meta.get("initial_loss", initial)
    if dist.main:
        rundir.write_metrics(out, metrics)

    show = run.progress and sys.stderr.isatty()
    bar = tqdm(total=config.epochs * steps, initial=start * steps, disable=not show,
               unit="batch", desc=f"discover {config.space}", file=sys.stderr, leave=False)
    try:
        for epoch in range(start + 1, config.epochs + 1):
            t0 = time.perf_counter()
            lr = set_lr(opt, config, epoch)

            def on_step(step, epoch=epoch):
                if decay:
                    opt.decay_unregularized_(config.weight_decay)
                if not control.active:
                    return
                g = (epoch - 1) * steps + step + 1  # the next step's number
                if control.target or config.group_weight == "sqrt_alive":
                    if g % config.control_every == 0:
                        control.look(net)
                control.set(g)

            if control.active and epoch == start + 1:
                control.set((epoch - 1) * steps + 1)
            try:
                loss = train_epoch(model, opt, x, y, data.task, config.batch_size,
                                   epoch_order(config.seed, epoch, n), bar, on_step,
                                   augmenter(config, config.seed, epoch, device), dist,
                                   workers)
                if control.target and epoch == config.epochs:
                    control.settle(net)
                if not all(torch.isfinite(p).all() for p in net.parameters()):
                    raise TrainingError("parameters are not finite")
                if loss > DIVERGED * initial:
                    raise TrainingError(f"the training loss {loss:.3g} is over {DIVERGED}x "
                                        f"the untrained model's {initial:.3g}")
            except distributed.Stopped:
                raise
            except TrainingError as e:
                kept = (f"{out / rundir.CHECKPOINT} keeps epoch {metrics[-1]['epoch']}"
                        if metrics else "no epoch finished, so there is no checkpoint")
                raise TrainingError(f"training diverged in epoch {epoch}: {e}. Stopped; "
                                    f"{kept}. Try a smaller lr (now {lr:g}).") from None
            except RuntimeError as e:
                if dist.world == 1 or not distributed.peer_lost(e):  # e.g. out of memory
                    raise
                raise distributed.lost(e) from None
            a = alive(net)
            if dist.world > 1:
                dist.check_agree(_fingerprint(net, a, opt),
                                 "the parameters, alive units and lam")
            if not dist.main:  # rank 0 alone evaluates and writes
                continue
            val = evaluate(net, data.val, data.metric, 1024, device, workers)
            seconds += time.perf_counter() - t0
            record = {"epoch": epoch, "train_loss": loss, f"val_{data.metric}": val,
                      "density": density(net), "alive": a["units"],
                      "alive_edges": sum(a["edges"].values()), "lam": current_lam(opt),
                      "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
            if control.active:
                record["lam"] = control.lam(epoch * steps)
                record["lam_layers"] = {g["name"]: g["reg"].lam for g in control.groups}
                record["params"] = compact_params(net)[0]
            metrics.append(record)
            rundir.append_metrics(out, record)
            rundir.save_checkpoint(out / rundir.CHECKPOINT, net, opt,
                                   {"epoch": epoch, "config_hash": config.hash(),
                                    "metrics": metrics, "train_seconds": seconds,
                                    "lam_control": control.state(),
                                    "initial_loss": initial})
            units = " ".join(f"{k}={v}" for k, v in a["units"].items())
            lam = f"  lam {record['lam']:.3g}" if record["lam"] is not None else ""
            line = (f"epoch {epoch}/{config.epochs}  loss {loss:.4f}  val {data.metric} "
                    f"{val:.2f}  alive {units}{lam}  {record['seconds']:.1f} s")
            if show:
                bar.write(line)
            else:
                _log(run, line)
            if on_epoch is not None:
                on_epoch(epoch, record, net)
    finally:
        bar.close()
    dist.barrier()
    run.net, run.metrics, run.train_seconds = net, metrics, seconds


def extract_compact(run: Run):
    """Save the trained supernet, extract the compact model (verified on validation
    inputs) and score both on the validation and test splits."""
    from archdisc.deploy.formats import save as save_model
    from archdisc.extract.core import extract, extraction_report
    net = run.net.eval()
    save_model(net, run.out / "supernet")
    sample = next(batches(run.data.val, 256, run.device))[0]
    run.compact_graph, compact = extract(net, verify=True, inputs=sample)
    run.compact = compact.to(run.device).eval()
    for split, scores in ((run.data.test, run.test), (run.data.val, run.val)):
        scores["supernet"] = _score(run, net, split)
        scores["compact"] = _score(run, run.compact, split)
    widths = " ".join(f"{n}={u['alive']}/{u['supernet']}" for n, u in
                      extraction_report(net.graph, run.compact_graph)["units"].items())
    _log(run, f"extracted (exact, verified): {widths}; val {run.data.metric} "
              f"{run.val['compact']:.2f}")


def select_compact(run: Run):
    """Unless ``select = "none"``: choose the compact model's width on the validation split
    (archdisc.recipe.select: ``shrink`` or ``scale``)."""
    if run.config.select == "none":
        return
    from archdisc.recipe.select import shrink_select
    t0 = time.perf_counter()
    run.compact, run.select_path = shrink_select(run.compact, run.data, run.config,
                                                 run.device, lambda s: _log(run, s), run.net)
    run.compact_graph = run.compact.graph
    run.select_seconds = time.perf_counter() - t0
    for split, scores in ((run.data.test, run.test), (run.data.val, run.val)):
        scores["compact_extracted"] = scores["compact"]
        scores["compact"] = scores["compact_selected"] = _score(run, run.compact, split)


def finetune_compact(run: Run):
    """``config.finetune`` epochs of Adam on the compact model, kept only if it does not
    make the validation metric worse (a diverging fine-tune never replaces the model)."""
    import copy
    from archdisc.deploy.formats import save as save_model
    if run.config.finetune:
        t0 = time.perf_counter()
        before, val_before = copy.deepcopy(run.compact.state_dict()), run.val["compact"]
        from tqdm import tqdm
        steps = math.ceil(len(run.data.train) / run.config.batch_size) * run.config.finetune
        bar = tqdm(total=steps, unit="batch", desc="fine-tune", file=sys.stderr, leave=False,
                   disable=not (run.progress and sys.stderr.isatty()))
        try:
            run.finetune_losses = finetune(run.compact, run.data, run.config, run.device, bar)
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
    save_model(run.compact, run.out / "compact")


def report(run: Run) -> dict:
    """Write report.json / report.md and return the report."""
    from archdisc.extract.core import extraction_report
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
        "target_params": target_of(config, rep["params"]["supernet"]),
        "lam_final": metrics[-1]["lam"] if metrics else None,
        "train_seconds": round(run.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - run.t_start, 2),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "world_size": run.dist.world,
    })
    rundir.write_report(run.out, rep)
    rundir.write_checksums(run.out)
    return rep


# ---------------------------------------------------------------------- parts
DIVERGED = 10.0  # an epoch's training loss over this many times the untrained model's


@torch.no_grad()
def _initial_loss(net, train, task, device) -> float:
    """The untrained model's loss on (up to) 1024 training samples, in eval mode."""
    net.eval()
    x, y = next(batches(train, 1024, device))
    loss = float(loss_fn(net(x), y, task))
    net.train()
    return loss


def _score(run: Run, model, split) -> float:
    from archdisc.data.core import evaluate
    return evaluate(model, split, run.data.metric, 1024, run.device,
                    run.config.loader_workers)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config field 'device': 'cuda' asked for but no CUDA device is "
                          "available; use 'cpu' or 'auto'")
    return torch.device(name)


def load_dataset(config: Config):
    from archdisc.recipe.config import PYTHON_DATA
    from archdisc.data.core import is_user_data, load_data, load_user_data
    if config.data.startswith(PYTHON_DATA):
        raise ConfigError(f"config field 'data': {config.data!r} was a Python Dataset given "
                          f"to run_discover(data=...); pass it again (the command line "
                          f"cannot rebuild it)")
    if is_user_data(config.data):
        if config.task != "classification" or set(config.data_options) - {"target"}:
            raise ConfigError("config field 'data': a user's file or folder supports "
                              "task = \"classification\" and one data option: target "
                              "(a CSV's label column)")
        return load_user_data(config.data, seed=config.seed, limit=config.limit,
                              **config.data_options)
    try:
        data = load_data(config.data, root=config.data_root, task=config.task,
                         seed=config.seed, noise_sigma=config.noise_sigma, limit=config.limit,
                         **config.data_options)
    except TypeError as e:
        raise ConfigError(f"config field 'data_options': {e}") from None
    if config.augment != "none" and len(data.in_shape) != 3:
        raise ConfigError(f"config field 'augment': {config.augment!r} needs image inputs "
                          f"(channels, height, width), but dataset {data.name!r} has inputs "
                          f"of shape {list(data.in_shape)}; use augment = \"none\"")
    return data


def build_supernet(config: Config, data) -> ArchGraph:
    """The search space's graph (or config.model's, or the graph file config.space);
    ``in_shape`` / ``classes`` / ``task`` default to the data's."""
    from archdisc.recipe.config import is_graph_file
    if config.model is not None or is_graph_file(config.space):
        from archdisc.recipe.byo import graph_file, model_graph
        graph = (model_graph(config, data) if config.model is not None
                 else graph_file(config.space))
        return _check_supernet(graph, config, data)
    from archdisc.spaces import build_space, spaces
    accepted = inspect.signature(spaces()[config.space][0]).parameters
    opts = dict(config.space_options)
    fill = {"in_shape": list(data.in_shape), "task": data.task}
    if data.task == "classification":
        fill["classes"] = data.out_dim
    for key, value in fill.items():
        if key in accepted and key not in opts:
            opts[key] = value
    try:
        graph = build_space(config.space, **opts)
    except GraphError as e:
        raise ConfigError(f"config field 'space_options': {e}") from None
    return _check_supernet(graph, config, data)


def _check_supernet(graph: ArchGraph, config: Config, data) -> ArchGraph:
    """The graph's input / output against the data's, its size against the memory."""
    from archdisc.recipe.config import is_graph_file
    name = ("model_options" if config.model else "space" if is_graph_file(config.space)
            else "space_options")
    shapes = graph.shapes()
    x_shape = tuple(shapes[graph.input_nodes()[0]])
    out_numel = math.prod(shapes[graph.output_nodes()[0]])
    want = data.out_dim if data.task == "classification" else math.prod(data.in_shape)
    if x_shape != tuple(data.in_shape) or out_numel != want:
        raise ConfigError(
            f"config field {name!r}: search space {config.space!r} maps {list(x_shape)} "
            f"-> {out_numel} values, but dataset {data.name!r} ({data.task}) needs "
            f"{list(data.in_shape)} -> {want}; adjust the {name.replace('_', ' ')}")
    from archdisc.graph.archgraph import count_params
    params = count_params(graph)
    need = 5 * 4 * params  # float32 weights, gradients and three optimizer buffers
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(f"config field {name!r}: the supernet has {params:,} "
                          f"parameters and needs about {need / 2**30:,.0f} GiB to train, more "
                          f"than this machine's {have / 2**30:,.0f} GiB; make it narrower")
    return graph


def make_optimizer(net: ArchNet, config: Config) -> torch.optim.Optimizer:
    from archdisc import optim
    from archdisc.sparsity.groups import param_groups
    c = config
    if c.optimizer in ("sgd", "adam"):  # dense baselines: no regularizer
        params = list(net.parameters())
        if c.optimizer == "sgd":  # classic (coupled) L2 weight decay
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                   weight_decay=c.weight_decay)
        if c.weight_decay > 0:  # decoupled: theta <- (1 - lr wd) theta each step
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.Adam(params, lr=c.lr)
    groups = param_groups(net, lam=c.lam, lam_edge=c.lam_edge, mode=c.group_mode)
    if c.optimizer == "adabreg":
        return optim.AdaBreg(groups, lr=c.lr, delta=c.delta, fused=c.fused)
    if c.optimizer == "linbreg":
        return optim.LinBreg(groups, lr=c.lr, delta=c.delta, momentum=c.momentum,
                             fused=c.fused)
    return optim.ProxSGD(groups, lr=c.lr, momentum=c.momentum, fused=c.fused)


@torch.no_grad()
def _fingerprint(net, alive_now: dict, opt) -> list[float]:
    """Numbers that differ between ranks whose parameters, alive units or lam differ."""
    lams = [g["reg"].lam for g in opt.param_groups if g.get("reg") is not None]
    return ([float(sum(p.double().abs().sum() for p in net.parameters()))]
            + [float(v) for v in alive_now["units"].values()] + lams)


@torch.no_grad()
def density(net) -> float:
    nz = sum(int(p.count_nonzero()) for p in net.parameters())
    return nz / max(1, sum(p.numel() for p in net.parameters()))


def current_lam(opt) -> float | None:
    for g in opt.param_groups:
        if g.get("reg") is not None:
            return g["reg"].lam
    return None
