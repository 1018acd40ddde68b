"""The run config: every field with its meaning, TOML in and out, validation.

``Config`` is a dataclass; each field's metadata holds its documentation (``"help"``, the
``--help`` text of its option) and whether it is an expert knob (``"expert"``: listed
apart by ``archdisc discover --help``). The user-facing fields come first. Bad values
raise :class:`~archdisc.errors.ConfigError` naming the field and what is allowed;
:meth:`Config.validate` checks without changing the config and returns its normalised copy.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from archdisc.data import available_datasets
from archdisc.data.user import is_user_data
from archdisc.errors import ConfigError
from archdisc.io import read_toml, toml_key, toml_value
from archdisc.spaces import spaces

__all__ = ["Config", "ConfigError", "load_config", "CHOICES", "BREGMAN", "BUDGETS"]

OPTIMIZERS = ("adabreg", "linbreg", "proxsgd", "sgd", "adam")
CHOICES = {
    "optimizer": OPTIMIZERS,
    "group_mode": ("unit", "kernel", "element"),
    "lr_schedule": ("constant", "cosine"),
    "finetune_schedule": ("constant", "cosine"),
    "device": ("auto", "cpu", "cuda"),
    "task": ("classification", "denoising"),
    "group_weight": ("auto", "sqrt_n", "one", "sqrt_alive", "cost", "fisher"),
    "augment": ("none", "crop_flip"),
    "select": ("shrink", "scale", "none"),
    "start": ("auto", "sparse", "weights"),
}
BREGMAN = ("adabreg", "linbreg", "proxsgd")
DENSE_SHARE = 0.7  # of the search's epochs dense by default under a budget (RESULTS.md 15)
BUDGETS = ("target_params", "target_density", "target_macs", "target_latency_ms")  # one at most


def _field(default, help: str, expert: bool = False):
    """A Config field: its default, its documentation and whether it is an expert knob."""
    meta = {"help": help, "expert": expert}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """Everything that defines a discover run. ``None`` means "not set"."""
    # ------------------------------------------------------------ what to search, on what
    space: str = _field("mlp", "the search space (see `archdisc spaces`), or an ArchGraph "
                               ".json file (e.g. a run's supernet.json)")
    space_options: dict = _field({}, "keyword arguments of the space")
    model: str | None = _field(None, "package.module:callable building a torch nn.Module, "
                                     "imported with archdisc.from_module as the supernet "
                                     "(instead of space; space then records it too)")
    model_options: dict = _field({}, "keyword arguments of the model callable")
    weights: str | None = _field(None, "the model's trained weights: a .safetensors file or a "
                                       "state_dict saved with torch.save (read with "
                                       "weights_only)")
    start: str = _field("auto", "where the search starts: a sparse random init, or the "
                                "model's weights with every unit alive, cut down to the "
                                "target (auto: weights when --weights is given, or a "
                                "module to run_discover(model=...); else dense_epochs "
                                "first under a budget)")
    depth: bool | None = _field(None, "a gate on each residual block x + f(x) of the "
                                      "model, so that the search can remove blocks whole "
                                      "(unset: on when the search starts from its weights "
                                      "and the model has no attention layer)")
    input_shape: str | None = _field(None, "the model's input shape C,H,W (or D); unset: "
                                           "the data's")
    data: str = _field("fashion-mnist", "a dataset name, or a .npz / .csv file or image "
                                        "folder")
    data_root: str | None = _field(None, "folder with the dataset files (unset: the system "
                                         "copy)")
    data_options: dict = _field({}, 'e.g. teacher_widths for "teacher"')
    task: str = _field("classification", "what the model learns from the data")
    noise_sigma: float = _field(0.3, "denoising noise level")
    limit: int | None = _field(None, "cap the training set (val/test get limit // 5)")
    augment: str = _field("none", "batch augmentation (image inputs; search and fine-tune)")
    # ------------------------------------------------------------ the search
    epochs: int = _field(10, "epochs of the search (training the supernet)")
    batch_size: int = _field(128, "samples per step (search and fine-tune)")
    optimizer: str = _field("adabreg", "Bregman, proximal (proxsgd) or dense (sgd, adam)")
    lr: float = _field(1e-3, "learning rate of the search")
    lr_schedule: str = _field("constant", "learning-rate schedule of the search (per epoch)")
    dense_epochs: int | None = _field(None, "the first this many of the search's epochs train "
                                            "every unit with lam 0 (adabreg: Adam); then units "
                                            "are cut to the target from those weights (unset: "
                                            f"{DENSE_SHARE:.0%} of epochs under a budget without "
                                            "weights, unless start = sparse; else 0)")
    lam: float = _field(0.05, "regularization strength of unit / kernel / element groups")
    density: float = _field(0.2, "initial fraction of alive units (kernels, elements)")
    target_params: int | None = _field(None, "steer lam until the compact model has <= this "
                                             "many params")
    target_density: float | None = _field(None, "same, as a fraction of the supernet's "
                                                 "parameters")
    target_macs: float | None = _field(None, "steer lam until the compact model has <= this "
                                             "many MACs (<= 1: that fraction of the "
                                             "supernet's)")
    target_latency_ms: float | None = _field(None, "steer lam until the compact model's "
                                                   "median eager CPU latency at "
                                                   "latency_batch is <= this many ms")
    latency_batch: int = _field(1, "samples per forward pass that target_latency_ms times")
    keep: str | None = _field(None, "layers the search never cuts, comma-separated (e.g. "
                                    "fc1,conv1): kept at full width")
    min_keep: float = _field(0.0, "no searched layer below this fraction of its width "
                                  "(units the search dropped come back as zeros that the "
                                  "fine-tune trains)")
    round_to: int = _field(1, "widths of the compact model in multiples of this (e.g. 8): "
                              "extraction keeps more units, same function")
    weight_decay: float = _field(0.0, "sgd: coupled; adam / fine-tune: AdamW; Bregman: "
                                      "decoupled, unregularized groups only")
    # ------------------------------------------------------------ after the search
    select: str = _field("shrink", "how the final width is chosen: shrink on validation "
                                   "(archdisc.recipe.select), scale (the searched shape at "
                                   "sqrt(2) scales, each trained afresh: steadier, 2-3x "
                                   "slower), or none (what the search left)")
    finetune: int = _field(3, "epochs of plain Adam on the compact model afterwards")
    finetune_lr: float = _field(1e-3, "learning rate of the fine-tune")
    finetune_schedule: str = _field("constant", "fine-tune lr schedule (cosine: per step, "
                                                "to 0)")
    distill: float = _field(0.0, "fine-tune loss weight on the KL divergence to the outputs "
                                 "(temperature 4) of the starting model (start = weights) or "
                                 "the searched supernet; the rest on the labels")
    # ------------------------------------------------------------ how to run it
    seed: int = _field(0, "seeds the split, the initialisation and the data order")
    device: str = _field("auto", "where to train (auto: cuda when available)")
    loader_workers: int = _field(0, "DataLoader processes for datasets not held in memory "
                                    "(speed only: not part of the run's hash)")
    # ------------------------------------------------------------ expert: the optimizer
    lam_edge: float | None = _field(None, "strength on candidate-edge gates (None: lam)",
                                    expert=True)
    lam_layers: dict = _field({}, "node -> factor on lam (e.g. fc2 = 0.5)", expert=True)
    lam_warmup: float = _field(0.0, "epochs over which lam ramps linearly from 0 to lam",
                               expert=True)
    group_mode: str = _field("unit", "one regularized group: a unit, a conv kernel, an "
                                     "element", expert=True)
    group_weight: str = _field("auto", "unit group weight: sqrt_n (sqrt(fan-in)) | one | "
                                       "sqrt_alive (alive fan-in) | cost (what a unit costs "
                                       "in the budget's measure) | fisher (per unit: its "
                                       "Fisher importance per cost, from trained weights) | "
                                       "auto (from trained weights fisher, one with "
                                       "residual streams or dense epochs; else sqrt_n)",
                       expert=True)
    delta: float = _field(1.0, "Bregman / prox step scale (adabreg, linbreg)", expert=True)
    momentum: float = _field(0.9, "momentum of linbreg, proxsgd, sgd (adam / adabreg: betas)",
                             expert=True)
    fused: bool | None = _field(None, "the Bregman step as one torch.compile'd function: "
                                      "unset = on CUDA only; true also pays on CPU for long "
                                      "runs (first step compiles for 7-50 s); false: never",
                                expert=True)
    # ------------------------------------------------------------ expert: the lam controller
    target_tol: float = _field(0.1, "hold lam while params are in [(1 - tol) target, "
                                    "target]", expert=True)
    control_every: int = _field(50, "steps between two looks of the lam controller",
                                expert=True)
    # ------------------------------------------------------------ expert: the select stage
    select_steps: int = _field(100, "refit steps per shrink candidate (the first: 5x; scale "
                                    "trains each candidate 10x this)", expert=True)
    select_frac: float = _field(0.3, "fraction of a layer's units one shrink step removes",
                                expert=True)
    select_tol: float = _field(1.0, "keep the smallest model within this many standard "
                                    "errors of the best validation metric", expert=True)
    select_lr: float = _field(3e-3, "Adam learning rate of the shrink refits", expert=True)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Check names and types of ``d`` (e.g. read from TOML); the validated Config."""
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
        """Check every value and return the normalised config (numbers of the field's
        type, tables as plain data, the model's spec as its space, a canonical
        input_shape); ``self`` is left as it is. Raises ConfigError naming the field and
        what is allowed."""
        hints = typing.get_type_hints(type(self))
        c = dataclasses.replace(self, **{f.name: _check_type(f.name, getattr(self, f.name),
                                                             hints[f.name])
                                         for f in dataclasses.fields(self)})
        for name, allowed in CHOICES.items():
            if getattr(c, name) not in allowed:
                raise ConfigError(f"config field {name!r}: {getattr(c, name)!r} is not "
                                  f"allowed; choose one of {', '.join(allowed)}")
        if c.model is not None:
            c = _with_model(c)
        else:
            _check_space(c)
        _check_data(c)
        _check_numbers(c)
        return c

    def from_weights(self) -> bool:
        """Whether the search starts from the model's weights (``start``; auto: when
        ``weights`` is given, or the model is an instance given to run_discover)."""
        given = self.weights is not None or (self.model or "").startswith(PYTHON_DATA)
        return self.start == "weights" or (self.start == "auto" and given)

    def gated(self) -> bool | None:
        """Whether the model's residual blocks get a gate: ``depth``; unset, None (gated
        unless the model has attention layers: from_module's ``depth=None``) when the search
        starts from its weights (RESULTS.md 13, 14), else False."""
        if self.depth is not None:
            return self.depth
        return None if self.from_weights() else False

    def dense(self) -> int:
        """The search's dense epochs: ``dense_epochs``; unset, ``DENSE_SHARE`` of the epochs
        (at least one left for the cuts) under a budget when the search starts neither from
        weights nor sparse (``start``), else 0."""
        if self.dense_epochs is not None:
            return self.dense_epochs
        budget = any(getattr(self, n) is not None for n in BUDGETS)
        auto = (budget and self.start == "auto" and not self.from_weights()
                and self.optimizer in BREGMAN)
        return max(0, min(self.epochs - 1, round(DENSE_SHARE * self.epochs))) if auto else 0

    def anchored(self) -> bool:
        """Whether the search cuts units from trained weights with every unit alive: from
        the model's weights, or after dense epochs (:meth:`dense`)."""
        return self.from_weights() or self.dense() > 0

    # ---------------------------------------------------------------- output
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short digest of every field but loader_workers: runs with the same hash are
        the same run. Stable for an unchanged config within a version of archdisc (a
        field added or removed is a new hash for every config)."""
        d = self.to_dict()
        del d["loader_workers"]  # changes the speed, never the result
        for key, path in (("space_sha256", is_graph_file(self.space) and self.space),
                          ("weights_sha256", self.weights)):
            if path and Path(path).expanduser().is_file():  # an edited file: another run
                d[key] = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
        text = json.dumps(d, sort_keys=True)
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
                lines.append(f"{f.name} = {toml_value(v)}")
        for name in tables:
            lines += ["", f"[{name}]"]
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in getattr(self, name).items()]
        return "\n".join(lines) + "\n"


PYTHON_DATA = "python:"  # config.data / .model of a Dataset / module given to run_discover


def is_graph_file(space: str) -> bool:
    """Whether ``space`` names an ArchGraph JSON file rather than a registered space."""
    return isinstance(space, str) and space.lower().endswith(".json")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` -> (3, 32, 32); a ConfigError unless 1 to 3 integers >= 1."""
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise ConfigError(f"config field 'input_shape': {text!r} is not a shape; give the "
                          f"input of one sample as C,H,W (e.g. 3,32,32) or D (e.g. 784)")
    return shape


