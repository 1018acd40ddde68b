"""Training: the run config, the training loop, checkpoints, resume, and ``discover``.

``run_discover(config, out)`` is the whole job: build the supernet from a search space,
sparse-initialise it, train it with a Bregman optimizer and group regularizers, extract
the architecture that survived, evaluate both models on the test split and write the run
folder ``out``::

    config.toml              the fully resolved Config (re-runnable: --config out/config.toml)
    metrics.jsonl            one JSON line per epoch
    checkpoint.safetensors   model + optimizer state + RNG state, rewritten atomically
                             every epoch (JSON metadata: epoch, config hash, metrics)
    supernet.safetensors/.json   trained supernet: weights + its ArchGraph
    compact.safetensors/.json    discovered model: weights + its (smaller) ArchGraph
    report.json, report.md   test metrics, sizes, widths, surviving edges, wall time

Nothing is pickled: weights and optimizer state are safetensors, everything else JSON or
TOML. Resuming is bit-identical to an uninterrupted run on the CPU: each epoch's data
order (and, with ``augment``, its random crops / flips) is drawn from ``(seed, epoch)``
alone, and the checkpoint holds everything else (weights, BatchNorm buffers, optimizer
state, torch RNG state).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import sys
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .compile import ArchNet
from .export import save as save_model
from .graph import ArchGraph, GraphError
from .io import atomic_write_json, atomic_write_text, load_tensors, save_tensors

__all__ = ["Config", "ConfigError", "TrainingError", "RunError", "load_config",
           "run_discover", "train", "cosine_steps"]

OPTIMIZERS = ("adabreg", "linbreg", "proxsgd", "sgd", "adam")
CHOICES = {
    "optimizer": OPTIMIZERS,
    "group_mode": ("unit", "kernel", "element"),
    "lr_schedule": ("constant", "cosine"),
    "finetune_schedule": ("constant", "cosine"),
    "device": ("auto", "cpu", "cuda"),
    "task": ("classification", "denoising"),
    "group_weight": ("sqrt_n", "one", "sqrt_alive"),
    "augment": ("none", "crop_flip"),
}
BREGMAN = ("adabreg", "linbreg", "proxsgd")
CHECKPOINT = "checkpoint.safetensors"
ARTEFACTS = ("config.toml", "metrics.jsonl", CHECKPOINT, "supernet.safetensors",
             "supernet.json", "compact.safetensors", "compact.json", "report.json",
             "report.md")


class ConfigError(ValueError):
    """A bad config: the message names the field and what is allowed."""


class RunError(RuntimeError):
    """The run folder cannot be used as asked (another run is there, nothing to resume)."""


class TrainingError(RuntimeError):
    """Training diverged (NaN / inf loss); the last good checkpoint is kept."""


# ====================================================================== config
@dataclass
class Config:
    """Everything that defines a discover run. ``None`` means "not set"."""
    space: str = "mlp"                 # a built-in search space (``archdisc spaces``)
    space_options: dict = field(default_factory=dict)  # keyword arguments of the space
    data: str = "fashion-mnist"        # a dataset name of archdisc.data
    data_root: str | None = None       # folder with the dataset files
    data_options: dict = field(default_factory=dict)   # e.g. teacher_widths for "teacher"
    task: str = "classification"       # or "denoising"
    limit: int | None = None           # cap the training set (val/test get limit // 5)
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adabreg"         # adabreg | linbreg | proxsgd | sgd | adam
    lr: float = 1e-3
    lam: float = 0.05                  # regularization strength of unit / kernel / element groups
    lam_edge: float | None = None      # strength on candidate-edge gates (None: lam)
    group_mode: str = "unit"           # unit | kernel | element
    delta: float = 1.0                 # Bregman / prox step scale (adabreg, linbreg)
    momentum: float = 0.9              # linbreg, proxsgd, sgd (adam / adabreg use betas)
    density: float = 0.2               # initial fraction of alive units (kernels, elements)
    lr_schedule: str = "constant"      # constant | cosine
    augment: str = "none"              # none | crop_flip (image inputs; search and fine-tune)
    weight_decay: float = 0.0          # sgd: coupled; adam / fine-tune: AdamW; Bregman:
                                       # decoupled, unregularized groups only (see train)
    device: str = "auto"               # auto | cpu | cuda
    finetune: int = 3                  # epochs of plain Adam on the compact model afterwards
    finetune_lr: float = 1e-3          # its learning rate
    finetune_schedule: str = "constant"  # constant | cosine (per step, finetune_lr -> 0)
    lam_warmup: float = 0.0            # epochs over which lam ramps linearly from 0 to lam
    lam_layers: dict = field(default_factory=dict)  # node -> factor on lam (e.g. fc2 = 0.5)
    group_weight: str = "sqrt_n"       # unit group weight: sqrt(fan-in) | one | sqrt(alive fan-in)
    target_params: int | None = None   # steer lam until the compact model has <= this many params
    target_density: float | None = None  # same, as a fraction of the supernet's parameters
    target_tol: float = 0.1            # hold lam while params are in [(1 - tol) target, target]
    control_every: int = 50            # steps between two looks of the lam controller
    noise_sigma: float = 0.3           # denoising noise level

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Check names and types of ``d`` (e.g. read from TOML) and build a Config."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a table of settings, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown config key {key!r}{hint}; allowed keys: "
                                  f"{', '.join(names)}")
        hints = typing.get_type_hints(cls)
        values = {k: _check_type(k, v, hints[k]) for k, v in d.items()}
        return cls(**values).validate()

    def validate(self) -> "Config":
        """Check every value; raise ConfigError naming the field and what is allowed."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), hints[f.name]))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config field {name!r}: {getattr(self, name)!r} is not "
                                  f"allowed; choose one of {', '.join(allowed)}")
        from search_spaces import SPACES
        if self.space not in SPACES:
            raise ConfigError(f"config field 'space': unknown search space {self.space!r}; "
                              f"available: {', '.join(SPACES)}")
        from .data import available_datasets
        known = available_datasets()
        if _dataset_key(self.data) not in {_dataset_key(k) for k in known}:
            raise ConfigError(f"config field 'data': unknown dataset {self.data!r}; "
                              f"available: {', '.join(known)}")
        _require(self.epochs >= 1, "epochs", "an integer >= 1")
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1")
        _require(self.limit is None or self.limit >= 1, "limit", "an integer >= 1 (or unset)")
        _require(self.finetune >= 0, "finetune", "an integer >= 0")
        for name in ("lr", "delta", "finetune_lr"):
            _require(0 < getattr(self, name) < math.inf, name, "a finite number > 0")
        for name in ("lam", "lam_edge", "noise_sigma"):
            v = getattr(self, name)
            _require(v is None or 0 <= v < math.inf, name, "a finite number >= 0")
        _require(0 <= self.weight_decay < math.inf, "weight_decay", "a finite number >= 0")
        _require(0 <= self.momentum < 1, "momentum", "a number in [0, 1)")
        _require(0 <= self.lam_warmup < math.inf, "lam_warmup", "a finite number of epochs >= 0")
        _require(self.target_params is None or self.target_params >= 1, "target_params",
                 "an integer >= 1 (or unset)")
        _require(self.target_density is None or 0 < self.target_density <= 1,
                 "target_density", "a number in (0, 1] (or unset)")
        _require(self.target_params is None or self.target_density is None, "target_params",
                 "unset when target_density is set (give one budget, not both)")
        _require(0 < self.target_tol < 1, "target_tol", "a number in (0, 1)")
        _require(self.control_every >= 1, "control_every", "an integer >= 1 (steps)")
        for k, v in self.lam_layers.items():
            _require(isinstance(v, (int, float)) and not isinstance(v, bool)
                     and 0 <= v < math.inf, "lam_layers",
                     f"a table node = factor >= 0, got {k} = {v!r}")
        if (self.target_params or self.target_density) and \
                self.optimizer not in BREGMAN:
            raise ConfigError(f"config field 'target_params' / 'target_density': needs a "
                              f"regularized optimizer (adabreg, linbreg, proxsgd), not "
                              f"{self.optimizer!r}")
        _require(0 < self.density <= 1, "density", "a number in (0, 1]")
        return self

    # ---------------------------------------------------------------- output
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short digest of every field: runs with the same hash are the same run."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        lines = ["# archdisc discover config (fully resolved); rerun with --config FILE", ""]
        tables = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                tables.append(f.name)
            elif v is None:
                lines.append(f"# {f.name}: not set")
            else:
                lines.append(f"{f.name} = {_toml_value(v)}")
        for name in tables:
            lines += ["", f"[{name}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in getattr(self, name).items()]
        return "\n".join(lines) + "\n"


def load_config(path=None, overrides: dict | None = None) -> Config:
    """Read a TOML config file (optional) and apply ``overrides`` (field -> value).

    ``space_options`` / ``data_options`` overrides are merged into the file's tables.
    """
    d = read_toml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if key in ("space_options", "data_options") and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return Config.from_dict(d)


def read_toml(path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def _require(ok, name, what):
    if not ok:
        raise ConfigError(f"config field {name!r}: must be {what}")


def _dataset_key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _check_type(name, value, typ):
    """``value`` converted to ``typ`` (int -> float allowed), or a ConfigError."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is dict and isinstance(value, dict):
        try:  # plain JSON / TOML data only (tuples become lists)
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            raise ConfigError(f"config field {name!r}: values must be numbers, strings, "
                              f"booleans, lists or tables, got {value!r}") from None
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        want = {int: "an integer", float: "a number", str: "a string",
                dict: "a table (key = value pairs)"}[typ]
        raise ConfigError(f"config field {name!r}: expected {want}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else "inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} to TOML")


# ====================================================================== parts
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config field 'device': 'cuda' asked for but no CUDA device is "
                          "available; use 'cpu' or 'auto'")
    return torch.device(name)


def load_dataset(config: Config):
    from .data import load_data
    try:
        data = load_data(config.data, root=config.data_root, task=config.task,
                         seed=config.seed, noise_sigma=config.noise_sigma, limit=config.limit,
                         **config.data_options)
    except TypeError as e:
        raise ConfigError(f"config field 'data_options': {e}") from None
    check_augment(config, data)
    return data


def check_augment(config: Config, data):
    """``augment`` other than "none" needs image inputs (C, H, W)."""
    if config.augment != "none" and len(data.in_shape) != 3:
        raise ConfigError(f"config field 'augment': {config.augment!r} needs image inputs "
                          f"(channels, height, width), but dataset {data.name!r} has inputs "
                          f"of shape {list(data.in_shape)}; use augment = \"none\"")


def build_supernet(config: Config, data) -> ArchGraph:
    """The search space's graph; ``in_shape`` / ``classes`` / ``task`` default to the data's."""
    from search_spaces import SPACES, build_space
    accepted = inspect.signature(SPACES[config.space][0]).parameters
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
    shapes = graph.shapes()
    x_shape = tuple(shapes[graph.input_nodes()[0]])
    out_numel = math.prod(shapes[graph.output_nodes()[0]])
    want = data.out_dim if data.task == "classification" else math.prod(data.in_shape)
    if x_shape != tuple(data.in_shape) or out_numel != want:
        raise ConfigError(
            f"config field 'space_options': search space {config.space!r} maps {list(x_shape)} "
            f"-> {out_numel} values, but dataset {data.name!r} ({data.task}) needs "
            f"{list(data.in_shape)} -> {want}; adjust the space options")
    return graph


def make_optimizer(net: ArchNet, config: Config) -> torch.optim.Optimizer:
    from . import optim
    from .groups import param_groups
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
        return optim.AdaBreg(groups, lr=c.lr, delta=c.delta)
    if c.optimizer == "linbreg":
        return optim.LinBreg(groups, lr=c.lr, delta=c.delta, momentum=c.momentum)
    return optim.ProxSGD(groups, lr=c.lr, momentum=c.momentum)


def set_lr(opt, config: Config, epoch: int) -> float:
    """The learning rate of (1-based) ``epoch``: constant, or cosine from lr to ~0."""
    lr = config.lr
    if config.lr_schedule == "cosine":
        lr = config.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / config.epochs))
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def loss_fn(out, y, task):
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out.reshape(y.shape), y)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of ``epoch``: a function of (seed, epoch) only, so resume sees it too."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2 ** 63)
    return torch.randperm(n, generator=gen)


@torch.no_grad()
def decay_unregularized(opt, weight_decay: float):
    """Decoupled weight decay for the Bregman optimizers, applied after each step:
    theta <- (1 - lr * delta * wd) theta on the UNREGULARIZED param groups only (reg None:
    the head, BatchNorm, ...), where the optimizer is plain Adam / SGD with step size
    lr * delta (ProxSGD: lr), so this is AdamW-style decay at that step size. Regularized
    groups are left alone: their sparsity (and shrinkage) comes from the prox."""
    for g in opt.param_groups:
        if g.get("reg") is None and g["params"]:
            torch._foreach_mul_(g["params"], 1 - g["lr"] * g.get("delta", 1.0) * weight_decay)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch (``pad`` pixels each side) and
    random horizontal flip, for (N, C, H, W) ``x`` on its own device, drawn from ``gen``
    (a generator on that device). On standardised data zero padding is the mean colour.
    Per sample: out = padded[:, dy:dy + H, dx:dx + W], mirrored left-right with p = 1/2."""
    n, c, h, w = x.shape
    dev = x.device
    shift = torch.randint(0, 2 * pad + 1, (2, n), generator=gen, device=dev)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (shift[0, :, None] + torch.arange(h, device=dev)).view(n, 1, h, 1)
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * pad))
    j = torch.arange(w, device=dev)
    cols = shift[1, :, None] + torch.where(flip[:, None], w - 1 - j, j)  # flip: read j backwards
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def augmenter(config: Config, seed: int, epoch: int, device):
    """The batch augmentation of ``epoch`` (None for ``augment="none"``): a function
    ``(xb, yb) -> (xb, yb)`` drawing from a generator seeded by (seed, epoch) alone, so a
    resumed run augments exactly like an uninterrupted one. Denoising targets (clean
    images) get the same crop / flip as their inputs."""
    if config.augment == "none":
        return None
    key = (seed * 1_000_003 + epoch) % 2 ** 63 ^ 0x5DEECE66D  # not epoch_order's stream
    gen = torch.Generator(device=device).manual_seed(key)

    def augment(xb, yb):
        if xb.dim() != 4:
            raise ConfigError(f"config field 'augment': {config.augment!r} needs image "
                              f"batches (N, C, H, W), got shape {list(xb.shape)}")
        if yb.dim() < 2:  # class labels
            return crop_flip(xb, gen), yb
        c = xb.shape[1]
        both = crop_flip(torch.cat([xb, yb.reshape(xb.shape)], 1), gen)
        return both[:, :c], both[:, c:].reshape(yb.shape)
    return augment


