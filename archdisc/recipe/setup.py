"""The setup stage's parts: the device, the data, the supernet graph, the optimizer, and
the search's starting state (restored from the checkpoint when a run resumes).

A config that cannot be run is refused with a :class:`~archdisc.errors.ConfigError` naming
the field and the fix, before the run folder is touched.
"""
from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass

import torch

from archdisc import optim
from archdisc.data import load_data, load_user_data
from archdisc.data.user import is_user_data
from archdisc.errors import ConfigError, GraphError, RunError
from archdisc.graph.archgraph import ArchGraph, count_macs, count_params
from archdisc.graph.compile import ArchNet, compile_graph
from archdisc.io import load_tensors
from archdisc.recipe import rundir
from archdisc.recipe.byo import graph_file, model_net
from archdisc.recipe.config import BUDGETS, PYTHON_DATA, Config, is_graph_file
from archdisc.recipe.loop import batches, epoch_order, loss_fn, tensors
from archdisc.spaces import build_space, spaces
from archdisc.sparsity.budget import (FISHER_BATCHES, LamControl, LatencyLine, compact_params,
                                      limits_of, measure_of, smallest, target_of)
from archdisc.sparsity.groups import alive, init_gates, param_groups, sparse_init

__all__ = ["resolve_device", "load_dataset", "build_supernet", "load_supernet", "make_optimizer",
           "SearchState", "start_search"]


