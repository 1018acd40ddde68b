"""Bring your own supernet and data: a module (``--model pkg.mod:callable``), a graph file
(``--space my.json``) or a Python ``Dataset`` (``run_discover(config, out, data=...)``).

Every refusal is a :class:`~archdisc.errors.ConfigError` (or a
:class:`~archdisc.errors.DataError`) naming the config field and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset, Subset, TensorDataset

from archdisc.data import Data
from archdisc.data.user import split_indices
from archdisc.errors import ArchdiscError, ConfigError, DataError, GraphError
from archdisc.graph.archgraph import ArchGraph
from archdisc.graph.fx import from_module
from archdisc.recipe.config import PYTHON_DATA, Config, parse_input_shape

__all__ = ["model_net", "graph_file", "python_data", "python_model"]


# ---------------------------------------------------------------------- --model
def _import_callable(spec: str):
    mod_name, _, attr = spec.partition(":")
    cwd = os.getcwd()  # like `python -m`: modules in the current folder are importable
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"config field 'model': cannot import module {mod_name!r} ({e}); "
                          f"install the package, or run from the folder that holds it "
                          f"(or add that folder to PYTHONPATH)") from None
    except Exception as e:  # noqa: BLE001 - the user's module fails at import time
        raise ConfigError(f"config field 'model': importing {mod_name!r} raised "
                          f"{type(e).__name__}: {e}; fix that module") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"config field 'model': module {mod_name!r} has no {attr!r}"
                              f"{hint}; give package.module:callable, e.g. "
                              f"torchvision.models:resnet18")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"config field 'model': {spec} is a {type(obj).__name__}, not a "
                          f"callable that builds an nn.Module")
    return obj


def _load_weights(module: torch.nn.Module, config: Config):
    """Load ``config.weights`` (safetensors, or a torch.save'd state_dict read with
    weights_only: no code runs) into ``module``; a ConfigError naming the keys or shapes
    that do not fit."""
    path = Path(config.weights).expanduser()
    fix = (f"save the model's state_dict() (safetensors.torch.save_file or torch.save) for "
           f"{config.model} with the same --model-option values")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"config field 'weights': {str(path)!r} does not exist") from None
    except Exception as e:  # noqa: BLE001 - a damaged file or a pickle of objects
        raise ConfigError(f"config field 'weights': {path} cannot be read as weights "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {fix}") \
            from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that holds one
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ConfigError(f"config field 'weights': {path} holds no state_dict of tensors; "
                          f"{fix}")
    if state and all(k.startswith("module.") for k in state):  # saved from DDP
        state = {k[7:]: v for k, v in state.items()}
    own = module.state_dict()
    bad = [f"missing {k}" for k in own if k not in state]
    bad += [f"unexpected {k}" for k in state if k not in own]
    bad += [f"{k}: {list(state[k].shape)} in the file, {list(v.shape)} in the model"
            for k, v in own.items() if k in state and state[k].shape != v.shape]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ConfigError(f"config field 'weights': {path} does not fit {config.model}: "
                          f"{'; '.join(bad[:5])}{more}; {fix}")
    module.load_state_dict(state)


def python_model(module, config: Config) -> Config:
    """``config`` for a module instance handed to ``run_discover(model=...)``: its model is
    ``python:ClassName`` (config.toml records the class; a resume needs the module
    again), and the search starts from the module's weights unless ``start`` says not."""
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"model=: expected a torch.nn.Module instance, got "
                          f"{type(module).__name__}")
    if config.model is not None or config.model_options:
        raise ConfigError(f"model=: a module instance replaces config field 'model' "
                          f"({config.model}) and its model_options; give one of them")
    return dataclasses.replace(config, model=f"{PYTHON_DATA}{type(module).__name__}")