def train_epoch(net, opt, x, y, task, batch_size, order, bar=None, on_step=None,
                augment=None) -> float:
    """One pass over (x, y) in ``order``; returns the mean loss, raises on NaN / inf.
    ``augment(xb, yb) -> (xb, yb)`` (see :func:`augmenter`) transforms each batch."""
    net.train()
    order = order.to(x.device)
    total, count = 0.0, 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb, yb = augment(xb, yb)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb, task)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(f"loss became {value} at step {step + 1}")
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step)
        total += value * len(idx)
        count += len(idx)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    return total / count


@torch.no_grad()
def density(net) -> float:
    nz = sum(int(p.count_nonzero()) for p in net.parameters())
    return nz / max(1, sum(p.numel() for p in net.parameters()))


def current_lam(opt) -> float | None:
    for g in opt.param_groups:
        if g.get("reg") is not None:
            return g["reg"].lam
    return None


@torch.no_grad()
def compact_params(net) -> tuple[int, dict]:
    """Parameter count of the compact model that extraction would build now (exact, ~3 ms
    for an MLP), and each searchable node's alive fan-in there (None: node removed)."""
    from .extract import extract
    from .groups import unit_members
    _, compact = extract(net, verify=False)
    shapes = {k: v.shape for k, v in compact.named_parameters()}
    fan_in = {n: (math.prod(shapes[f"layers.{n}.weight"][1:])
                  if f"layers.{n}.weight" in shapes else None) for n in unit_members(net)}
    return sum(p.numel() for p in compact.parameters()), fan_in


