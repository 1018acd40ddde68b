"""What extraction kept: sizes, units per layer, candidate edges; as a dict and as text."""
from __future__ import annotations

from archdisc.graph.archgraph import ArchGraph, count_macs, count_params
from archdisc.graph.kinds import kind
from archdisc.graph.ops import OPS, width


def extraction_report(supernet_graph: ArchGraph, compact_graph: ArchGraph) -> dict:
    """Sizes of supernet and compact model, units per layer / add, candidate edges kept."""
    sg, cg = supernet_graph, compact_graph
    p0, p1, m0, m1 = count_params(sg), count_params(cg), count_macs(sg), count_macs(cg)
    units = {n: {"op": sg.nodes[n]["op"], "alive": width(cg.nodes[n]) if n in cg else 0,
                 "supernet": width(sg.nodes[n])}
             for n in sg.order() if kind(sg, n).width}

    def kept(u, v):  # with fold_bn a BatchNorm's out-edges start at its conv
        return cg.has_edge(u, v) or (u not in cg and OPS[sg.nodes[u]["op"]].folds_into
                                     and any(cg.has_edge(p, v) for p in sg.predecessors(u)))

    cand = sorted(sg.candidate_edges())
    return {
        "name": sg.name,
        "params": {"supernet": p0, "compact": p1, "ratio": p1 / max(1, p0)},
        "macs": {"supernet": m0, "compact": m1, "ratio": m1 / max(1, m0)},
        "units": units,
        "edges": {"kept": [[u, v] for u, v in cand if kept(u, v)],
                  "removed": [[u, v] for u, v in cand if not kept(u, v)]},
        "nodes_removed": [n for n in sg.order() if n not in cg],
    }


def format_report(report: dict) -> str:
    """A fixed-width text table of :func:`extraction_report`'s result."""
    lines = [f"extraction report: {report.get('name') or '(unnamed)'}",
             f"{'':<8}{'supernet':>14}{'compact':>14}{'ratio':>9}"]
    for key, label in (("params", "params"), ("macs", "MACs")):
        r = report[key]
        lines.append(f"{label:<8}{r['supernet']:>14,}{r['compact']:>14,}{r['ratio']:>9.4f}")
    units = report["units"]
    if units:
        width = max(12, *(len(n) for n in units)) + 2
        lines += ["", f"{'node':<{width}}{'op':<9}{'alive':>8}{'of':>8}{'kept':>8}"]
        for n, u in units.items():
            frac = u["alive"] / max(1, u["supernet"])
            lines.append(f"{n:<{width}}{u['op']:<9}{u['alive']:>8}{u['supernet']:>8}"
                         f"{100 * frac:>7.1f}%")
    kept, removed = report["edges"]["kept"], report["edges"]["removed"]
    if kept or removed:
        lines += ["", f"candidate edges: {len(kept)} kept, {len(removed)} removed"]
        lines += [f"  kept     {u} -> {v}" for u, v in kept]
        lines += [f"  removed  {u} -> {v}" for u, v in removed]
    if report.get("nodes_removed"):
        lines += ["", "nodes removed: " + ", ".join(report["nodes_removed"])]
    return "\n".join(lines)