def model_net(config: Config, data, module=None):
    """Build ``config.model(**config.model_options)`` (or take ``module``, an instance
    given to ``run_discover(model=...)``), load ``config.weights`` into it (if set),
    import it with :func:`archdisc.from_module` on an example input of
    ``config.input_shape`` (default: the data's) and return the ArchNet (the module's
    weights; the search starts from them only when ``config.from_weights()``)."""
    spec = config.model
    if module is None and spec.startswith(PYTHON_DATA):
        raise ConfigError(f"config field 'model': {spec!r} was a module instance given to "
                          f"run_discover(model=...); pass it again (the command line "
                          f"cannot rebuild it)")
    opts = dict(config.model_options)
    if module is None:
        builder = _import_callable(spec)
        try:
            module = builder(**opts)
        except Exception as e:  # noqa: BLE001 - whatever the user's code raises
            raise ConfigError(f"config field 'model': {spec}(**{opts}) raised "
                              f"{type(e).__name__}: {e}; check model_options "
                              f"(--model-option KEY=VALUE)") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"config field 'model': {spec} returned {type(module).__name__}, "
                          f"not a torch.nn.Module")
    data_shape = tuple(int(s) for s in data.in_shape)
    shape = parse_input_shape(config.input_shape) if config.input_shape else data_shape
    if shape != data_shape:
        raise ConfigError(f"config field 'input_shape': {','.join(map(str, shape))} does "
                          f"not match the data's samples "
                          f"({','.join(map(str, data_shape))}); give "
                          f"--input-shape {','.join(map(str, data_shape))} or leave it unset")
    if config.weights is not None:
        _load_weights(module, config)
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(config.seed))
    if token_ids(data) and any(isinstance(m, torch.nn.Embedding) for m in module.modules()):
        example = torch.stack([data.train[i][0] for i in range(min(2, len(data.train)))])
    try:
        net = from_module(module, example, depth=config.gated())
    except ArchdiscError as e:
        raise ConfigError(f"config field 'model': {spec}: {e}") from None
    graph = net.graph
    shapes = graph.shapes()
    out = shapes[graph.output_nodes()[0]]
    want = data.out_dim
    if data.task == "classification" and list(out) != [*data.meta.get("label_shape", []),
                                                          want]:
        raise ConfigError(f"config field 'model_options': {spec} gives {list(out)} outputs "
                          f"per sample, but dataset {data.name!r} has {want} classes; pass "
                          f"the model's option for it, e.g. --model-option num_classes={want}")
    graph.graph["name"] = spec
    return net


# ---------------------------------------------------------------------- --space FILE.json
def graph_file(path) -> ArchGraph:
    """The ArchGraph saved in ``path`` (the format of a run's supernet.json / compact.json)."""
    p = Path(path).expanduser()
    fix = "give an ArchGraph JSON file such as a run's supernet.json, or a built-in space"
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config field 'space': graph file {str(p)!r} does not exist; "
                          f"{fix}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config field 'space': {p} is not JSON (not even text); "
                          f"{fix}") from None
    except OSError as e:
        raise ConfigError(f"config field 'space': graph file {str(p)!r} cannot be read "
                          f"({e.strerror}); {fix}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config field 'space': {p} is not JSON ({e}); {fix}") from None
    try:
        graph = ArchGraph.from_dict(d)
        if len(graph.input_nodes()) != 1 or len(graph.output_nodes()) != 1:
            raise GraphError("discover needs one input and one output node")
    except GraphError as e:
        raise ConfigError(f"config field 'space': {p} is not a usable ArchGraph: {e}; "
                          f"{fix}") from None
    return graph


# ---------------------------------------------------------------------- data=Dataset
def _item(dataset, i: int, where: str, shape=None):
    """Item ``i`` of ``dataset`` as (input, label), or a DataError naming it. The input is a
    float tensor, or int64 token ids as they are; the label an int, or a 1-D int tensor of
    one label per token (a language model's next tokens)."""
    item = dataset[i]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{where}: item {i} is {type(item).__name__}, not a pair "
                        f"(input, label)")
    x, y = item
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or
                                               x.dtype in (torch.uint8, torch.int64,
                                                           torch.int32)):
        hint = (" (add transforms.ToTensor() to the dataset)"
                if type(x).__module__.startswith("PIL") else "")
        raise DataError(f"{where}: item {i}'s input is {type(x).__name__}, not a numeric "
                        f"tensor{hint}")
    if shape is not None and tuple(x.shape) != shape:
        raise DataError(f"{where}: item {i}'s input has shape {list(x.shape)}, item 0's "
                        f"{list(shape)}; all inputs must have one shape (resize or crop "
                        f"them in the dataset's transform)")
    x = x if x.dtype == torch.int64 else x.float()
    if isinstance(y, torch.Tensor) and y.dim() == 1 and y.numel() > 1 and \
            not y.is_floating_point():
        return x, y.long()
    if isinstance(y, torch.Tensor) and y.numel() == 1:
        y = y.item() if not y.is_floating_point() else y
    if isinstance(y, np.generic) and np.issubdtype(y.dtype, np.integer):
        y = int(y)
    if isinstance(y, bool) or not isinstance(y, int):
        raise DataError(f"{where}: item {i}'s label is {y!r} ({type(y).__name__}); "
                        f"classification needs integer class labels")
    return x, y


def token_ids(data) -> bool:
    """Whether ``data``'s inputs are int64 (token ids, for a model reading them with an
    embedding; any other model gets them as floats: :func:`float_inputs`)."""
    return data.train[0][0].dtype == torch.int64