def resolve_device(name: str) -> torch.device:
    """The torch device of config.device (auto: cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config field 'device': 'cuda' asked for but no CUDA device is "
                          "available; use 'cpu' or 'auto'")
    return torch.device(name)


def load_dataset(config: Config):
    """config.data loaded and split (a registered dataset, or a user's file or folder)."""
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
    return load_supernet(config, data)[0]


def load_supernet(config: Config, data, module=None) -> tuple[ArchGraph, dict | None]:
    """:func:`build_supernet`'s graph and, for a model (or ``module``, an instance given
    to ``run_discover(model=...)``), its imported weights (else None). The per-layer
    limits and the budget are checked against it."""
    graph, weights = _load_supernet(config, data, module)
    budget = any(getattr(config, n) is not None for n in BUDGETS)
    if budget or config.keep or config.min_keep or config.round_to > 1:
        net = compile_graph(graph)
        limits_of(config, net)  # a ConfigError for a layer name that is not searched
        if config.target_latency_ms is not None:
            least = LatencyLine(net, config).low[1]
            if config.target_latency_ms < least:
                raise ConfigError(
                    f"config field 'target_latency_ms': {config.target_latency_ms:g} ms "
                    f"cannot be reached: the smallest model the limits allow (keep, "
                    f"min_keep, round_to) runs in {least:.3g} ms at batch "
                    f"{config.latency_batch} here; ask for at least that")
        elif budget:
            measure = measure_of(config)
            full = count_macs(graph) if measure == "macs" else count_params(graph)
            least, target = smallest(net, config), target_of(config, full)
            if target < least:
                name = next(n for n in BUDGETS if getattr(config, n) is not None)
                raise ConfigError(
                    f"config field {name!r}: {target:,} {measure} cannot be reached: the "
                    f"smallest model the limits allow (keep, min_keep, round_to) has "
                    f"{least:,} {measure} ({least / full:.3g} of the supernet); ask for at "
                    f"least that, or loosen the limits")
    return graph, weights


def _load_supernet(config: Config, data, module=None) -> tuple[ArchGraph, dict | None]:
    if config.model is not None:
        net = model_net(config, data, module)
        return _check_supernet(net.graph, config, data), net.state_dict()
    if is_graph_file(config.space):
        return _check_supernet(graph_file(config.space), config, data), None
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
    return _check_supernet(graph, config, data), None


def _check_supernet(graph: ArchGraph, config: Config, data) -> ArchGraph:
    """The graph's input / output against the data's, its size against the memory."""
    name = ("model_options" if config.model else "space" if is_graph_file(config.space)
            else "space_options")
    shapes = graph.shapes()
    x_shape = tuple(shapes[graph.input_nodes()[0]])
    out_numel = math.prod(shapes[graph.output_nodes()[0]])
    want = data.out_dim * math.prod(data.meta.get("label_shape", [])) \
        if data.task == "classification" else math.prod(data.in_shape)
    if x_shape != tuple(data.in_shape) or out_numel != want:
        raise ConfigError(
            f"config field {name!r}: search space {config.space!r} maps {list(x_shape)} "
            f"-> {out_numel} values, but dataset {data.name!r} ({data.task}) needs "
            f"{list(data.in_shape)} -> {want}; adjust the {name.replace('_', ' ')}")
    params = count_params(graph)
    need = 5 * 4 * params  # float32 weights, gradients and three optimizer buffers
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(f"config field {name!r}: the supernet has {params:,} "
                          f"parameters and needs about {need / 2**30:,.0f} GiB to train, more "
                          f"than this machine's {have / 2**30:,.0f} GiB; make it narrower")
    return graph


def make_optimizer(net: ArchNet, config: Config) -> torch.optim.Optimizer:
    """config.optimizer on ``net``: Bregman / proximal on its groups, or a dense baseline."""
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


@dataclass
class SearchState:
    """The search's state between epochs (the metrics and seconds so far are the run's)."""
    net: ArchNet
    opt: torch.optim.Optimizer
    model: torch.nn.Module  # net, or net in DDP under torchrun
    control: LamControl
    x: object  # the training inputs on the device, or the Dataset to stream
    y: object  # the labels on the device, or None (streamed)
    steps: int  # per epoch
    initial: float  # the starting model's loss (at least a uniform guess's)
    start: int = 0  # the last epoch done before this process
    best: tuple | None = None  # (val, epoch, state_dict) of the best in-budget epoch
    alive0: dict | None = None  # alive units per searchable node at the sparse start
    params0: int = 0  # the compact model's parameters at the sparse start


def start_search(run) -> SearchState:
    """The supernet of ``run`` (a :class:`~archdisc.recipe.discover.Run`): sparse-initialised,
    or the model's weights (``start``), its optimizer and lam controller, restored from the
    checkpoint when the run resumes (``run.metrics`` and ``run.train_seconds`` too)."""
    config, data, device = run.config, run.data, run.device
    torch.manual_seed(config.seed)
    net = ArchNet(run.graph)
    if config.from_weights():
        net.load_state_dict(run.weights)
    elif not config.dense():
        sparse_init(net, density=config.density, mode=config.group_mode, seed=config.seed)
    else:  # every unit of the default init; candidate edges closed, as at the sparse start
        init_gates(net)
    net = net.to(device)
    opt = make_optimizer(net, config)
    model = run.dist.wrap(net)
    x, y = tensors(data.train, device)  # y is None: streamed through a DataLoader
    steps = math.ceil(len(data.train) / config.batch_size)
    sample = _sample(data.train, FISHER_BATCHES * config.batch_size, config.seed)
    control = LamControl(net, opt, config, steps, anchor=config.anchored(), task=data.task,
                         batches=lambda: batches(sample, config.batch_size, device))
    initial = _initial_loss(net, data.train, data.task, device)
    s = SearchState(net, opt, model, control, x, y, steps, initial, alive0=alive(net)["units"],
                    params0=compact_params(net)[0])
    if run.resume_from is not None and (run.out / rundir.BEST).is_file():
        tensors_, meta = load_tensors(run.out / rundir.BEST)
        s.best = (meta["val"], meta["epoch"], {k: v.to(device) for k, v in tensors_.items()})
    if run.resume_from is not None:
        meta = rundir.load_checkpoint(run.resume_from, net, opt)
        if meta.get("config_hash") != config.hash():
            raise RunError(f"{run.resume_from} belongs to another config; pass --force to "
                           f"restart")
        run.metrics, s.start, run.train_seconds = (meta["metrics"], meta["epoch"],
                                                   meta["train_seconds"])
        control.load_state(meta.get("lam_control"))
        s.initial = meta.get("initial_loss", initial)
    if run.dist.main:
        rundir.write_metrics(run.out, run.metrics)
    return s


def _sample(train, n: int, seed: int):
    """``n`` training samples in a seeded order (not the first ``n``: files may be sorted
    by class), the same on every rank."""
    idx = epoch_order(seed, 0, len(train))[:n]
    if isinstance(train, torch.utils.data.TensorDataset):
        return torch.utils.data.TensorDataset(*(t[idx] for t in train.tensors))
    return torch.utils.data.Subset(train, idx.tolist())


@torch.no_grad()
def _initial_loss(net, train, task, device) -> float:
    """The starting model's loss on (up to) 1024 training samples, in eval mode; for
    classification at least a uniform guess's, log(classes): a model that starts trained
    may lose much of its fit while units are cut without diverging."""
    net.eval()
    x, y = next(batches(train, 1024, device))
    out = net(x)
    loss = float(loss_fn(out, y, task))
    net.train()
    return max(loss, math.log(out.shape[-1])) if task == "classification" else loss
