"""Draw ArchGraphs with Graphviz (the matplotlib plots of a run: :mod:`archdisc.plots`).

* :func:`to_dot` draws one graph left to right, one box per layer with its op and its
  units. Given the ``supernet`` it came from, a layer shows ``alive/supernet`` units.
  Pure elementwise layers (batchnorm, activation) are merged into the label of their
  producer (``conv 3x3 16 → bn → relu``) so a ResNet-18 stays readable.
* :func:`render_supernet` draws the whole supernet with what did not survive greyed.
* :func:`render` writes the ``.gv`` source (always), then runs ``dot``.
* :func:`render_run` is what ``archdisc render RUN`` calls: the graphs, and the plots of
  :mod:`archdisc.plots`.

Candidate edges (skip connections behind a gate) are dashed and blue; in the supernet
picture, dead layers are grey and dead edges grey and dotted.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import graphviz

from archdisc.errors import MissingFileError, RenderError
from archdisc.graph.archgraph import ArchGraph, count_macs, count_params
from archdisc.io import atomic_write_bytes, atomic_write_text, remove_stale_temps
from archdisc.graph.ops import OPS, label
from archdisc.plots import plot_growth, plot_selection

FORMATS = ("svg", "png", "pdf")
LONG = 24  # boxes: above this many, drawings run top to bottom
MODES = ("compact", "supernet")
FILL = {"input": "#d9ead3", "output": "#d9ead3", "layer": "#cfe2f3", "add": "#fff2cc",
        "concat": "#fff2cc"}  # by the op's kind (archdisc.graph.ops)
CANDIDATE = {"style": "dashed", "color": "#1f6fd1", "penwidth": "1.6"}
DEAD_NODE = {"fillcolor": "#eeeeee", "color": "#b0b0b0", "fontcolor": "#a0a0a0"}
DEAD_EDGE = {"style": "dotted", "color": "#b0b0b0"}


# ---------------------------------------------------------------------- labels
def _describe(g: ArchGraph, n: str, units: dict, ref_units: dict | None) -> str:
    """One-line description of node ``n``: op, hyper-parameters and width."""
    a = g.nodes[n]
    width = str(units[n])
    if ref_units is not None and n in ref_units and \
            OPS[a["op"]].kind in ("layer", "add", "concat"):
        width = f"{units[n]}/{ref_units[n]}"
    return label(a, width)


def _mergeable(a: dict) -> bool:
    """Elementwise (a channelwise op that keeps the shape): drawn inside its producer."""
    op = OPS[a["op"]]
    return op.kind == "channelwise" and op.out_shape is None


def _chains(g: ArchGraph, merge: bool) -> dict[str, list[str]]:
    """Drawn box -> the nodes it stands for, in order (the box's own node first).

    An elementwise node is merged into its producer when it is that producer's only
    reader through a plain (ungated) edge, so merging hides no branching.
    """
    head = {}
    for n in g.order():
        ins = g.inputs(n)
        if (merge and _mergeable(g.nodes[n]) and len(ins) == 1
                and g.out_degree(ins[0]) == 1 and g.edges[ins[0], n]["gate"] is None
                and g.nodes[ins[0]]["op"] != "input"):
            head[n] = head[ins[0]]
        else:
            head[n] = n
    chains: dict[str, list[str]] = {}
    for n in g.order():
        chains.setdefault(head[n], []).append(n)
    return chains


def _title(g: ArchGraph, supernet: ArchGraph | None, title: str | None) -> str:
    if title is not None:
        return title
    name = g.name or "model"
    p, m = count_params(g), count_macs(g)
    text = f"{name}: {p:,} params, {m:,} MACs"
    if supernet is not None:
        ps, ms = count_params(supernet), count_macs(supernet)
        text += f"  (supernet {ps:,} params, {ms:,} MACs; kept {p / max(ps, 1):.1%} " \
                f"of params, {m / max(ms, 1):.1%} of MACs)"
    return text


def _digraph(name: str, title: str) -> graphviz.Digraph:
    return graphviz.Digraph(
        name or "archgraph",
        graph_attr={"rankdir": "LR", "label": title, "labelloc": "t", "fontsize": "14",
                    "fontname": "Helvetica", "nodesep": "0.25", "ranksep": "0.35"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                   "fontsize": "11", "fillcolor": "white"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9", "arrowsize": "0.7"})


def _draw(g: ArchGraph, ref: ArchGraph | None, alive: ArchGraph | None, title: str,
          merge: bool) -> graphviz.Digraph:
    """Draw ``g``. ``ref``: graph whose units are shown as the denominator.
    ``alive``: when given, nodes/edges of ``g`` missing from it are drawn dead."""
    units = g.units()
    ref_units = ref.units() if ref is not None else None
    alive_units = alive.units() if alive is not None else None
    dot = _digraph(g.name, title)
    chains = _chains(g, merge)
    box_of = {n: h for h, members in chains.items() for n in members}
    for h, members in chains.items():
        lines, attrs = [h], {"fillcolor": FILL.get(OPS[g.nodes[h]["op"]].kind, "white")}
        parts = []
        for n in members:
            if alive_units is None:
                parts.append(_describe(g, n, units, ref_units))
            elif n in alive_units:  # supernet picture: alive/supernet of a survivor
                parts.append(_describe(alive, n, alive_units, units))
            else:
                parts.append(_describe(g, n, units, None) + (" ✗" if n != h else ""))
        lines.append(" → ".join(parts))
        if alive_units is not None and h not in alive_units:
            attrs.update(DEAD_NODE)
            lines[0] += " (dead)"
        dot.node(h, "\n".join(lines), tooltip=", ".join(members), **attrs)
    for u, v, a in sorted(g.edges(data=True), key=lambda e: (e[1], e[2]["slot"])):
        if box_of[u] == box_of[v]:
            continue  # merged into one box
        attrs = dict(CANDIDATE) if a["gate"] is not None else {}
        if a["gate"] is not None:
            attrs["tooltip"] = f"candidate edge {u} → {v} ({a['gate']} gate)"
        if alive is not None and not alive.has_edge(u, v):
            attrs.update(DEAD_EDGE)
        dot.edge(box_of[u], v, **attrs)
    if len(chains) > LONG:  # a long chain reads better top to bottom than as a strip
        dot.graph_attr["rankdir"] = "TB"
    _legend(dot, g, ref is not None or alive is not None, alive is not None)
    return dot


def _legend(dot, g: ArchGraph, widths: bool, dead: bool):
    """A small key of what the picture's conventions mean (only those it uses)."""
    rows = []
    if widths:
        rows.append("37/200: alive / supernet units")
    if g.candidate_edges():
        rows.append("blue dashed: candidate connection (gated)")
    if dead:
        rows.append("grey, dotted: removed")
    rows.append("a → b: layers drawn in one box")
    with dot.subgraph(name="cluster_legend") as key:
        key.attr(label="legend", fontsize="10", style="dashed", color="#b0b0b0")
        key.node("legend", "\l".join(rows) + "\l", shape="plaintext", fontsize="10",
                 style="")


# ---------------------------------------------------------------------- public API
def to_dot(graph: ArchGraph, supernet: ArchGraph | None = None, title: str | None = None,
           merge: bool = True) -> graphviz.Digraph:
    """Graphviz picture of ``graph`` (left to right, one box per layer).

    With ``supernet``, every layer present in both shows ``alive/supernet`` units
    (``fc1 linear 37/200``). ``merge`` folds batchnorm / activation layers into the
    label of their producer. ``title`` defaults to the name with params and MACs.
    """
    return _draw(graph, supernet, None, _title(graph, supernet, title), merge)


def render_supernet(supernet_graph: ArchGraph, compact_graph: ArchGraph,
                    title: str | None = None, merge: bool = True) -> graphviz.Digraph:
    """The whole supernet with the dead greyed: a layer missing from ``compact_graph``
    grey, an edge missing from it grey and dotted, a surviving layer showing its
    ``alive/supernet`` units."""
    return _draw(supernet_graph, None, compact_graph,
                 _title(compact_graph, supernet_graph, title), merge)


def _out_path(path, format: str) -> Path:
    p = Path(path)
    if p.suffix.lstrip(".") in FORMATS + ("gv",):
        return p.with_suffix("." + format)
    return p.with_name(p.name + "." + format)


def render(graph: ArchGraph, path, format: str = "svg", supernet: ArchGraph | None = None,
           mode: str = "compact", title: str | None = None, merge: bool = True) -> Path:
    """Write the picture of ``graph`` to ``path`` (its suffix becomes ``format``).

    ``mode="compact"`` draws ``graph`` (with alive/supernet units when ``supernet`` is
    given); ``mode="supernet"`` draws ``supernet`` with what is absent from ``graph``
    greyed. The Graphviz source is always written first, beside it as ``.gv``; without
    the ``dot`` program a :class:`RenderError` says how to install it. Returns the path.
    """
    if format not in FORMATS:
        raise RenderError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise RenderError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "supernet":
        if supernet is None:
            raise RenderError("supernet: mode='supernet' needs the supernet graph; pass "
                              "supernet=...")
        dot = render_supernet(supernet, graph, title=title, merge=merge)
    else:
        dot = to_dot(graph, supernet=supernet, title=title, merge=merge)
    out = _out_path(path, format)
    gv = out.with_suffix(".gv")
    atomic_write_text(gv, dot.source)
    missing = RenderError(f"Graphviz's 'dot' program was not found, so {out.name} was not "
                          f"drawn. Install it (Debian/Ubuntu: apt-get install -y graphviz; "
                          f"macOS: brew install graphviz) and run again, or draw the source "
                          f"yourself: dot -T{format} {gv} -o {out}")
    if shutil.which("dot") is None:
        raise missing
    try:
        data = dot.pipe(format=format)
    except graphviz.ExecutableNotFound:
        raise missing from None
    except graphviz.CalledProcessError as e:
        raise RenderError(f"dot failed on {gv}: {e.stderr or e}") from None
    atomic_write_bytes(out, data)
    return out


# ---------------------------------------------------------------------- CLI entry
def render_run(run_dir, format: str = "svg", supernet: bool = False) -> list[Path]:
    """Draw a training run: ``RUN/growth.png`` from ``RUN/metrics.jsonl`` and
    ``RUN/selection.png`` from ``RUN/report.json`` (when present),
    ``RUN/compact.<format>`` (with alive/supernet units when ``RUN/supernet.json``
    exists) and, with ``supernet=True``, ``RUN/supernet.<format>`` with the dead greyed.
    Returns the paths written."""
    run = Path(run_dir)
    for name in ("compact", "supernet", "growth", "selection"):
        remove_stale_temps(run, name)  # left by a render killed midway
    if not (run / "compact.json").exists():
        raise MissingFileError(f"{run / 'compact.json'} not found: is {run} a finished "
                               "run directory?")
    compact = ArchGraph.from_json(run / "compact.json")
    sup = ArchGraph.from_json(run / "supernet.json") if (run / "supernet.json").exists() \
        else None
    if supernet and sup is None:
        raise MissingFileError(f"{run / 'supernet.json'} not found; cannot draw the supernet")
    written = []
    if (run / "metrics.jsonl").exists():
        try:
            written.append(plot_growth(run / "metrics.jsonl", run / "growth.png",
                                       len(sup.candidate_edges()) if sup else None,
                                       sup.units() if sup else None))
        except (RenderError, ValueError):  # ValueError: a line that is not JSON
            pass  # no alive counts recorded: nothing to plot
    if (run / "report.json").exists():
        try:
            written.append(plot_selection(run / "report.json", run / "selection.png"))
        except (RenderError, ValueError):
            pass  # select = none: nothing to compare
    written.append(render(compact, run / "compact", format, supernet=sup))
    if supernet:
        written.append(render(compact, run / "supernet", format, supernet=sup,
                              mode="supernet"))
    return written
