import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from archdisc import build_space
from archdisc.plots import plot_growth, plot_selection
from archdisc.render import RenderError, render, render_run, to_dot

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz 'dot' not installed (apt-get install -y graphviz)")


def narrowed_mlp():
    """An mlp supernet and a 'discovered' one with fewer hidden units."""
    sup = build_space("mlp", widths=(20, 16, 12, 4), in_shape=None)
    compact = build_space("mlp", widths=(20, 5, 3, 4), in_shape=None)
    return sup, compact


def skip_supernet_and_compact():
    """skip_mlp with 2 blocks; the compact one lost block 2's layer and one skip edge."""
    sup = build_space("skip_mlp", blocks=2, width=12, in_shape=(12,))
    compact = sup.copy()
    compact.remove_nodes_from(["fc2", "act2"])
    compact.remove_edge("x", "sum1")
    return sup, compact.validate()


def svg_texts(path):
    root = ET.parse(path).getroot()
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


@needs_dot
def test_svg_names_every_layer_with_alive_over_supernet_units(tmp_path):
    sup, compact = narrowed_mlp()
    out = render(compact, tmp_path / "compact", "svg", supernet=sup)
    assert out == tmp_path / "compact.svg" and (tmp_path / "compact.gv").exists()
    texts = svg_texts(out)
    for node in ("x", "fc1", "fc2", "fc3", "out"):
        assert node in texts, node
    assert "linear 5/16 → relu" in texts  # act1 merged into fc1's box
    assert "linear 3/12 → relu" in texts
    assert "linear 4/4" in texts
    assert not any(t == "act1" for t in texts)


@needs_dot
def test_unmerged_png_and_pdf(tmp_path):
    g = build_space("convnet", channels=(4, 6), hidden=8, in_shape=(1, 16, 16), kernel_size=3)
    assert render(g, tmp_path / "a.png", "png", merge=False).read_bytes()[:4] == b"\x89PNG"
    assert "\trelu1 [label" in (tmp_path / "a.gv").read_text()
    assert render(g, tmp_path / "a.svg", "pdf").read_bytes()[:4] == b"%PDF"  # suffix swapped
    assert "\trelu1 [label" not in (tmp_path / "a.gv").read_text()


def test_merging_keeps_resnet18_readable():
    g = build_space("resnet18", width_mult=0.25, in_shape=(3, 32, 32))
    src = to_dot(g).source
    boxes = re.findall(r"^\t(\w+) \[label=", src, flags=re.M)
    assert len(boxes) < len(g) * 0.6  # bn / relu merged into their producers
    assert "conv 3×3 16 → bn → relu" in src
    assert "conv 3×3 /2 32 → bn → relu" in src  # s2b1_conv1: strided
    assert "add 16 → relu" in src
    unmerged = re.findall(r"^\t(\w+) \[label=", to_dot(g, merge=False).source, flags=re.M)
    assert len(unmerged) == len(g)


def test_candidate_edges_are_dashed():
    sup, _ = skip_supernet_and_compact()
    src = to_dot(sup).source
    for u, v in sup.candidate_edges():
        line = next(line for line in src.splitlines() if line.strip().startswith(f"{u} -> {v}"))
        assert "dashed" in line
    assert "dashed" not in next(line for line in src.splitlines() if "fc1 -> sum1" in line)


def test_supernet_mode_greys_the_dead(tmp_path, monkeypatch):
    sup, compact = skip_supernet_and_compact()
    monkeypatch.setenv("PATH", "")  # the .gv source is written even without dot
    with pytest.raises(RenderError):
        render(compact, tmp_path / "supernet", "svg", supernet=sup, mode="supernet")
    src = (tmp_path / "supernet.gv").read_text()
    node_line = {m.group(1): m.group(0) for m in re.finditer(r"^\t(\w+) \[label=[^\]]*\]",
                                                             src, flags=re.M)}
    assert "#eeeeee" in node_line["fc2"] and "(dead)" in node_line["fc2"]  # dead layer
    assert "#eeeeee" not in node_line["fc1"] and "#eeeeee" not in node_line["sum2"]
    assert "linear 12/12 → relu" in node_line["fc1"]
    edge_line = {(m.group(1), m.group(2)): m.group(0)
                 for m in re.finditer(r"^\t(\w+) -> (\w+).*$", src, flags=re.M)}
    assert "dotted" in edge_line["x", "sum1"]  # dead candidate edge
    assert "dotted" in edge_line["fc2", "sum2"]  # edge out of a dead layer
    assert "dotted" not in edge_line["x", "sum2"] and "dashed" in edge_line["x", "sum2"]
    assert "dotted" not in edge_line["fc1", "sum1"]
    with pytest.raises(RenderError, match="needs the supernet"):
        render(compact, tmp_path / "s", mode="supernet")
    with pytest.raises(RenderError, match="format 'jpg': choose one of svg, png, pdf"):
        render(compact, tmp_path / "s", "jpg")


