"""Export a compiled model: safetensors + graph JSON, TorchScript, ONNX; each verified.

:func:`export` writes every requested format into ``out_dir`` with a dynamic batch
dimension and checks it against the PyTorch model (max |Δ| ≤ ``atol`` on random inputs
of two batch sizes, reloaded from what was written) *before* the file takes its final
name; a mismatch raises :class:`ExportError` and leaves no file behind.

=============  ====================================  =================================
format         files                                 load with
=============  ====================================  =================================
safetensors    ``model.safetensors`` + ``model.json``  :func:`load` (archdisc)
torchscript    ``model.pt``                          ``torch.jit.load`` (torch only)
onnx           ``model.onnx``                        ``onnxruntime.InferenceSession``
pt2            ``model.pt2``                         ``torch.export.load`` (torch only;
                                                     verified in a process without archdisc)
=============  ====================================  =================================
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from archdisc.errors import ConfigError, ExportError, MissingFileError
from archdisc.deploy.rewrite import for_runtime
from archdisc.graph.compile import ArchNet, compile_graph
from archdisc.graph.archgraph import ArchGraph
from archdisc.recipe.rundir import verify_checksums
from archdisc.io import atomic_write_text, load_tensors, remove_stale_temps, save_tensors

FORMATS = ("safetensors", "torchscript", "onnx", "pt2")
SUFFIX = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx",
          "pt2": ".pt2"}
ONNX_OPSET = 17
VERIFY_BATCHES = (1, 7)


# ---------------------------------------------------------------------- loading
def _pair(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _load_pair(weights: Path, graph_json: Path, device="cpu") -> ArchNet:
    graph = ArchGraph.from_json(graph_json)
    _check_weights(weights, graph_json, graph)
    tensors, _ = load_tensors(weights)
    return compile_graph(graph, tensors).to(device).eval()


def _check_weights(weights: Path, graph_json: Path, graph: ArchGraph):
    """Names, shapes and dtypes in the file's header against what the graph needs, before
    anything is allocated (the model is built on the "meta" device: no memory)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            have = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                    for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
        raise ExportError(f"{weights}: not a readable safetensors file ({e}); it is "
                          f"truncated or damaged - save or export the model again") from None
    with torch.device("meta"):
        want = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
                for k, v in ArchNet(graph).state_dict().items()}
    short = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
             "int64": "I64"}
    for k in sorted(set(want) | set(have)):
        if k not in have:
            raise ExportError(f"{weights}: tensor {k!r} that {graph_json.name} needs is "
                              f"missing; the two files do not belong together")
        if k not in want:
            raise ExportError(f"{weights}: tensor {k!r} is not part of {graph_json.name}; "
                              f"the two files do not belong together")
        if have[k][0] != want[k][0]:
            raise ExportError(f"{weights}: tensor {k!r} has shape {list(have[k][0])} but "
                              f"{graph_json.name} needs {list(want[k][0])}; the graph or the "
                              f"weights were changed - save or export the model again")
        if have[k][1] != short.get(want[k][1], want[k][1]):
            raise ExportError(f"{weights}: tensor {k!r} is {have[k][1]}, expected "
                              f"{want[k][1]}")


def load(path, device="cpu") -> ArchNet:
    """The eval-mode ArchNet saved as ``<path>.safetensors`` + ``<path>.json``
    (``path`` with or without either suffix)."""
    weights, graph_json = _pair(path)
    for f in (weights, graph_json):
        if not f.exists():
            raise MissingFileError(f"{f} not found: a saved model is a .safetensors file "
                                   "(weights) beside a .json file (its ArchGraph)")
    return _load_pair(weights, graph_json, device)


