"""Measured latency: the median wall time of one forward pass on CPU, in the eager model
and in the files ``archdisc export`` writes (TorchScript, onnxruntime), with torch's and
onnxruntime's threads set to the same number."""
from __future__ import annotations

import copy
import statistics
import time
import warnings
from pathlib import Path

import torch

from archdisc.errors import ConfigError

__all__ = ["BATCHES", "median_ms", "eager_ms", "eager_table", "file_ms"]

BATCHES = (1, 64)  # latency of one sample, and of a batch


def median_ms(fn, seconds: float = 0.3, least: int = 5, most: int = 50) -> float:
    """The median of ``fn()``'s wall time in ms over at least ``least`` calls (after two
    warm-up calls), more while the total stays under ``seconds``, at most ``most``."""
    fn(), fn()
    times = []
    while len(times) < least or (sum(times) < seconds * 1e3 and len(times) < most):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _inputs(graph, batch: int) -> tuple[torch.Tensor, ...]:
    return graph.sample_inputs(batch, torch.Generator().manual_seed(0))


@torch.no_grad()
def eager_ms(model: torch.nn.Module, graph, batch: int) -> float:
    """``model``'s eager latency (eval mode, CPU) on ``batch`` random inputs of ``graph``
    (an ArchGraph: its input shapes; token ids for an embedding)."""
    model = model.eval()
    xs = _inputs(graph, batch)
    return median_ms(lambda: model(*xs))


def file_ms(fmt: str, path: Path, graph, batch: int) -> float:
    """The latency of an exported ``torchscript`` or ``onnx`` file of ``graph`` (onnxruntime
    on CPU, as many intra-op threads as torch uses)."""
    xs = _inputs(graph, batch)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
            module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return median_ms(lambda: module(*xs))
    if fmt == "onnx":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)}
        return median_ms(lambda: sess.run(None, feed))
    raise ConfigError(f"no latency for format {fmt!r}: torchscript or onnx")


def eager_table(models: dict) -> dict:
    """``{"threads", "batches", "eager": {name: [ms per batch size]}}`` for ``models``
    (ArchNets, copied to CPU when they are elsewhere)."""
    rows = {}
    for name, m in models.items():
        cpu = m if all(p.device.type == "cpu" for p in m.parameters()) else \
            copy.deepcopy(m).cpu()
        rows[name] = [round(eager_ms(cpu, m.graph, b), 3) for b in BATCHES]
    return {"threads": torch.get_num_threads(), "batches": list(BATCHES), "eager": rows}