def test_missing_dot_says_how_to_install_and_keeps_source(tmp_path, monkeypatch):
    _, compact = narrowed_mlp()
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RenderError, match="apt-get install -y graphviz") as err:
        render(compact, tmp_path / "m", "png")
    gv = tmp_path / "m.gv"
    assert str(gv) in str(err.value)
    assert gv.read_text().startswith("digraph")
    assert not (tmp_path / "m.png").exists()


def write_metrics(path, nested=False):
    lines = []
    for epoch in range(1, 6):
        units = {"fc1": 2 ** epoch, "fc2": epoch, "fc3": 0}
        if nested:  # the layout of archdisc.sparsity.groups.alive()
            rec = {"epoch": epoch, "alive": {"units": units,
                                             "edges": {"a__b": epoch > 2, "c__d": False}}}
        else:  # the layout of archdisc.recipe.discover
            rec = {"epoch": epoch, "loss": 1.0 / epoch, "alive": units,
                   "alive_edges": min(epoch, 3)}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_growth_plot_writes_png(tmp_path, nested):
    metrics = write_metrics(tmp_path / "metrics.jsonl", nested)
    out = plot_growth(metrics, tmp_path / "growth.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["growth.png", "metrics.jsonl"]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    plot_growth(records, tmp_path / "again.png", total_edges=0)  # records, no edge panel
    with pytest.raises(RenderError, match="no record"):
        plot_growth([{"epoch": 1, "loss": 0.3}], tmp_path / "none.png")


def select_report(path_len=3):
    path = [{"stage": i, "widths": {"fc1": 40 - 10 * i}, "metric": 88 - i, "se": 0.5,
             "params": 4000 - 1000 * i, "chosen": i == 1} for i in range(path_len)]
    return {"metric": "accuracy", "config": {"select_tol": 2.0},
            "select": {"mode": "shrink", "path": path}}


def test_selection_plot_writes_png(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(select_report()))
    out = plot_selection(tmp_path / "report.json", tmp_path / "selection.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RenderError, match="select = none"):
        plot_selection(select_report(1), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


@needs_dot
def test_render_run(tmp_path):
    sup, compact = skip_supernet_and_compact()
    sup.to_json(tmp_path / "supernet.json")
    compact.to_json(tmp_path / "compact.json")
    write_metrics(tmp_path / "metrics.jsonl")
    paths = render_run(tmp_path, "svg", supernet=True)
    assert [p.name for p in paths] == ["growth.png", "compact.svg", "supernet.svg"]
    (tmp_path / "report.json").write_text(json.dumps(select_report()))
    paths = render_run(tmp_path, "svg")
    assert [p.name for p in paths] == ["growth.png", "selection.png", "compact.svg"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert "fc2 (dead)" in svg_texts(tmp_path / "supernet.svg")
    assert "fc2" not in svg_texts(tmp_path / "compact.svg")
    with pytest.raises(FileNotFoundError, match="compact.json"):
        render_run(tmp_path / "nope")


def test_growth_plot_of_alive_fractions(tmp_path):
    records = [{"epoch": e, "alive": {"fc1": 10 * e, "fc2": 80}} for e in (1, 2, 3)]
    out = plot_growth(records, tmp_path / "g.png", widths={"fc1": 200, "fc2": 80})
    assert out.stat().st_size > 1000