def save(net: ArchNet, path, graph: ArchGraph | None = None) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (state dict) and ``<path>.json`` (graph), atomically."""
    weights, graph_json = _pair(path)
    _write_safetensors(net, graph or net.graph, (weights, graph_json), (weights, graph_json), None)
    return weights, graph_json


# ---------------------------------------------------------------------- inputs
def _inputs(graph: ArchGraph, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    return graph.sample_inputs(batch, torch.Generator().manual_seed(seed))


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _numpy(outs) -> list[np.ndarray]:
    return [o.detach().cpu().numpy() if torch.is_tensor(o) else np.asarray(o)
            for o in _as_tuple(outs)]


# ---------------------------------------------------------------------- runners
# Each runner loads the written file the way a user would and returns its outputs.
def _run_safetensors(paths, inputs):
    net = _load_pair(*paths)
    with torch.no_grad():
        return _numpy(net(*inputs))


def _run_torchscript(paths, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
        module = torch.jit.load(str(paths[0]), map_location="cpu")
    with torch.no_grad():
        return _numpy(module(*inputs))


def _run_onnx(paths, inputs):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(paths[0]), providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feed)


_PT2_RUNNER = """
import sys
import torch
from safetensors.torch import load_file, save_file
program = torch.export.load(sys.argv[1])
xs = load_file(sys.argv[2])
with torch.no_grad():
    out = program.module()(*[xs[str(i)] for i in range(len(xs))])
out = out if isinstance(out, tuple) else (out,)
assert "archdisc" not in sys.modules
save_file({str(i): o.contiguous() for i, o in enumerate(out)}, sys.argv[3])
"""


def _run_pt2(paths, inputs):
    """Load and run the program in a fresh Python process that never imports archdisc."""
    with tempfile.TemporaryDirectory() as tmp:
        xs, ys = Path(tmp, "in.safetensors"), Path(tmp, "out.safetensors")
        save_file({str(i): x.contiguous() for i, x in enumerate(inputs)}, str(xs))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-c", _PT2_RUNNER, str(paths[0]), str(xs),
                               str(ys)], capture_output=True, text=True, cwd=tmp, env=env)
        if done.returncode:
            raise ExportError(f"the torch.export program does not load or run without "
                              f"archdisc: {done.stderr.strip().splitlines()[-1]}")
        out = load_file(str(ys))
        return [out[str(i)].numpy() for i in range(len(out))]


RUNNERS = {"safetensors": _run_safetensors, "torchscript": _run_torchscript,
           "onnx": _run_onnx, "pt2": _run_pt2}


# ---------------------------------------------------------------------- writers
def _write_safetensors(net, graph, tmp_paths, finals, example):
    save_tensors(tmp_paths[0], net.state_dict(),
                 metadata={"format": "archdisc-model", "graph": finals[1].name})
    atomic_write_text(tmp_paths[1], graph.to_json())


def _write_torchscript(net, graph, tmp_paths, finals, example):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(tmp_paths[0]))


def _write_onnx(net, graph, tmp_paths, finals, example):
    import onnx

    names_in, names_out = graph.input_nodes(), graph.output_nodes()
    dynamic = {n: {0: "batch"} for n in names_in + names_out}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is noisy
        torch.onnx.export(net, example, str(tmp_paths[0]), input_names=names_in,
                          output_names=names_out, dynamic_axes=dynamic,
                          opset_version=ONNX_OPSET, dynamo=False)
    onnx.checker.check_model(onnx.load(str(tmp_paths[0])))


def _write_pt2(net, graph, tmp_paths, finals, example):
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(  # forward(*xs): one spec per input, in one tuple
            net, example, dynamic_shapes=(tuple({0: batch} for _ in example),))
    torch.export.save(program, str(tmp_paths[0]))


WRITERS = {"safetensors": _write_safetensors, "torchscript": _write_torchscript,
           "onnx": _write_onnx, "pt2": _write_pt2}


# ---------------------------------------------------------------------- export
def _tmp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=".tmp" + path.suffix)  # torch.export wants .pt2 last
    os.close(fd)
    return Path(tmp)


def _publish(tmp: Path, final: Path):
    """Give ``tmp`` the usual permissions (mkstemp makes it private), rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, final)


