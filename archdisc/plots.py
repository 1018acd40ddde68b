"""Plots of a run with matplotlib (no pyplot: no global backend state).

* :func:`plot_growth` plots alive units and edges over the epochs of ``metrics.jsonl``.
* :func:`plot_selection` plots the models the select stage scored (``report.json``).

Both write a PNG atomically and raise :class:`~archdisc.errors.RenderError` when the
input holds nothing to plot.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend state
from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter, SymmetricalLogLocator

from archdisc.errors import RenderError
from archdisc.io import atomic_write_bytes

__all__ = ["plot_growth", "plot_selection", "save_png"]


def save_png(fig, path) -> None:
    """Write the matplotlib figure ``fig`` to ``path`` as a PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _read_records(src) -> list[dict]:
    if isinstance(src, (str, Path)):
        lines = Path(src).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return list(src)


def _alive_of(rec: dict) -> tuple[dict, dict | int | None]:
    """(units per node, edges) from one metrics record, whatever its layout:
    ``{"alive": {node: units}, "alive_edges": n}`` (what :mod:`archdisc.recipe.discover` writes),
    ``{"alive": {"units": {...}, "edges": {...}}}`` (as :func:`archdisc.sparsity.groups.alive`
    returns), ``{"alive_units": {...}}``, or flat keys ``"alive_units/<node>"``."""
    nested = rec.get("alive")
    if isinstance(nested, dict) and isinstance(nested.get("units"), dict):
        return dict(nested["units"]), nested.get("edges", rec.get("alive_edges"))
    units = next((rec[k] for k in ("alive_units", "alive", "units")
                  if isinstance(rec.get(k), dict)), {})
    units = {k: v for k, v in units.items() if isinstance(v, (int, float))}
    for key, val in rec.items():
        for prefix in ("alive_units/", "alive_units.", "units/", "units.", "alive/"):
            if key.startswith(prefix) and isinstance(val, (int, float)):
                units[key[len(prefix):]] = val
    edges = rec.get("alive_edges", rec.get("edges"))
    return units, edges


def _count_edges(edges) -> tuple[float | None, int | None]:
    """(alive, total) from a dict name -> bool/number, a number, or None."""
    if edges is None:
        return None, None
    if isinstance(edges, dict):
        return sum(1 for v in edges.values() if v), len(edges)
    if isinstance(edges, (list, tuple)):
        return len(edges), None
    return float(edges), None


def plot_growth(metrics_path_or_records, out_png, total_edges: int | None = None,
                widths: dict | None = None) -> Path:
    """Plot alive units per searchable node (log scale) and alive candidate edges over
    the epochs of a ``metrics.jsonl`` (path or list of records); writes a PNG atomically.
    ``total_edges``: the supernet's number of candidate edges (drawn as a reference
    line; 0 hides the edge panel). ``widths``: each node's supernet width; given, the
    plot shows the alive *fraction* of each node (a full layer sits at 1). Records
    without alive counts are skipped."""
    rows = []
    for i, rec in enumerate(_read_records(metrics_path_or_records)):
        units, edges = _alive_of(rec)
        if units or edges is not None:
            rows.append((rec.get("epoch", i), units, *_count_edges(edges)))
    if not rows:
        raise RenderError("metrics: no record holds alive units or edges, nothing to plot; "
                          "give records with keys like {'alive': {'units': {...}, "
                          "'edges': {...}}}")
    epochs = [r[0] for r in rows]
    nodes = list(dict.fromkeys(n for r in rows for n in r[1]))
    totals = [t for t in [total_edges] + [r[3] for r in rows] if t is not None]
    counts = [r[2] for r in rows if r[2] is not None]
    has_edges = bool(counts) and max(totals or counts) > 0  # no candidate edge: no panel

    fig = Figure(figsize=(9, 6.5 if has_edges else 4.5), dpi=110, layout="constrained")
    axes = fig.subplots(2 if has_edges else 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [3, 1]} if has_edges else None)[:, 0]
    ax = axes[0]
    scale = {n: (widths or {}).get(n) for n in nodes}
    fraction = widths is not None and all(scale.values())
    lines = []
    for i, n in enumerate(nodes):  # 10 colours, then the next line style
        lines += ax.plot(epochs, [r[1].get(n, float("nan")) / (scale[n] if fraction else 1)
                         for r in rows], marker=".", label=n,
                color=f"C{i % 10}", ls=("-", "--", ":", "-.")[i // 10 % 4])
    values = [v for r in rows for v in r[1].values() if v > 0]
    if fraction:
        ax.set_ylim(0, 1.05)
    elif values and max(values) > 20 * min(values):  # spans decades: log, still showing 0
        ax.set_yscale("symlog", linthresh=1)
        ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("alive fraction of the layer" if fraction else "alive units")
    ax.set_title("Growth of the architecture")
    ax.grid(True, which="both", alpha=0.3)
    if nodes:
        # handles and labels given: matplotlib drops "_0"-like labels otherwise
        ax.legend(lines, nodes, fontsize=7, ncol=max(1, len(nodes) // 12), loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False)
    if has_edges:
        ax = axes[1]
        ax.step(epochs, [float("nan") if r[2] is None else r[2] for r in rows], where="post", color="#1f6fd1",
                label="alive candidate edges")
        if totals:
            ax.axhline(max(totals), color="grey", ls="--", lw=1, label="candidate edges")
        ax.set_ylabel("alive edges")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1].set_xlabel("epoch")
    save_png(fig, out_png)
    return Path(out_png)


def plot_selection(report, out_png) -> Path:
    """Plot what the select stage scored (``report.json``'s ``select.path``, a path or the
    report dict): validation metric against parameters, +-1 standard error, the band of
    models within ``select_tol`` standard errors of the best, and the kept one; writes a
    PNG atomically."""
    rep = json.loads(Path(report).read_text()) if not isinstance(report, dict) else report
    path = (rep.get("select") or {}).get("path") or []
    if len(path) < 2:
        raise RenderError("report: select.path holds fewer than 2 scored models, nothing "
                          "to compare (was the run made with select = none?)")
    tol = rep.get("config", {}).get("select_tol", 1.0)
    top = max(path, key=lambda s: s["metric"])
    floor = top["metric"] - tol * top["se"]
    fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.axhspan(floor, top["metric"] + tol * top["se"], color="#2ca02c", alpha=0.12,
               label=f"best +- {tol:g} standard error{'s' * (tol != 1)}")
    ax.errorbar([s["params"] for s in path], [s["metric"] for s in path],
                yerr=[s["se"] for s in path], fmt="o", color="#1f6fd1", ms=4, capsize=2,
                label="scored on validation")
    for s in path:
        ax.annotate("-".join(str(w) for w in s["widths"].values()), (s["params"], s["metric"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=6, color="#555555")
    kept = [s for s in path if s.get("chosen")]
    if kept:
        ax.plot([kept[0]["params"]], [kept[0]["metric"]], "*", color="#d62728", ms=14,
                label=f"kept: {kept[0]['params']:,} parameters")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"validation {rep.get('metric', 'metric')}")
    ax.set_title(f"Selection ({(rep.get('select') or {}).get('mode', '')}): every model "
                 f"scored on validation, and the one kept")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save_png(fig, out_png)
    return Path(out_png)