# ---------------------------------------------------------------------- validate's checks
def _with_model(c: Config) -> Config:
    """``c`` with its model's spec as the space (logs, report and study names show the
    model) and a canonical input_shape; a ConfigError for a malformed spec."""
    spec = c.model
    mod, sep, name = spec.partition(":")
    if not sep or not mod or not name or any(not p.isidentifier() for p in mod.split(".")) \
            or any(not p.isidentifier() for p in name.split(".")):
        raise ConfigError(f"config field 'model': {spec!r} is not package.module:callable; "
                          f"e.g. torchvision.models:resnet18")
    if c.space not in ("mlp", spec) or c.space_options:
        raise ConfigError(f"config field 'space': a model ({spec}) replaces the search "
                          f"space; give either --model or --space {c.space}, not both")
    shape = c.input_shape
    if shape is not None:
        shape = ",".join(map(str, parse_input_shape(shape)))
    return dataclasses.replace(c, space=spec, input_shape=shape)


def _check_space(c: Config):
    """A registered space or an existing graph file, and no model fields without a model."""
    if c.model_options or c.input_shape is not None or c.depth is not None:
        raise ConfigError("config field 'model_options' / 'input_shape' / 'depth': they "
                          "belong to 'model' (--model package.module:callable), which is "
                          "not set")
    if not is_graph_file(c.space):
        if c.space not in spaces():
            raise ConfigError(f"config field 'space': unknown search space {c.space!r}; "
                              f"available: {', '.join(spaces())}, or an ArchGraph .json "
                              f"file")
    elif not Path(c.space).expanduser().is_file():
        raise ConfigError(f"config field 'space': graph file {c.space!r} does not "
                          f"exist; give an ArchGraph JSON such as a run's supernet.json, "
                          f"or a built-in space: {', '.join(spaces())}")
    elif c.space_options:
        raise ConfigError(f"config field 'space_options': a graph file ({c.space}) "
                          f"takes no options; edit the file instead")