def _max_diff(fmt, ref: list[np.ndarray], got: list[np.ndarray], batch: int) -> float:
    if len(ref) != len(got):
        raise ExportError(f"{fmt} export gives {len(got)} outputs, the model {len(ref)}")
    worst = 0.0
    for r, o in zip(ref, got):
        o = np.asarray(o)
        if r.shape != o.shape:
            raise ExportError(f"{fmt} export gives an output of shape {o.shape} at batch "
                              f"{batch}, the model {r.shape} (is the batch dimension dynamic?)")
        d = float(np.max(np.abs(r.astype(np.float64) - o.astype(np.float64)), initial=0.0))
        worst = max(worst, d if np.isfinite(d) else float("inf"))
    return worst


def export(net: ArchNet, graph: ArchGraph | None, out_dir, formats=FORMATS,
           example_input=None, atol: float = 1e-4, name: str = "model",
           runtime_form: bool = False) -> dict[str, Path]:
    """Write ``net`` in each of ``formats`` into ``out_dir`` and verify every file.

    ``graph`` defaults to ``net.graph``. ``example_input`` (a tensor or a tuple, one per
    input node) is used for tracing; by default random inputs of the graph's shapes.
    Each written file is reloaded and compared with ``net`` in eval mode on random
    inputs of batch sizes 1 and 7 (and ``example_input``); a max |Δ| above ``atol``
    (relative to the largest output when that exceeds 1: float32 rounding grows with the
    values) raises :class:`ExportError` naming the format. Returns ``{format: path}``; the
    safetensors weights have their graph beside them as ``<name>.json``. With
    ``runtime_form``, the TorchScript and ONNX files hold :func:`archdisc.deploy.rewrite.for_runtime`'s
    form of ``net`` (sums without gathers, channels padded to the CPU's conv block), checked
    against ``net`` itself like every file.
    """
    graph = net.graph if graph is None else graph
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}; choose from {FORMATS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir, name)  # left by an export killed midway
    example = tuple(x.detach().cpu() for x in _as_tuple(example_input)) \
        if example_input is not None else _inputs(graph, 2, 0)
    checks = [_inputs(graph, b, 1 + b) for b in VERIFY_BATCHES]
    if example_input is not None:
        checks.append(example)

    net = copy.deepcopy(net).cpu().eval()  # exports are CPU models; the caller's is untouched
    with torch.no_grad():
        refs = [_numpy(net(*x)) for x in checks]
    written = {}
    for fmt in formats:
        finals = [out_dir / (name + SUFFIX[fmt])]
        if fmt == "safetensors":
            finals.append(out_dir / (name + ".json"))
        tmps = [_tmp_beside(p) for p in finals]
        try:
            try:
                model = net
                if runtime_form and fmt in ("torchscript", "onnx"):
                    model = for_runtime(net, fmt)
                WRITERS[fmt](model, graph, tmps, finals, example)
            except Exception as e:
                raise ExportError(f"{fmt} export failed: {type(e).__name__}: {e}") from e
            for x, ref in zip(checks, refs):
                try:
                    outs = RUNNERS[fmt](tmps, x)
                except Exception as e:
                    raise ExportError(f"{fmt} export was written but cannot be run: "
                                      f"{type(e).__name__}: {e}") from e
                diff = _max_diff(fmt, ref, outs, len(x[0]))
                tol = atol * max([1.0] + [float(np.abs(r).max(initial=0)) for r in ref])
                if not diff <= tol:
                    raise ExportError(f"{fmt} export does not reproduce the model: "
                                      f"max |Δ| = {diff:.3g} > {tol:.3g} (atol {atol:g} "
                                      f"times the largest output, at least 1) at batch "
                                      f"{len(x[0])}")
            for tmp, final in zip(tmps, finals):
                _publish(tmp, final)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        written[fmt] = finals[0]
    return written


# ---------------------------------------------------------------------- CLI entry
def export_run(run_dir, formats=FORMATS) -> dict[str, Path]:
    """Export a run's discovered model (``RUN/compact.safetensors`` + ``.json``) into
    ``RUN/export/`` as ``model.*``, TorchScript and ONNX in their deployment form;
    returns ``{format: path}``."""
    run = Path(run_dir)
    verify_checksums(run, ("compact.safetensors", "compact.json"))
    net = load(run / "compact")
    return export(net, net.graph, run / "export", formats, runtime_form=True)