class LamControl:
    """Sets lam of every regularized param group, every step:

        lam_g = lam * ramp(step) * mult * lam_layers[g] * weight_g

    ``ramp`` rises linearly from 0 to 1 over ``lam_warmup`` epochs. ``weight_g`` changes
    the unit group weight sqrt(n) of the regularizer to 1 (``group_weight="one"``) or
    to sqrt(alive fan-in + 1) (``"sqrt_alive"``, refreshed at each look). With a budget
    (``target_params`` / ``target_density``) the controller looks every ``control_every``
    steps at the parameter count P of the compact model and multiplies ``mult`` by
    max(0.8, sqrt(P / target)) while P < (1 - target_tol) target (lowering lam lets the
    loss switch more units on), and raises lam just enough to bring P back to the
    target when P > target (:meth:`settle`: raising lam switches units off at once,
    through the prox). In between, lam is held.
    """

    def __init__(self, net, opt, config: Config, steps_per_epoch: int):
        from .groups import unit_members
        self.config, self.spe = config, steps_per_epoch
        self.groups = [g for g in opt.param_groups if g.get("reg") is not None]
        names = {g.get("name") for g in self.groups}
        for k in config.lam_layers:
            if k not in names:
                raise ConfigError(f"config field 'lam_layers': {k!r} is not a regularized "
                                  f"node of this search space; choose from "
                                  f"{', '.join(sorted(str(n) for n in names))}")
        self.base = {id(g): g["reg"].lam for g in self.groups}
        params = dict(net.named_parameters())
        self.full_fan = {n: math.prod(params[names_[0]].shape[1:])
                         for n, names_ in unit_members(net).items()}
        self.target = target_of(config, sum(p.numel() for p in params.values()))
        self.mult, self.weights = 1.0, {}
        self.active = bool(self.target or config.lam_warmup or config.lam_layers
                           or config.group_weight != "sqrt_n")

    def state(self) -> dict:
        return {"mult": self.mult, "weights": self.weights}

    def load_state(self, state: dict | None):
        if state:
            self.mult, self.weights = state["mult"], state["weights"]

    def weight(self, g) -> float:
        name, c = g.get("name"), self.config
        if g.get("kind") != "unit" or name not in self.full_fan or c.group_weight == "sqrt_n":
            return 1.0
        if c.group_weight == "one":  # the regularizer's weight is sqrt(n), n = fan-in + 1
            return 1.0 / math.sqrt(self.full_fan[name] + 1)
        return self.weights.get(name, 1.0)

    def look(self, net):
        """Measure the compact size; adjust ``mult`` (budget) and the alive-fan-in weights."""
        P, fan = compact_params(net)
        if self.config.group_weight == "sqrt_alive":
            self.weights = {n: math.sqrt(((fan[n] if fan[n] is not None else self.full_fan[n])
                                          + 1) / (self.full_fan[n] + 1)) for n in fan}
        if self.target and P > self.target:
            P = self.settle(net)
        elif self.target and P < (1 - self.config.target_tol) * self.target:
            self.mult *= max(0.8, math.sqrt(P / self.target))
        return P

    def ramp(self, step: int) -> float:
        w = self.config.lam_warmup
        return min(1.0, step / (w * self.spe)) if w else 1.0

    def set(self, step: int):
        """Write lam into the optimizer for global ``step`` (1-based)."""
        ramp = self.ramp(step)
        for g in self.groups:
            layer = self.config.lam_layers.get(g.get("name"), 1.0)
            g["reg"].lam = self.base[id(g)] * ramp * self.mult * layer * self.weight(g)

    def lam(self, step: int) -> float:
        """The scalar lam (without per-layer factors) in force at ``step``."""
        return self.config.lam * self.ramp(step) * self.mult

    @torch.no_grad()
    def settle(self, net, max_iter: int = 300) -> int:
        """While P > target: raise lam by 3% and apply the prox of the extra lam to the
        weights. For an alive group this is exactly the parameter the Bregman step gives
        with the raised lam and the same v (theta_g = prox(delta v) shrinks by
        delta * dlam * w_g and dies when that exceeds its norm); dead groups stay dead.
        So lam rises just enough to switch off the excess, weakest units first."""
        P, _ = compact_params(net)
        it = 0
        while self.target and P > self.target and it < max_iter:
            it += 1
            before = {id(g): g["reg"].lam for g in self.groups}
            self.mult *= 1.03
            self.set(10 ** 12)
            for g in self.groups:
                extra = type(g["reg"])(max(0.0, g["reg"].lam - before[id(g)]))
                extra.prox_(g["params"], g.get("delta", 1.0))
            P, _ = compact_params(net)
        return P


