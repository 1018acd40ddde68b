"""The run config: every field with its meaning, TOML in and out, validation.

``Config`` is a dataclass; the comment after each field is its documentation. Bad values
raise :class:`~archdisc.errors.ConfigError` naming the field and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from archdisc.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "read_toml", "field_docs", "CHOICES",
           "BREGMAN"]

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
    "select": ("shrink", "scale", "none"),
}
BREGMAN = ("adabreg", "linbreg", "proxsgd")
UNHASHED_WHEN_UNSET = ("model", "model_options", "input_shape", "fused")


@dataclass
class Config:
    """Everything that defines a discover run. ``None`` means "not set"."""
    space: str = "mlp"                 # the search space (see `archdisc spaces`), or an
                                       # ArchGraph .json file (e.g. a run's supernet.json)
    space_options: dict = field(default_factory=dict)  # keyword arguments of the space
    model: str | None = None           # package.module:callable building a torch nn.Module,
                                       # imported with archdisc.from_module as the supernet
                                       # (instead of space; space then records it too)
    model_options: dict = field(default_factory=dict)  # keyword arguments of the model callable
    input_shape: str | None = None     # the model's input shape C,H,W (or D); unset: the data's
    data: str = "fashion-mnist"        # a dataset name, or a .npz / .csv file or image folder
    data_root: str | None = None       # folder with the dataset files (unset: the system copy)
    data_options: dict = field(default_factory=dict)   # e.g. teacher_widths for "teacher"
    task: str = "classification"       # what the model learns from the data
    limit: int | None = None           # cap the training set (val/test get limit // 5)
    seed: int = 0                      # seeds the split, the initialisation and the data order
    epochs: int = 10                   # epochs of the search (training the supernet)
    batch_size: int = 128              # samples per step (search and fine-tune)
    optimizer: str = "adabreg"         # Bregman, proximal (proxsgd) or dense (sgd, adam)
    lr: float = 1e-3                   # learning rate of the search
    lam: float = 0.05                  # regularization strength of unit / kernel / element groups
    lam_edge: float | None = None      # strength on candidate-edge gates (None: lam)
    group_mode: str = "unit"           # one regularized group: a unit, a conv kernel, an element
    delta: float = 1.0                 # Bregman / prox step scale (adabreg, linbreg)
    fused: bool | None = None          # the Bregman step as one torch.compile'd function:
                                       # unset = on CUDA only; true also pays on CPU for long
                                       # runs (first step compiles for 7-50 s); false: never
    momentum: float = 0.9              # momentum of linbreg, proxsgd, sgd (adam / adabreg: betas)
    density: float = 0.2               # initial fraction of alive units (kernels, elements)
    lr_schedule: str = "constant"      # learning-rate schedule of the search (per epoch)
    augment: str = "none"              # batch augmentation (image inputs; search and fine-tune)
    weight_decay: float = 0.0          # sgd: coupled; adam / fine-tune: AdamW; Bregman:
                                       # decoupled, unregularized groups only
    device: str = "auto"               # where to train (auto: cuda when available)
    loader_workers: int = 0            # DataLoader processes for datasets not held in
                                       # memory (speed only: not part of the run's hash)
    finetune: int = 3                  # epochs of plain Adam on the compact model afterwards
    finetune_lr: float = 1e-3          # learning rate of the fine-tune
    finetune_schedule: str = "constant"  # fine-tune lr schedule (cosine: per step, to 0)
    lam_warmup: float = 0.0            # epochs over which lam ramps linearly from 0 to lam
    lam_layers: dict = field(default_factory=dict)  # node -> factor on lam (e.g. fc2 = 0.5)
    group_weight: str = "sqrt_n"       # unit group weight: sqrt(fan-in) | one | sqrt(alive fan-in)
    target_params: int | None = None   # steer lam until the compact model has <= this many params
    target_density: float | None = None  # same, as a fraction of the supernet's parameters
    target_tol: float = 0.1            # hold lam while params are in [(1 - tol) target, target]
    control_every: int = 50            # steps between two looks of the lam controller
    noise_sigma: float = 0.3           # denoising noise level
    select: str = "shrink"             # how the final width is chosen: shrink on validation
                                       # (archdisc.recipe.select), scale (the searched shape at
                                       # sqrt(2) scales, each trained afresh: steadier,
                                       # 2-3x slower), or none (what the search left)
    select_steps: int = 100            # refit steps per shrink candidate (the first: 5x;
                                       # scale trains each candidate 10x this)
    select_frac: float = 0.3           # fraction of a layer's units one shrink step removes
    select_tol: float = 1.0            # keep the smallest model within this many standard
                                       # errors of the best validation metric
    select_lr: float = 3e-3            # Adam learning rate of the shrink refits
    select_sweep: bool = False         # shrink by one power-of-two width sweep per layer
                                       # (each cut from the same refit model, equal refits)
                                       # and a joint check, not by the greedy 30% steps
    select_fresh: bool = False         # with select_sweep: train every candidate width from
                                       # a fresh init (10 x select_steps), not warm-started

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
        from archdisc.spaces import spaces
        if self.model is not None:
            _check_model(self)
        elif self.model_options or self.input_shape is not None:
            raise ConfigError("config field 'model_options' / 'input_shape': they belong to "
                              "'model' (--model package.module:callable), which is not set")
        elif self.space not in spaces() and not is_graph_file(self.space):
            raise ConfigError(f"config field 'space': unknown search space {self.space!r}; "
                              f"available: {', '.join(spaces())}, or an ArchGraph .json file")
        elif is_graph_file(self.space) and not Path(self.space).expanduser().is_file():
            raise ConfigError(f"config field 'space': graph file {self.space!r} does not "
                              f"exist; give an ArchGraph JSON such as a run's supernet.json, "
                              f"or a built-in space: {', '.join(spaces())}")
        elif is_graph_file(self.space) and self.space_options:
            raise ConfigError(f"config field 'space_options': a graph file ({self.space}) "
                              f"takes no options; edit the file instead")
        from archdisc.data.core import available_datasets, is_user_data
        known = available_datasets()
        if _dataset_key(self.data) not in {_dataset_key(k) for k in known} and \
                not is_user_data(self.data) and not self.data.startswith(PYTHON_DATA):
            raise ConfigError(f"config field 'data': unknown dataset {self.data!r}; "
                              f"available: {', '.join(known)}, or a .npz / .csv file or an "
                              f"image folder")
        _require(0 <= self.seed < 2**63, "seed", "an integer in 0..2**63-1")
        _require(self.epochs >= 1, "epochs", "an integer >= 1")
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1")
        _require(self.fused in (None, True, False), "fused", "true or false (or unset)")
        _require(self.loader_workers >= 0, "loader_workers",
                 "an integer >= 0 (0: load in this process)")
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
        _require(self.select_steps >= 1, "select_steps", "an integer >= 1")
        _require(0 < self.select_frac < 1, "select_frac", "a number in (0, 1)")
        _require(0 <= self.select_tol < math.inf, "select_tol", "a finite number >= 0")
        _require(0 < self.select_lr < math.inf, "select_lr", "a finite number > 0")
        _require(not (self.select_sweep or self.select_fresh) or self.select == "shrink",
                 "select_sweep", 'false with select = "scale" or "none" (it is a shrink rule)')
        return self

    # ---------------------------------------------------------------- output
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short digest of every field: runs with the same hash are the same run."""
        d = self.to_dict()
        for name in UNHASHED_WHEN_UNSET:  # fields added later: old runs keep their hash
            if d[name] is None or d[name] == {}:
                del d[name]
        del d["loader_workers"]  # changes the speed, never the result
        if is_graph_file(self.space) and Path(self.space).expanduser().is_file():
            d["space_sha256"] = hashlib.sha256(Path(self.space).expanduser().read_bytes()
                                               ).hexdigest()  # an edited file: another run
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
                lines.append(f"{f.name} = {_toml_value(v)}")
        for name in tables:
            lines += ["", f"[{name}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in getattr(self, name).items()]
        return "\n".join(lines) + "\n"


PYTHON_DATA = "python:"  # config.data of a Dataset handed to run_discover(data=...)


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


def _check_model(c: Config):
    spec = c.model
    mod, sep, name = spec.partition(":")
    if not sep or not mod or not name or any(not p.isidentifier() for p in mod.split(".")) \
            or any(not p.isidentifier() for p in name.split(".")):
        raise ConfigError(f"config field 'model': {spec!r} is not package.module:callable; "
                          f"e.g. torchvision.models:resnet18")
    if c.space not in ("mlp", spec) or c.space_options:
        raise ConfigError(f"config field 'space': a model ({spec}) replaces the search "
                          f"space; give either --model or --space {c.space}, not both")
    c.space = spec  # logs, report and study names show the model
    if c.input_shape is not None:
        c.input_shape = ",".join(map(str, parse_input_shape(c.input_shape)))


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


def read_toml(path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a folder; give a .toml file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not text; give a .toml file") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({e.strerror})") from None
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


def field_docs() -> dict[str, str]:
    """Each Config field's documentation: the comment after it in the class body (with
    its continuation lines), read from the source so that it is written only once."""
    import inspect
    import re
    docs, name = {}, None
    for line in inspect.getsource(Config).splitlines():
        m = re.match(r"    (\w+): [^=]+=.*?#\s?(.*)$", line)
        if m:
            name = m.group(1)
            docs[name] = m.group(2).strip()
        elif name and re.match(r"\s+#", line):
            docs[name] += " " + line.strip().lstrip("#").strip()
        else:
            name = None
    return docs
