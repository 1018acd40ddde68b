"""archdisc.select: the width is chosen on validation data, not by the initial density."""
import pytest

from archdisc import Config, load, run_discover


def teacher(**kw) -> Config:
    base = dict(space="mlp", space_options={"widths": [20, 64, 64, 4]}, data="teacher",
                data_options={"teacher_widths": [8, 4]}, epochs=8, lr=1e-3, lam=0.05,
                finetune=0, device="cpu", select_steps=60)
    return Config(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("select")
    return {d: (run_discover(teacher(density=d), out / f"s{d}", progress=False), out / f"s{d}")
            for d in (0.05, 0.6)}


def test_width_is_not_set_by_the_initial_density(runs):
    """A sparse (0.05) and a dense (0.6) start end at similar widths of at most half the
    supernet. Without selection both runs end at 62-64 of 64 units (measured): the search
    alone is set by lam / lr and the epochs, not by the data."""
    widths = {d: [r["units"][n]["alive"] for n in ("fc1", "fc2")] for d, (r, _) in runs.items()}
    assert all(w <= 32 for ws in widths.values() for w in ws), widths
    params = [r["params"]["compact"] for r, _ in runs.values()]
    assert max(params) <= 4 * min(params), params
    assert all(r["test"]["compact"] > 80 for r, _ in runs.values())  # teacher 8-4: ~90


def test_the_chosen_snapshot_is_the_smallest_within_tolerance(runs):
    report, out = runs[0.6]
    path = report["select"]["path"]
    assert path[0]["stage"] == 0 and len(path) >= 3
    top = max(path, key=lambda s: s["metric"])
    ok = [s for s in path if s["metric"] >= top["metric"] - 1.0 * top["se"]]
    chosen = [s for s in path if s["chosen"]]
    assert len(chosen) == 1 and chosen[0]["params"] == min(s["params"] for s in ok)
    assert chosen[0]["params"] == report["params"]["compact"]  # finetune 0: what was saved
    assert load(out / "compact").graph.nodes["fc1"]["units"] == chosen[0]["widths"]["fc1"]
    sizes = [s["params"] for s in path]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert report["val"]["compact"] == pytest.approx(chosen[0]["metric"])