# ====================================================================== checkpoints
def save_checkpoint(path, net, opt, meta: dict):
    """Atomically write weights, buffers, optimizer and RNG state (safetensors, no pickle)."""
    from .optim import optimizer_state_to_tensors
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
    from .optim import optimizer_state_from_tensors
    tensors, meta = load_tensors(path)
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


# ====================================================================== the run
def prepare_run(out, config: Config, resume=False, force=False) -> Path | None:
    """Decide how to use the run folder ``out``; returns the checkpoint to resume from,
    or None for a fresh start. Raises RunError when ``out`` holds something else."""
    out = Path(out)
    cfg_file, ckpt = out / "config.toml", out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {str(out)!r} is a file; give a folder")
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


def train(config: Config, out, data=None, resume_from=None, progress=True,
          on_epoch=None):
    """Train the supernet of ``config`` in run folder ``out`` (checkpoint every epoch).

    Returns ``(net, data, metrics, train_seconds)``. ``on_epoch(epoch, record, net)`` is
    called after each epoch's checkpoint is on disk (it may raise to stop the run).
    """
    out = Path(out)
    device = resolve_device(config.device)
    data = data if data is not None else load_dataset(config)
    check_augment(config, data)
    graph = build_supernet(config, data)

    from .groups import sparse_init
    torch.manual_seed(config.seed)
    net = sparse_init(ArchNet(graph), density=config.density, mode=config.group_mode,
                      seed=config.seed).to(device)
    opt = make_optimizer(net, config)
    x, y = (t.to(device) for t in data.train.tensors)
    steps = math.ceil(len(x) / config.batch_size)

    control = LamControl(net, opt, config, steps)
    decay = config.weight_decay > 0 and config.optimizer in BREGMAN  # else torch's own
    metrics, start, seconds = [], 0, 0.0
    if resume_from is not None:
        meta = load_checkpoint(resume_from, net, opt)
        if meta.get("config_hash") != config.hash():
            raise RunError(f"{resume_from} belongs to another config; pass --force to restart")
        metrics, start, seconds = meta["metrics"], meta["epoch"], meta["train_seconds"]
        control.load_state(meta.get("lam_control"))
    # metrics.jsonl always mirrors the checkpoint (a kill may have left one line more)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))

    from tqdm import tqdm
    from .data import evaluate
    from .groups import alive
    show = progress and sys.stderr.isatty()
    bar = tqdm(total=config.epochs * steps, initial=start * steps, disable=not show,
               unit="batch", desc=f"discover {config.space}", file=sys.stderr, leave=False)
    try:
        for epoch in range(start + 1, config.epochs + 1):
            t0 = time.perf_counter()
            lr = set_lr(opt, config, epoch)

            def on_step(step, epoch=epoch):
                if decay:
                    decay_unregularized(opt, config.weight_decay)
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
                loss = train_epoch(net, opt, x, y, data.task, config.batch_size,
                                   epoch_order(config.seed, epoch, len(x)), bar, on_step,
                                   augmenter(config, config.seed, epoch, x.device))
                if control.target and epoch == config.epochs:
                    control.settle(net)
                if not all(torch.isfinite(p).all() for p in net.parameters()):
                    raise TrainingError("parameters are not finite")
            except TrainingError as e:
                kept = (f"{out / CHECKPOINT} keeps epoch {metrics[-1]['epoch']}" if metrics
                        else "no epoch finished, so there is no checkpoint")
                raise TrainingError(f"training diverged in epoch {epoch}: {e}. Stopped; "
                                    f"{kept}. Try a smaller lr (now {lr:g}).") from None
            val = evaluate(net, data.val, data.metric, 1024, device)
            a = alive(net)
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
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(out / CHECKPOINT, net, opt,
                            {"epoch": epoch, "config_hash": config.hash(), "metrics": metrics,
                             "train_seconds": seconds, "lam_control": control.state()})
            if show:
                units = " ".join(f"{k}={v}" for k, v in a["units"].items())
                bar.write(f"epoch {epoch}/{config.epochs}  loss {loss:.4f}  "
                          f"val {data.metric} {val:.2f}  density {record['density']:.3f}  "
                          f"alive {units}")
            if on_epoch is not None:
                on_epoch(epoch, record, net)
    finally:
        bar.close()
    return net, data, metrics, seconds