def _check_data(c: Config):
    known = available_datasets()
    if _dataset_key(c.data) not in {_dataset_key(k) for k in known} and \
            not is_user_data(c.data) and not c.data.startswith(PYTHON_DATA):
        raise ConfigError(f"config field 'data': unknown dataset {c.data!r}; "
                          f"available: {', '.join(known)}, or a .npz / .csv file or an "
                          f"image folder")


def _check_numbers(c: Config):
    _require(0 <= c.seed < 2**63, "seed", "an integer in 0..2**63-1")
    _require(c.epochs >= 1, "epochs", "an integer >= 1")
    _require(c.batch_size >= 1, "batch_size", "an integer >= 1")
    _require(c.fused in (None, True, False), "fused", "true or false (or unset)")
    _require(c.loader_workers >= 0, "loader_workers",
             "an integer >= 0 (0: load in this process)")
    _require(c.limit is None or c.limit >= 1, "limit", "an integer >= 1 (or unset)")
    _require(c.finetune >= 0, "finetune", "an integer >= 0")
    for name in ("lr", "delta", "finetune_lr"):
        _require(0 < getattr(c, name) < math.inf, name, "a finite number > 0")
    for name in ("lam", "lam_edge", "noise_sigma"):
        v = getattr(c, name)
        _require(v is None or 0 <= v < math.inf, name, "a finite number >= 0")
    _require(0 <= c.weight_decay < math.inf, "weight_decay", "a finite number >= 0")
    _require(0 <= c.momentum < 1, "momentum", "a number in [0, 1)")
    _require(0 <= c.lam_warmup < math.inf, "lam_warmup", "a finite number of epochs >= 0")
    _require(c.target_params is None or c.target_params >= 1, "target_params",
             "an integer >= 1 (or unset)")
    _require(c.target_density is None or 0 < c.target_density <= 1,
             "target_density", "a number in (0, 1] (or unset)")
    budgets = [n for n in BUDGETS if getattr(c, n) is not None]
    _require(len(budgets) <= 1, budgets[0] if budgets else "",
             f"the only budget ({' and '.join(budgets)} are set: give one)")
    _require(c.target_macs is None or 0 < c.target_macs < math.inf, "target_macs",
             "a number > 0: a fraction <= 1 of the supernet's MACs, or a count")
    _require(c.target_latency_ms is None or 0 < c.target_latency_ms < math.inf,
             "target_latency_ms", "a number of milliseconds > 0 (or unset)")
    _require(c.latency_batch >= 1, "latency_batch", "an integer >= 1")
    _require(0 <= c.distill <= 1, "distill", "a number in [0, 1]")
    _require(0 <= c.min_keep < 1, "min_keep", "a number in [0, 1)")
    _require(c.round_to >= 1, "round_to", "an integer >= 1")
    _require(c.keep is None or all(n.strip() for n in c.keep.split(",")), "keep",
             "layer names separated by commas (e.g. fc1,conv1), or unset")
    _require(c.weights is None or c.model is not None, "weights",
             "unset without --model (weights belong to a model; a space starts sparse)")
    _require(c.start != "weights" or c.model is not None, "start",
             '"sparse" or "auto" for a built-in space (it has no trained weights)')
    _require(c.dense_epochs is None or 0 <= c.dense_epochs < c.epochs, "dense_epochs",
             f"an integer in 0..{c.epochs - 1} (epochs - 1: the cuts need an epoch after it)")
    _require(not c.dense_epochs or (c.start != "sparse" and c.optimizer in BREGMAN),
             "dense_epochs", "0 with start = \"sparse\" or a dense optimizer (sgd, adam)")
    _require(0 < c.target_tol < 1, "target_tol", "a number in (0, 1)")
    _require(c.control_every >= 1, "control_every", "an integer >= 1 (steps)")
    for k, v in c.lam_layers.items():
        _require(isinstance(v, (int, float)) and not isinstance(v, bool)
                 and 0 <= v < math.inf, "lam_layers",
                 f"a table node = factor >= 0, got {k} = {v!r}")
    if budgets and c.optimizer not in BREGMAN:
        raise ConfigError(f"config field {budgets[0]!r}: needs a "
                          f"regularized optimizer (adabreg, linbreg, proxsgd), not "
                          f"{c.optimizer!r}")
    _require(0 < c.density <= 1, "density", "a number in (0, 1]")
    _require(c.select_steps >= 1, "select_steps", "an integer >= 1")
    _require(0 < c.select_frac < 1, "select_frac", "a number in (0, 1)")
    _require(0 <= c.select_tol < math.inf, "select_tol", "a finite number >= 0")
    _require(0 < c.select_lr < math.inf, "select_lr", "a finite number > 0")


def _require(ok, name, what):
    if not ok:
        raise ConfigError(f"config field {name!r}: must be {what}")


def _dataset_key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def load_config(path=None, overrides: dict | None = None) -> Config:
    """Read a TOML config file (optional) and apply ``overrides`` (field -> value).

    ``space_options`` / ``data_options`` / ``model_options`` overrides are merged into the
    file's tables.
    """
    d = read_toml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if key in ("space_options", "data_options", "model_options") and \
                isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return Config.from_dict(d)


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
        want = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                dict: "a table (key = value pairs)"}[typ]
        raise ConfigError(f"config field {name!r}: expected {want}, got {value!r} "
                          f"({type(value).__name__})")
    return value