class _Floats(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x.float(), y


def float_inputs(data):
    """``data`` with float inputs (for a supernet whose input no embedding reads)."""
    def cast(split):
        if isinstance(split, TensorDataset):
            return TensorDataset(split.tensors[0].float(), *split.tensors[1:])
        return _Floats(split)
    return dataclasses.replace(data, train=cast(data.train), val=cast(data.val),
                               test=cast(data.test))


class _Checked(torch.utils.data.Dataset):
    """A user's Dataset whose items are (float tensor, int label), read on access: the
    training loop streams it through a DataLoader, so memory does not grow with it."""
    def __init__(self, dataset, where: str, shape):
        self.dataset, self.where, self.shape = dataset, where, shape

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return _item(self.dataset, i, self.where, self.shape)


def _scan(dataset, where: str):
    """Read every item once (checked, then dropped): (the dataset to stream, its input
    shape, its labels). In-memory TensorDatasets stay as they are (the fast path)."""
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(f"{where}: {type(dataset).__name__} has no len(); give a map-style "
                        f"torch.utils.data.Dataset") from None
    if n == 0:
        raise DataError(f"{where}: the dataset is empty")
    shape = tuple(_item(dataset, 0, where)[0].shape)
    labels = [np.asarray(_item(dataset, i, where, shape)[1]) for i in range(n)]
    if len({y.shape for y in labels}) > 1:
        raise DataError(f"{where}: labels of different shapes ({sorted({y.shape for y in labels})}"
                        f"); give one class per item, or one per token in every item")
    labels = np.asarray(labels, np.int64)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        x = x if x.dtype == torch.int64 else x.float()
        return TensorDataset(x, torch.from_numpy(labels)), shape, labels
    return _Checked(dataset, where, shape), shape, labels


def _take(dataset, idx: torch.Tensor):
    """The items ``idx`` of ``dataset``: still tensors for a TensorDataset, else a Subset."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, idx.tolist())


def python_data(data, config: Config):
    """A :class:`~archdisc.data.Data` from a ``torch.utils.data.Dataset`` (split into
    train / val / test by ``config.seed``: 10% validation, 10% test) or a tuple
    ``(train, val, test)`` of Datasets. Inputs are used as the Dataset gives them (its own
    transform is the preprocessing). Every item is checked once up front; then in-memory
    TensorDatasets are indexed directly and any other Dataset is streamed through a
    DataLoader (``config.loader_workers`` processes) in every epoch."""
    if config.task != "classification":
        raise ConfigError("config field 'task': a Python Dataset supports task = "
                          "\"classification\"")
    if isinstance(data, (tuple, list)):
        if len(data) != 3 or not all(isinstance(d, Dataset) for d in data):
            raise DataError(f"data=: give one Dataset or a tuple (train, val, test) of three "
                            f"Datasets, got a {type(data).__name__} of "
                            f"{[type(d).__name__ for d in data]}")
        name = type(data[0]).__name__
        scans = [_scan(d, f"data[{k}] ({s})")
                 for k, (d, s) in enumerate(zip(data, ("train", "val", "test")))]
        if len({sc[1] for sc in scans}) != 1:
            raise DataError(f"data=: train, val and test inputs differ in shape "
                            f"({[list(sc[1]) for sc in scans]})")
        splits = [sc[0] for sc in scans]
        if config.limit is not None and config.limit < len(splits[0]):
            splits[0] = _take(splits[0], torch.arange(config.limit))
        labels = np.concatenate([sc[2] for sc in scans])
        in_shape, first = scans[0][1], data[0]
    elif isinstance(data, Dataset):
        name = type(data).__name__
        whole, in_shape, labels = _scan(data, f"data= ({name})")
        if len(whole) < 3:
            raise DataError(f"data= ({name}): needs at least 3 items, got {len(whole)}")
        splits = [_take(whole, i) for i in split_indices(len(whole), config.seed, config.limit)]
        first = data
    else:
        raise DataError(f"data=: expected a torch.utils.data.Dataset or a tuple (train, val, "
                        f"test) of them, got {type(data).__name__}")
    if labels.min() < 0:
        raise DataError(f"data= ({name}): label {int(labels.min())} is negative; labels are "
                        f"class indices 0..C-1")
    classes = int(labels.max()) + 1
    declared = getattr(first, "classes", None)
    if isinstance(declared, (list, tuple)) and declared:
        if classes > len(declared):
            raise DataError(f"data= ({name}): label {classes - 1} is out of range: the "
                            f"dataset declares {len(declared)} classes (its .classes)")
        classes = len(declared)
    return Data(train=splits[0], val=splits[1], test=splits[2], in_shape=in_shape,
                out_dim=classes, task="classification", metric="accuracy",
                name=f"{PYTHON_DATA}{name}",
                meta={"seed": config.seed, "source": f"{PYTHON_DATA}{name}",
                      "standardised": False, "label_shape": list(labels.shape[1:])})