def cosine_steps(opt, lr: float, total: int):
    """An ``on_step`` hook for :func:`train_epoch`: after each of ``total`` steps, set the
    lr of every group of ``opt`` to the next value of a cosine from ``lr`` down to 0."""
    done = [0]

    def step(_):
        done[0] += 1
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done[0] / total))
    return step


def finetune(net: ArchNet, data, config: Config, device) -> list[float]:
    """``config.finetune`` epochs of plain Adam (``config.finetune_lr``) on the compact model;
    AdamW when ``config.weight_decay`` > 0, with ``config.augment`` as in the search.

    With kernel or element groups the compact model still holds the zeros the search
    found inside its surviving units; they stay zero, so the sparsity is not lost."""
    opt = (torch.optim.AdamW(net.parameters(), lr=config.finetune_lr,
                             weight_decay=config.weight_decay) if config.weight_decay > 0
           else torch.optim.Adam(net.parameters(), lr=config.finetune_lr))
    x, y = (t.to(device) for t in data.train.tensors)
    total = math.ceil(len(x) / config.batch_size) * config.finetune
    cosine = (cosine_steps(opt, config.finetune_lr, total)
              if config.finetune_schedule == "cosine" else None)
    keep = ([(p, p != 0) for p in net.parameters() if p.dim() > 1]
            if config.group_mode != "unit" else [])

    @torch.no_grad()
    def on_step(i):
        if cosine is not None:
            cosine(i)
        for p, mask in keep:
            p.mul_(mask)
    return [train_epoch(net, opt, x, y, data.task, config.batch_size,
                        epoch_order(config.seed + 1, e, len(x)), on_step=on_step,
                        augment=augmenter(config, config.seed + 1, e, x.device))
            for e in range(1, config.finetune + 1)]


