"""Pickle-free optimizer state: flat tensors (for safetensors) + a JSON-able dict.

Works for the archdisc optimizers (regularizers become their config dicts) and for any
torch optimizer whose param groups hold JSON-able values.
"""
from __future__ import annotations

import json

import torch
from torch import Tensor
from torch.optim import Optimizer

from archdisc.errors import ConfigError
from archdisc.optim.regularizers import Regularizer

__all__ = ["optimizer_state_to_tensors", "optimizer_state_from_tensors"]


_FORMAT = "archdisc.optimizer_state"
_VERSION = 1


def optimizer_state_to_tensors(opt: Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split ``opt.state_dict()`` into flat tensors and a JSON-able dict.

    Tensors are named ``state.<param index>.<key>`` (contiguous copies, ready for
    ``safetensors.torch.save_file``); the dict holds the format, the optimizer class
    name, the param groups (hyper-parameters and regularizer configs) and non-tensor
    state such as step counts. Works for any optimizer whose param groups hold
    JSON-able values (after regularizers are turned into configs).
    """
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().clone(
                    memory_format=torch.contiguous_format)
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = []
    for g in sd["param_groups"]:
        g = {k: (v.to_config() if isinstance(v, Regularizer) else
                 list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        groups.append(g)
    meta = {"format": _FORMAT, "version": _VERSION, "optimizer": type(opt).__name__,
            "param_groups": groups, "state": scalars}
    try:
        json.dumps(meta)
    except TypeError as e:
        raise ConfigError(f"optimizer state is not JSON-serialisable ({e}); keep param "
                          f"group values to numbers, strings, lists and dicts") from None
    return tensors, meta


def optimizer_state_from_tensors(opt: Optimizer, tensors: dict[str, Tensor],
                                 meta: dict) -> None:
    """Restore what :func:`optimizer_state_to_tensors` produced into ``opt``, a freshly
    built optimizer of the same class over the same parameters (same groups, order).
    A state that does not fit ``opt`` raises :class:`~archdisc.errors.ConfigError`."""
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ConfigError(f"not an archdisc optimizer state (format {meta.get('format')!r}, "
                          f"version {meta.get('version')!r}; expected {_FORMAT!r} v{_VERSION})")
    if meta["optimizer"] != type(opt).__name__:
        raise ConfigError(f"state was saved from a {meta['optimizer']}, cannot load it into "
                          f"a {type(opt).__name__}")
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise ConfigError(f"unexpected tensor name {name!r} (expected state.<index>.<key>)")
        _, idx, key = parts
        state.setdefault(int(idx), {})[key] = t.clone()
    for idx, values in meta["state"].items():
        state.setdefault(int(idx), {}).update(values)
    if len(meta["param_groups"]) != len(opt.param_groups):
        raise ConfigError(f"saved state has {len(meta['param_groups'])} param groups, the "
                          f"optimizer has {len(opt.param_groups)}")
    groups = []
    for saved, current in zip(meta["param_groups"], opt.param_groups):
        groups.append({k: (tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list)
                           else v) for k, v in saved.items()})
    opt.load_state_dict({"state": state, "param_groups": groups})
