"""Check that a compact model computes its supernet's function, node by node."""
from __future__ import annotations

import copy

import torch

from archdisc.errors import ExtractionError
from archdisc.graph.compile import ArchNet


@torch.no_grad()
def verify_equivalent(net: ArchNet, compact: ArchNet, inputs=None, atol: float = 1e-5,
                      mapping: dict | None = None) -> float:
    """Check that ``compact`` computes ``net``'s eval-mode function; return the max |diff|.

    ``mapping`` (what :func:`extract` uses) maps a compact node to ``(supernet node, kept
    unit indices)`` so that every node is compared and the first one that diverges is
    named; without it only the outputs are compared. Both models' train/eval modes are
    restored afterwards. A float32 difference beyond ``atol`` (relative to each node's
    scale) is checked again in float64 copies: a softmax over large attention logits can
    amplify rounding alone past it; a removed unit that mattered fails in both.
    """
    xs = _inputs(net, inputs)
    worst, failure = _compare(net, compact, xs, atol, mapping)
    if failure is not None and xs[0].dtype in (torch.float32, torch.long):  # rounding?
        double = [copy.deepcopy(m).double() for m in (net, compact)]
        worst, failure = _compare(*double, [x.double() if x.is_floating_point() else x
                                            for x in xs], atol, mapping)
    if failure is not None:
        raise ExtractionError(failure)
    return worst


def _compare(net, compact, xs, atol, mapping):
    """(max |diff| over the compared nodes, the first divergence as text or None)."""
    modes = [(m, m.training) for m in (*net.modules(), *compact.modules())]
    try:
        net.eval()
        compact.eval()
        ref, got = net.activations(*xs), compact.activations(*xs)
    finally:
        for m, training in modes:
            m.training = training
    if mapping is None:
        mapping = {o: (o, None) for o in compact.output_names}
    worst = 0.0
    for n in compact.graph.order():
        if n not in mapping:
            continue
        src, idx = mapping[n]
        r = ref[src] if idx is None else ref[src].index_select(1, idx.to(ref[src].device))
        g = got[n]
        if r.shape != g.shape:
            raise ExtractionError(f"node {n!r}: compact shape {tuple(g.shape)} does not match "
                                  f"the supernet's kept units {tuple(r.shape)}")
        diff = float((r - g).abs().max()) if r.numel() else 0.0
        tol = atol * max(1.0, float(r.abs().max()) if r.numel() else 0.0)
        if not diff <= tol:  # also catches NaN
            where = "output" if n in compact.output_names else "node"
            return worst, (f"the compact model diverges from the supernet at {where} {n!r}: "
                           f"max |diff| = {diff:.3g} > {tol:.3g} (in {r.dtype})")
        worst = max(worst, diff)
    return worst, None


def _inputs(net: ArchNet, inputs, batch: int = 4) -> tuple:
    if inputs is not None:
        return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    param = next(iter(net.parameters()), None)
    kw = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    return tuple(x.to(**kw) if x.is_floating_point() else x.to(kw.get("device"))
                 for x in net.graph.sample_inputs(batch, torch.Generator().manual_seed(0)))