def run_discover(config: Config, out, resume=False, force=False, progress=True,
                 on_epoch=None) -> dict:
    """Train, extract, evaluate and write the run folder ``out``; returns the report.

    An existing ``out`` that holds another run is refused unless ``force``; the same
    run is continued from its last checkpoint with ``resume`` (see :func:`prepare_run`).
    """
    from .data import evaluate
    from .extract import extract, extraction_report, format_report

    config = config.validate()
    out = Path(out)
    t_start = time.perf_counter()
    resume_from = prepare_run(out, config, resume=resume, force=force)
    device = resolve_device(config.device)
    data = load_dataset(config)
    build_supernet(config, data)  # bad space options fail before the folder is touched
    for name in ARTEFACTS:
        if resume_from is None:  # fresh start: clear what an earlier run left
            (out / name).unlink(missing_ok=True)
        for tmp in out.glob(f".{name}.*.tmp"):  # half-written by a killed run
            tmp.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", config.to_toml())

    net, data, metrics, train_seconds = train(config, out, data, resume_from, progress,
                                              on_epoch)
    net.eval()
    save_model(net, out / "supernet")
    sample = data.val.tensors[0][:256].to(device)  # verify the extraction on real inputs
    compact_graph, compact = extract(net, verify=True, inputs=sample)
    compact = compact.to(device).eval()
    def scores(split):
        return {"supernet": evaluate(net, split, data.metric, 1024, device),
                "compact": evaluate(compact, split, data.metric, 1024, device)}

    test, val = scores(data.test), scores(data.val)
    finetune_seconds, finetune_losses = 0.0, []
    if config.finetune:
        t0 = time.perf_counter()
        finetune_losses = finetune(compact, data, config, device)
        finetune_seconds = time.perf_counter() - t0
        compact.eval()
        test["compact_extracted"], val["compact_extracted"] = test["compact"], val["compact"]
        test["compact"] = evaluate(compact, data.test, data.metric, 1024, device)
        val["compact"] = evaluate(compact, data.val, data.metric, 1024, device)
    save_model(compact, out / "compact")

    report = extraction_report(net.graph, compact_graph)
    report.update({
        "metric": data.metric,
        "test": test,
        "val": val,
        "val_last": metrics[-1][f"val_{data.metric}"] if metrics else None,
        "data": {"name": data.name, "task": data.task, "in_shape": list(data.in_shape),
                 "sizes": [len(data.train), len(data.val), len(data.test)],
                 "meta": data.meta},
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "epochs": len(metrics),
        "finetune": {"epochs": config.finetune, "lr": config.finetune_lr,
                     "schedule": config.finetune_schedule,
                     "train_loss": finetune_losses, "seconds": round(finetune_seconds, 2),
                     "test_before": test.get("compact_extracted", test["compact"]),
                     "test_after": test["compact"]},
        "epochs_total": len(metrics) + config.finetune,
        "target_params": target_of(config, report["params"]["supernet"]),
        "lam_final": metrics[-1]["lam"] if metrics else None,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - t_start, 2),
        "device": str(device),
        "threads": torch.get_num_threads(),
    })
    report["headline"] = headline(report)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report, format_report))
    return report


def target_of(config: Config, supernet_params: int) -> int | None:
    """The parameter budget of ``config`` (``target_params`` or ``target_density``)."""
    if config.target_params is not None:
        return config.target_params
    if config.target_density is not None:
        return round(config.target_density * supernet_params)
    return None


def headline(report: dict) -> str:
    test, metric = report["test"], report["metric"]
    unit = "%" if metric == "accuracy" else " dB"
    kept, total = report["params"]["compact"], report["params"]["supernet"]
    tuned = ""
    if "compact_extracted" in test:
        tuned = f", fine-tuned {report['config']['finetune']} epochs"
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
    return "\n".join(lines)
