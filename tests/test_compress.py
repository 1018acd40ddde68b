"""Compressing a trained model: its weights in (--weights, start = "weights"), a search
that cuts it down to a MACs target, the cut that keeps the survivors' weights, and the
distillation loss of the fine-tune.

Teacher data (20 features, 4 classes); the user's model is helpers.small_mlp, trained here.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

import helpers
from archdisc import Config, ConfigError, load, run_discover
from archdisc.data import evaluate, load_data
from archdisc.io import read_toml
from archdisc.optim import AdaBreg, GroupL2
from archdisc.recipe.loop import distill_loss, epoch_order, loss_fn, train_epoch

DATA = {"teacher_widths": [8, 4], "n_train": 2000, "n_val": 500, "n_test": 500}


def cfg(**kw) -> Config:
    base = dict(model="helpers:small_mlp", data="teacher", data_options=DATA, epochs=2,
                batch_size=64, lr=1e-3, lam=0.05, device="cpu", finetune=0, select="none",
                control_every=5)
    return Config(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """helpers.small_mlp trained 15 epochs with Adam on the run's own split; its files
    (torch.save and safetensors) and its test accuracy."""
    data = load_data("teacher", seed=0, **DATA)
    torch.manual_seed(1)
    model = helpers.small_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.train.tensors
    for e in range(15):
        train_epoch(model, opt, x, y, "classification", 64, epoch_order(1, e, len(x)))
    folder = tmp_path_factory.mktemp("weights")
    torch.save(model.state_dict(), folder / "w.pt")
    save_file(model.state_dict(), str(folder / "w.safetensors"))
    return folder, evaluate(model.eval(), data.test, "accuracy")


def test_the_search_starts_from_the_given_weights(tmp_path, trained, capsys):
    """With a vanishing lr the searched supernet is the user's model: same test accuracy
    (up to a sample decided by rounding), every unit alive."""
    folder, acc = trained
    for name in ("w.pt", "w.safetensors"):
        rep = run_discover(cfg(weights=str(folder / name), epochs=1, lr=1e-12),
                           tmp_path / name, progress=False)
        assert abs(rep["test"]["supernet"] - acc) <= 100 / 500 + 1e-9
        assert rep["stages"][1]["stage"] == "search start (weights)"
        assert abs(rep["stages"][1]["test"] - acc) <= 100 / 500 + 1e-9  # the start, scored
        assert rep["params"]["compact"] == rep["params"]["supernet"]
    # without weights the log says that the module's own weights are not used
    run_discover(cfg(epochs=1), tmp_path / "sparse")
    assert "own weights are not used (--start weights" in capsys.readouterr().err


def test_a_module_instance_keeps_its_weights(tmp_path, trained):
    """run_discover(model=module): the search starts from the instance's weights; a resume
    without the instance, or a model that is not a module, is refused by name."""
    folder, acc = trained
    module = helpers.small_mlp()
    module.load_state_dict(torch.load(folder / "w.pt", weights_only=True))
    c = Config(**{k: v for k, v in cfg(epochs=1, lr=1e-12).to_dict().items() if k != "model"})
    rep = run_discover(c, tmp_path / "m", progress=False, model=module)
    assert abs(rep["test"]["supernet"] - acc) <= 100 / 500 + 1e-9
    assert rep["stages"][1]["stage"] == "search start (weights)"
    assert 'model = "python:Sequential"' in (tmp_path / "m" / "config.toml").read_text()
    with pytest.raises(ConfigError, match=r"model=\.\.\.\); pass it again"):
        run_discover(Config.from_dict(read_toml(tmp_path / "m" / "config.toml")),
                     tmp_path / "m", resume=True, progress=False)
    with pytest.raises(ConfigError, match="expected a torch.nn.Module instance"):
        run_discover(c, tmp_path / "x", progress=False, model=helpers.small_mlp)


@pytest.mark.parametrize("target, weight, lost", [
    (0.5, "auto", 6), (0.25, "auto", 9),  # fisher: -1.0 / -7.8 measured
    (0.25, "one", 9),  # relative norms: -7.0 measured
    (0.25, "cost", 14)])  # -10 measured here (_0 cut to 6 units; the teacher has 8)
def test_a_macs_target_from_trained_weights_is_met_without_collapse(tmp_path, trained, target,
                                                                   weight, lost):
    folder, acc = trained
    rep = run_discover(cfg(weights=str(folder / "w.pt"), target_macs=target, finetune=1,
                           group_weight=weight), tmp_path / "r", progress=False)
    macs = rep["macs"]
    assert 0.9 * target <= macs["compact"] / macs["supernet"] <= target
    assert rep["target_macs"] == round(target * macs["supernet"]) and rep["target_params"] is None
    assert rep["test"]["compact"] >= acc - lost, (rep["test"], acc)
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text()
               .splitlines()]
    assert metrics[-1]["macs"] == macs["compact"]  # the search, not select, set the size


def test_per_layer_limits_hold_and_an_unreachable_target_is_refused(tmp_path, trained):
    """keep / min_keep / round_to hold in the compact model, its size (counted with them)
    lands in the target's band (wider by a round_to step); a target below the smallest
    model they allow is refused before the run folder is made, with that smallest size."""
    folder, _ = trained
    w = str(folder / "w.pt")
    rep = run_discover(cfg(weights=w, target_macs=0.5, min_keep=0.25, round_to=4, finetune=1,
                           keep="_2"), tmp_path / "r", progress=False)
    g = json.loads((tmp_path / "r" / "compact.json").read_text())
    units = {n["name"]: n.get("units") for n in g["nodes"]}
    assert units["_2"] == 32 and units["_0"] % 4 == 0 and units["_0"] >= 8, units
    macs, step = rep["macs"], 4 * (20 + 32)  # 4 units of _0: a round_to step
    assert 0.5 * macs["supernet"] - step <= macs["compact"] <= 0.5 * macs["supernet"]
    # _2 whole: 20 * 4 + 4 * 32 + 32 * 4 = 336 MACs at the least (one unit in _0, rounded)
    with pytest.raises(ConfigError, match=r"'target_macs': 179 macs cannot be reached: "
                                          r"the smallest .* has 336 macs"):
        run_discover(cfg(weights=w, target_macs=0.1, keep="_2", round_to=4), tmp_path / "u")
    assert not (tmp_path / "u").exists()
    with pytest.raises(ConfigError, match="'keep': 'fc1' is not a searched layer of this "
                                          "model; choose from _0, _2"):
        run_discover(cfg(keep="fc1"), tmp_path / "k")


def test_a_latency_target_is_met_by_its_measurement(tmp_path, trained, monkeypatch):
    """target_latency_ms: the controller steers MACs along a line through the measured
    latency of the supernet and of the smallest model, then settles again until the
    measured latency is in [0.9, 1.0] of the target. A deterministic clock here, not a
    line (0.05 ms + 1 us per MAC + 0.5 ps per MAC squared), so the settles after the line
    are needed; a target below the smallest model's (one unit per layer: 25 MACs) is
    refused up front."""
    from archdisc.deploy import latency
    from archdisc.graph.archgraph import count_macs

    def fake(model, graph, batch):
        macs = count_macs(model.graph)
        return 0.05 + 1e-3 * macs + 5e-7 * macs ** 2
    monkeypatch.setattr(latency, "eager_ms", fake)
    folder, _ = trained
    rep = run_discover(cfg(weights=str(folder / "w.pt"), target_latency_ms=1.5, finetune=1),
                       tmp_path / "r", progress=False)
    got = rep["latency_ms_searched"]
    assert 0.9 * 1.5 <= got <= 1.5 and got == pytest.approx(fake(load(tmp_path / "r" / "compact"),
                                                                   None, 1))
    with pytest.raises(ConfigError, match=r"'target_latency_ms': 0.05 ms cannot be reached: "
                                          r".* runs in 0.0753 ms at batch 1"):
        run_discover(cfg(weights=str(folder / "w.pt"), target_latency_ms=0.05), tmp_path / "u")


@pytest.mark.parametrize("edit, match", [
    (lambda s: {k: v for k, v in s.items() if k != "2.bias"}, "missing 2.bias"),
    (lambda s: {**s, "extra.weight": torch.zeros(1)}, "unexpected extra.weight"),
    (lambda s: {**s, "0.weight": torch.zeros(32, 21)}, r"0.weight: \[32, 21\] in the file"),
    (lambda s: {"model": object()}, "cannot be read as weights"),  # weights_only refuses it
])
def test_weights_that_do_not_fit_are_named(tmp_path, trained, edit, match):
    state = torch.load(trained[0] / "w.pt", weights_only=True)
    torch.save(edit(state), tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=match):
        run_discover(cfg(weights=str(tmp_path / "bad.pt")), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_cut_kills_the_weakest_and_keeps_the_survivors():
    """AdaBreg's cut_: the units under the raised threshold die, the others keep their
    exact weights, and v is re-anchored so that the next prox returns them."""
    torch.manual_seed(0)
    w = torch.randn(6, 5) * torch.arange(1, 7.0)[:, None]  # unit norms grow with the row
    opt = AdaBreg([{"params": [w], "reg": GroupL2(0.01)}], lr=1e-3)
    group = opt.param_groups[0]
    opt._subgradient_vars(group, [w])  # v as at the first step
    before = w.clone()
    norms = w.norm(dim=1)
    # raise lam so that delta * dlam * sqrt(5) falls between the 2nd and 3rd norm
    extra = float(norms.sort().values[1:3].mean()) / 5 ** 0.5
    group["reg"].lam += extra
    opt.cut_(group, extra)
    dead = norms <= norms.sort().values[1]
    assert int(dead.sum()) == 2 and torch.count_nonzero(w[dead]) == 0
    assert torch.equal(w[~dead], before[~dead])
    again = opt.state[w]["v"].clone() * group["delta"]
    group["reg"].prox_([again], group["delta"])
    torch.testing.assert_close(again, w, rtol=1e-5, atol=1e-6)  # float32: a few ulps


def test_distill_loss():
    """weight 0: the label loss alone; a student equal to its teacher has zero KL, so
    weight 1 gives 0; otherwise the KL matches a hand computation at T = 4."""
    torch.manual_seed(0)
    teacher = torch.nn.Linear(5, 3)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    out = torch.randn(16, 3)
    assert distill_loss(teacher, 0.0, "classification")(out, x, y) == loss_fn(out, y,
                                                                               "classification")
    with torch.no_grad():
        same = teacher(x)
    assert float(distill_loss(teacher, 1.0, "classification")(same, x, y)) == pytest.approx(
        0.0, abs=1e-6)
    p, q = (torch.softmax(t / 4, 1) for t in (same, out))
    want = 16 * float((p * (p.log() - q.log())).sum(1).mean())
    got = float(distill_loss(teacher, 1.0, "classification")(out, x, y))
    assert got == pytest.approx(want, rel=1e-5)
