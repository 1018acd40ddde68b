"""Every error archdisc raises on bad input is an ArchdiscError from archdisc/errors.py."""
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import archdisc
from archdisc import errors
from archdisc.deploy import deploy
from archdisc.errors import ArchdiscError
from search_spaces import mlp, skip_mlp

PACKAGE = Path(archdisc.__file__).parent


def modules():
    yield archdisc
    for info in pkgutil.walk_packages(archdisc.__path__, "archdisc."):
        if info.name != "archdisc.__main__":
            yield importlib.import_module(info.name)


def test_every_public_exception_class_is_an_archdisc_error_in_errors_py():
    found = []
    for mod in modules():
        for name, cls in vars(mod).items():
            if inspect.isclass(cls) and issubclass(cls, BaseException) and \
                    cls.__module__ == mod.__name__ and not name.startswith("_"):
                found.append(cls)
                assert mod is errors, f"{mod.__name__}.{name}: define it in archdisc/errors.py"
                assert issubclass(cls, ArchdiscError), f"{name} must derive from ArchdiscError"
    assert len(found) >= 8  # the walk saw errors.py's classes


def test_no_bare_builtin_error_is_raised():
    """Bad input gets an ArchdiscError naming the field (a ConfigError is a ValueError
    for callers that catch that)."""
    bare = re.compile(r"raise (ValueError|TypeError|FileNotFoundError)\(")
    hits = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if bare.search(line)]
    assert not hits, hits


@pytest.mark.parametrize("call, field", [
    (lambda: archdisc.param_groups(archdisc.compile_graph(mlp()), mode="x"), "mode"),
    (lambda: archdisc.sparse_init(archdisc.compile_graph(mlp()), density=2), "density"),
    (lambda: archdisc.extract(archdisc.compile_graph(mlp()), round_to=0), "round_to"),
    (lambda: deploy(archdisc.compile_graph(skip_mlp(blocks=2, width=8, in_shape=(8,))),
                    pad_to=0), "pad_to"),
])
def test_bad_arguments_of_the_public_api(call, field):
    torch.manual_seed(0)
    with pytest.raises(ArchdiscError, match=field):
        call()
