"""Files: atomic writes (a crash or kill never leaves a half-written artifact behind),
safetensors with JSON metadata, and TOML in and out."""
from __future__ import annotations

import json
import math
import os
import tempfile
import tomllib
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save

from archdisc.errors import ConfigError


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder, prefix: str = ""):
    """Delete the hidden temporary files (``.<prefix>*.tmp`` or ``.<prefix>*.tmp.<ext>``)
    that a writer killed midway (kill -9, power loss) left in ``folder``; a finished write
    never leaves one."""
    folder = Path(folder)
    if folder.is_dir():
        for pattern in (f".{prefix}*.tmp", f".{prefix}*.tmp.*"):
            for tmp in folder.glob(pattern):
                tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes):
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def save_tensors(path, tensors: dict, metadata: dict | None = None):
    """Write tensors as safetensors, atomically; ``metadata`` is a JSON-able dict."""

    meta = {"json": json.dumps(metadata)} if metadata is not None else None
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, blob)


def load_tensors(path):
    """Read a safetensors file written by :func:`save_tensors`: (tensors, metadata)."""

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get("json")
    return tensors, (json.loads(meta) if meta else None)


# ---------------------------------------------------------------------- TOML
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


def toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else "inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} to TOML")
