"""archdisc.recipe.config / loop / rundir / discover: config, training loop, checkpoints, resume
and the discover pipeline.

All runs use the synthetic ``teacher`` data (20 features, 4 classes) and a small ``mlp``
space, so the whole file runs in well under a minute on 2 CPU cores.
"""
import json
import math
import tomllib

import pytest
import torch

import archdisc
from archdisc.io import load_tensors
from archdisc import Config, ConfigError, RunError, TrainingError, load_config, run_discover
from archdisc.recipe.rundir import CHECKPOINT
from helpers import assert_resume_is_bit_identical, assert_same_accuracy


def small(**kw) -> Config:
    base = dict(space="mlp", space_options={"widths": [20, 32, 32, 4]}, data="teacher",
                data_options={"n_train": 1000, "n_val": 300, "n_test": 300}, epochs=3,
                batch_size=50, lr=1e-2, lam=1.0, density=0.3, device="cpu",
                finetune=0, select="none")  # select / fine-tune change the compact model
    return Config(**{**base, **kw})


ARTEFACTS = ["config.toml", "metrics.jsonl", CHECKPOINT, "supernet.safetensors",
             "supernet.json", "compact.safetensors", "compact.json", "report.json",
             "report.md"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    report = run_discover(small(), out, progress=False)
    return out, report


# ---------------------------------------------------------------------- end to end
def test_discover_writes_every_artefact(run):
    out, report = run
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    m = json.loads(lines[-1])
    assert {"train_loss", "val_accuracy", "density", "alive", "alive_edges", "lam",
            "seconds"} <= set(m)
    assert set(m["alive"]) == {"fc1", "fc2"} and 0 < m["density"] < 1
    assert json.loads((out / "report.json").read_text())["test"] == report["test"]
    assert "parameters kept" in (out / "report.md").read_text()
    assert Config.from_dict(tomllib.loads((out / "config.toml").read_text())) == small()


def test_compact_model_equals_supernet(run):
    out, report = run
    assert_same_accuracy(report["test"]["compact"], report["test"]["supernet"],
                         report["data"]["sizes"][2])
    supernet, compact = archdisc.load(out / "supernet"), archdisc.load(out / "compact.json")
    assert sum(p.numel() for p in compact.parameters()) < \
        sum(p.numel() for p in supernet.parameters())
    x = torch.randn(64, 20)
    with torch.no_grad():  # float32, the same sums over fewer terms: rounding (~1e-6)
        torch.testing.assert_close(compact(x), supernet(x), rtol=1e-5, atol=1e-5)
    assert report["params"]["compact"] < report["params"]["supernet"]


def test_load_round_trip_equals_compact_outputs(run, tmp_path):
    out, _ = run
    net = archdisc.load(out / "compact.safetensors")
    assert not net.training
    tensors, _ = load_tensors(out / "compact.safetensors")
    for k, v in net.state_dict().items():
        assert torch.equal(v, tensors[k])
    from archdisc.deploy import save
    save(net, tmp_path / "again")
    again = archdisc.load(tmp_path / "again")
    x = torch.randn(16, 20)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


# ---------------------------------------------------------------------- resume
def test_resume_after_interruption_is_bit_identical(tmp_path):
    cfg = small(epochs=4, optimizer="adabreg", lr_schedule="cosine")
    full = run_discover(cfg, tmp_path / "full", progress=False)

    def stop_after_2(epoch, record, net):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_discover(cfg, tmp_path / "cut", progress=False, on_epoch=stop_after_2)
    _, meta = load_tensors(tmp_path / "cut" / CHECKPOINT)
    assert meta["epoch"] == 2
    with pytest.raises(RunError, match="--resume"):
        run_discover(cfg, tmp_path / "cut", progress=False)
    resumed = run_discover(cfg, tmp_path / "cut", resume=True, progress=False)

    for name in ("supernet.safetensors", "compact.safetensors", CHECKPOINT):
        a, _ = load_tensors(tmp_path / "full" / name)
        b, _ = load_tensors(tmp_path / "cut" / name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"}
             for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"}
                     for m in map(json.loads, (tmp_path / "full" / "metrics.jsonl")
                                  .read_text().splitlines())]
    assert resumed["test"] == full["test"]


def test_linbreg_resume_is_bit_identical(tmp_path):
    assert_resume_is_bit_identical(small(epochs=2, optimizer="linbreg", lr=0.1), tmp_path)


# ---------------------------------------------------------------------- planted
def test_planted_architecture_is_found(tmp_path):
    """Teacher 20-8-4-4, supernet 20-64-64-4, starting from 5% of the units: the
    discovered widths are at least the teacher's and below the supernet's, and the
    fine-tuned compact model is accurate (a dense Adam baseline: ~84-88%).
    Measured (seeds 0/1/2): widths (48, 27) / (49, 48) / (50, 42), test 88.2 / 84.4 / 88.6."""
    data = {"teacher_widths": [8, 4], "n_train": 4000, "n_val": 1000, "n_test": 1000}
    cfg = small(space_options={"widths": [20, 64, 64, 4]}, data_options=data, epochs=12,
                batch_size=64, lr=1e-2, lam=1.0, density=0.05, finetune=5, finetune_lr=1e-3)
    report = run_discover(cfg, tmp_path / "run", progress=False)
    widths = [report["units"][n]["alive"] for n in ("fc1", "fc2")]
    assert widths[0] >= 8 and widths[1] >= 4, widths
    assert widths[0] <= 56 and widths[1] <= 48, widths
    assert report["test"]["compact"] >= 84.0, report["test"]
    assert report["test"]["compact"] >= report["test"]["compact_extracted"]


# ---------------------------------------------------------------------- failures
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(epoch, record, net):
        if epoch == 2:
            with torch.no_grad():
                net.layers["fc3"].weight.fill_(float("nan"))

    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"diverged in epoch 3.*keeps epoch 2"):
        run_discover(small(epochs=4), out, progress=False, on_epoch=poison)
    tensors, meta = load_tensors(out / CHECKPOINT)
    assert meta["epoch"] == 2
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (out / "report.json").exists()


def test_huge_lr_diverges_with_a_clear_message(tmp_path):
    with pytest.raises(TrainingError, match="lr"):
        run_discover(small(epochs=2, optimizer="sgd", lr=1e9, density=1.0), tmp_path / "r",
                     progress=False)


def test_existing_run_with_another_config_is_refused(tmp_path, run):
    out, _ = run
    with pytest.raises(RunError, match=r"another run \(differs in: lam\).*--force"):
        run_discover(small(lam=0.2), out, progress=False)
    with pytest.raises(RunError, match="--resume"):
        run_discover(small(), out, progress=False)
    (tmp_path / "junk.txt").write_text("mine")
    with pytest.raises(RunError, match="not an archdisc run"):
        run_discover(small(), tmp_path, progress=False)
    assert (tmp_path / "junk.txt").read_text() == "mine"


def test_finetune_hook(tmp_path):
    report = run_discover(small(epochs=1, finetune=1, finetune_lr=1e-3), tmp_path / "r",
                          progress=False)
    assert set(report["test"]) == {"supernet", "compact", "compact_extracted"}
    assert_same_accuracy(report["test"]["compact_extracted"], report["test"]["supernet"],
                         report["data"]["sizes"][2])
    assert "fine-tuned 1 epochs" in report["headline"]
    units = archdisc.load(tmp_path / "r" / "compact").graph.units()
    assert {n: units[n] for n in ("fc1", "fc2")} == \
        {n: report["units"][n]["alive"] for n in ("fc1", "fc2")}


def test_force_overwrites_another_run(tmp_path):
    out = tmp_path / "run"
    run_discover(small(epochs=1), out, progress=False)
    run_discover(small(epochs=1, lam=0.2), out, force=True, progress=False)
    assert Config.from_dict(tomllib.loads((out / "config.toml").read_text())).lam == 0.2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("d, message", [
    ({"epoch": 3}, r"unknown config key 'epoch' \(did you mean 'epochs'\?\)"),
    ({"epochs": "3"}, r"'epochs': expected an integer, got '3'"),
    ({"epochs": 2.5}, r"'epochs': expected an integer"),
    ({"lr": True}, r"'lr': expected a number"),
    ({"space_options": 3}, r"'space_options': expected a table"),
    ({"epochs": 0}, r"'epochs': must be an integer >= 1"),
    ({"density": 1.5}, r"'density': must be a number in \(0, 1\]"),
    ({"lr": -1}, r"'lr': must be a finite number > 0"),
    ({"space": "transformer"}, r"unknown search space 'transformer'; available: mlp, "),
    ({"data": "imagenet"}, r"unknown dataset 'imagenet'; available: .*fashion-mnist"),
    ({"optimizer": "rmsprop"}, r"'optimizer': 'rmsprop' is not allowed; choose one of "
                               r"adabreg, linbreg, proxsgd, sgd, adam"),
    ({"group_mode": "row"}, r"'group_mode'.*unit, kernel, element"),
])
def test_bad_configs_name_the_field(d, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(d)


def test_bad_space_and_data_options(tmp_path):
    with pytest.raises(ConfigError, match="space_options.*widths"):
        run_discover(small(space_options={"widths": [10, 5, 4]}), tmp_path / "a",
                     progress=False)
    with pytest.raises(ConfigError, match="space_options.*bad option"):
        run_discover(small(space_options={"depth": 3}), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="data_options"):
        run_discover(small(data_options={"colour": 1}), tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists()


def test_toml_round_trip_and_overrides(tmp_path):
    cfg = small(lam_edge=0.5, space_options={"widths": [20, 8, 4], "act": "tanh"},
                lr=3e-4)
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = load_config(path)
    assert again == cfg and again.hash() == cfg.hash()
    assert math.isclose(load_config(path, {"lr": 1}).lr, 1.0)
    merged = load_config(path, {"space_options": {"act": "relu"}})
    assert merged.space_options == {"widths": [20, 8, 4], "act": "relu"}
    path.write_text("epochs = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_validate_returns_the_normalised_config_and_leaves_its_own_alone():
    cfg = Config(lr=1, model="torchvision.models:resnet18", input_shape="3x32x32",
                 lam_layers={"fc1": 1})
    v = cfg.validate()
    assert (cfg.lr, type(cfg.lr), cfg.space, cfg.input_shape) == (1, int, "mlp", "3x32x32")
    assert (v.lr, type(v.lr), v.space, v.input_shape) == \
        (1.0, float, "torchvision.models:resnet18", "3,32,32")
    assert v.validate() == v and v.lam_layers == cfg.lam_layers
    assert v.lam_layers is not cfg.lam_layers  # no table is shared with the original


# ---------------------------------------------------------------------- augment, weight decay
def test_crop_flip_shapes_determinism_and_mirror():
    import torch.nn.functional as F
    from archdisc.recipe.loop import augmenter, crop_flip
    x = torch.randn(16, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, crop_flip(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, crop_flip(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, x)
    # reference: replay the draws, crop the padded sample by slicing, mirror with torch.flip
    g = torch.Generator().manual_seed(0)
    shift = torch.randint(0, 9, (2, 16), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    assert flip.any() and not flip.all()
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        dy, dx = shift[:, i].tolist()
        ref = padded[i, :, dy:dy + 8, dx:dx + 8]
        assert torch.equal(out[i], torch.flip(ref, [2]) if flip[i] else ref), i
    # without padding each sample is itself or its exact mirror image, both occur
    same = crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    kept = [torch.equal(a, b) for a, b in zip(same, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(same, x)]
    assert all(k or m for k, m in zip(kept, mirrored)) and any(kept) and any(mirrored)
    # denoising: the clean target gets the same crop / flip as the input
    aug = augmenter(small(augment="crop_flip"), 0, 1, "cpu")
    xb, yb = aug(x, x.clone())
    assert torch.equal(xb, yb) and not torch.equal(xb, x)
    labels = torch.arange(16)
    assert torch.equal(aug(x, labels)[1], labels)
    assert augmenter(small(), 0, 1, "cpu") is None


def fake_cifar(root, per_batch=12):
    """A tiny CIFAR-10 binary layout (5 train batches + test) of random bytes."""
    import numpy as np
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, size=(per_batch, 1 + 3 * 32 * 32), dtype=np.uint8)
        rec[:, 0] %= 10
        rec.tofile(folder / name)
    return root


def images(root, **kw) -> Config:
    base = dict(space="convnet", space_options={"channels": [4, 4], "hidden": 8},
                data="cifar10", data_root=str(root), epochs=3, batch_size=16, lr=1e-2,
                lam=0.1, density=0.5, device="cpu", finetune=1, augment="crop_flip",
                select="none")
    return Config(**{**base, **kw})


def test_augmented_resume_is_bit_identical(tmp_path):
    cfg = images(fake_cifar(tmp_path / "data"), weight_decay=0.1)
    run_discover(cfg, tmp_path / "full", progress=False)

    def stop(epoch, record, net):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_discover(cfg, tmp_path / "cut", progress=False, on_epoch=stop)
    run_discover(cfg, tmp_path / "cut", resume=True, progress=False)
    for name in ("supernet.safetensors", "compact.safetensors"):
        a, _ = load_tensors(tmp_path / "full" / name)
        b, _ = load_tensors(tmp_path / "cut" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # augmentation is wired in: the same run without it trains differently
    plain = run_discover(images(tmp_path / "data", weight_decay=0.1, augment="none"),
                         tmp_path / "plain", progress=False)
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    assert plain["finetune"]["train_loss"] != full["finetune"]["train_loss"]
    first = [(tmp_path / d / "metrics.jsonl").read_text().splitlines()[0]
             for d in ("full", "plain")]
    assert json.loads(first[0])["train_loss"] != json.loads(first[1])["train_loss"]


def test_weight_decay_shrinks_only_unregularized_groups(tmp_path):
    from archdisc.graph.compile import ArchNet
    from archdisc.recipe.discover import search, setup
    from archdisc.recipe.setup import build_supernet, load_dataset, make_optimizer
    cfg = small(weight_decay=0.5)
    net = ArchNet(build_supernet(cfg, load_dataset(cfg)))
    opt = make_optimizer(net, cfg)
    before = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 0.1
    opt.decay_unregularized_(0.5)
    for g, old in zip(opt.param_groups, before):
        factor = 1.0 if g["reg"] is not None else 1 - 0.1 * g["delta"] * 0.5
        assert all(torch.equal(p, o * factor) for p, o in zip(g["params"], old)), g["name"]
    assert any(g["reg"] is None for g in opt.param_groups)
    # baselines use torch's weight decay: SGD's (coupled), AdamW for adam
    sgd = make_optimizer(net, small(optimizer="sgd", weight_decay=0.5))
    assert sgd.param_groups[0]["weight_decay"] == 0.5
    assert isinstance(make_optimizer(net, small(optimizer="adam", weight_decay=0.5)),
                      torch.optim.AdamW)
    assert type(make_optimizer(net, small(optimizer="adam"))) is torch.optim.Adam
    # a short run: the head shrinks; the searched layers keep their structure (measured:
    # the same alive units, fc1 9 / fc2 11, with and without decay; head norm 1.14 -> 0.61)
    from archdisc.sparsity.groups import alive
    norms, units = {}, {}
    for wd in (0.0, 2.0):
        run = setup(small(epochs=2, weight_decay=wd), tmp_path / str(wd), progress=False)
        search(run)
        trained = run.net
        norms[wd] = trained.layers["fc3"].weight.norm().item()
        units[wd] = alive(trained)["units"]
    assert norms[2.0] < 0.8 * norms[0.0], norms
    assert units[2.0] == units[0.0] and all(units[0.0].values()), units


@pytest.mark.parametrize("kw, message", [
    ({"weight_decay": -1e-4}, r"'weight_decay': must be a finite number >= 0"),
    ({"weight_decay": math.inf}, r"'weight_decay': must be a finite number >= 0"),
    ({"augment": "cutout"}, r"'augment': 'cutout' is not allowed; choose one of none, "
                            r"crop_flip"),
])
def test_bad_augment_and_weight_decay(kw, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(kw)


def test_augment_needs_image_inputs(tmp_path):
    with pytest.raises(ConfigError, match=r"'augment'.*image inputs.*\[20\]"):
        run_discover(small(augment="crop_flip"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("mode", ["kernel", "unit"])
def test_finetune_keeps_the_zeros_of_kernel_groups(mode):
    """With kernel groups the compact model keeps zero kernels inside its channels: the
    fine-tune trains the other weights and leaves those zero. Unit groups mask nothing."""
    from types import SimpleNamespace
    from torch.utils.data import TensorDataset
    from archdisc.graph.compile import compile_graph
    from archdisc.recipe.loop import finetune
    from search_spaces import convnet
    torch.manual_seed(0)
    net = compile_graph(convnet(channels=(4, 6), hidden=8, in_shape=(1, 12, 12), kernel_size=3))
    w = net.layers["conv2"].weight
    with torch.no_grad():
        w[:, ::2] = 0  # every second (out, in) kernel
    before = w.detach().clone()
    data = SimpleNamespace(task="classification", train=TensorDataset(
        torch.randn(64, 1, 12, 12), torch.randint(0, 10, (64,))))
    finetune(net, data, small(finetune=2, finetune_lr=1e-2, group_mode=mode), "cpu")
    zero = before == 0
    assert not torch.equal(w[~zero], before[~zero])  # the surviving weights were trained
    if mode == "kernel":
        assert torch.count_nonzero(w[zero]) == 0
    else:
        assert torch.count_nonzero(w[zero]) > 0


# ---------------------------------------------------------------------- spaces, errors
def test_register_space_runs_a_user_space(tmp_path):
    from archdisc import ArchGraph, GraphError, register_space, spaces

    def tiny(in_shape=(20,), classes=4, hidden=6):
        g = ArchGraph(name="tiny")
        h = g.act("a1", g.linear("fc1", g.input("x", list(in_shape)), hidden))
        g.output("out", g.linear("head", h, classes, searchable=False))
        return g
    register_space("tiny_user", tiny, "a user's space", replace=True)
    assert spaces()["tiny_user"][1] == "a user's space"
    with pytest.raises(GraphError, match="registered already"):
        register_space("tiny_user", tiny)
    report = run_discover(small(space="tiny_user", space_options={"hidden": 5}),
                          tmp_path / "r", progress=False)
    assert report["units"]["fc1"]["supernet"] == 5


def test_engine_does_not_import_the_builtin_spaces():
    import subprocess
    import sys
    code = ("import sys, archdisc; a = 'search_spaces' in sys.modules; "
            "archdisc.spaces(); print(a, 'search_spaces' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]


# ---------------------------------------------------------------------- divergence
def test_finite_divergence_stops_the_run_and_keeps_the_checkpoint(tmp_path, capsys):
    from archdisc.cli import main
    args = ["discover", "--space", "mlp", "--data", "teacher", "--space-option",
            "widths=[20, 32, 32, 4]", "--data-option", "n_train=500", "--data-option",
            "n_val=100", "--data-option", "n_test=100", "--epochs", "2", "--quiet",
            "--device", "cpu", "--optimizer", "adam", "--lr", "1e6", "--out",
            str(tmp_path / "r")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "diverged in epoch 1" in err and "untrained model" in err
    assert not (tmp_path / "r" / "compact.safetensors").exists()


def test_divergence_is_judged_against_at_least_a_uniform_guess():
    from archdisc.recipe.setup import _initial_loss
    net = torch.nn.Linear(3, 4)  # a trained model: sure and right, loss ~0
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([50.0, 0, 0, 0]))
    x = torch.randn(8, 3)
    fit = torch.utils.data.TensorDataset(x, torch.zeros(8, dtype=torch.long))
    assert _initial_loss(net, fit, "classification", "cpu") == pytest.approx(math.log(4))
    wrong = torch.utils.data.TensorDataset(x, torch.ones(8, dtype=torch.long))  # loss 50
    assert _initial_loss(net, wrong, "classification", "cpu") == pytest.approx(50.0, rel=1e-4)
    y = torch.full((8, 4), 0.5)  # regression: its own loss, however small
    assert _initial_loss(net, torch.utils.data.TensorDataset(x, y), "regression", "cpu") == \
        pytest.approx(float(((net(x).detach() - y) ** 2).mean()))


def test_a_worse_finetune_never_replaces_the_model(tmp_path):
    report = run_discover(small(epochs=2, finetune=1, finetune_lr=1e6), tmp_path / "r",
                          progress=False)
    assert report["finetune"]["kept"] is False
    assert report["val"]["compact"] == report["val"]["compact_extracted"]
    assert report["test"]["compact"] == report["test"]["compact_extracted"]


def test_resume_from_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    from archdisc.cli import main
    run_discover(small(epochs=1), tmp_path / "r", progress=False)
    ckpt = tmp_path / "r" / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(RunError, match="cannot be read.*damaged.*--force"):
        run_discover(small(epochs=1), tmp_path / "r", resume=True, progress=False)
    assert main(["discover", "--out", str(tmp_path / "r"), "--resume", "--quiet"]) == 2


def test_export_refuses_a_model_changed_after_the_run(tmp_path):
    from safetensors.torch import load_file, save_file
    from archdisc.cli import main
    from archdisc.deploy import export_run
    run_discover(small(epochs=1), tmp_path / "r", progress=False)
    path = tmp_path / "r" / "compact.safetensors"
    t = load_file(str(path))
    t["layers.fc1.bias"] = t["layers.fc1.bias"] + 5  # a silent edit of one bias
    save_file(t, str(path))
    with pytest.raises(RunError, match="compact.safetensors changed after the run wrote it"):
        export_run(tmp_path / "r", ("safetensors",))
    assert main(["export", str(tmp_path / "r"), "--format", "safetensors"]) == 2


# ---------------------------------------------------------------------- say what happened
def test_report_lists_each_stage_and_what_it_removed(tmp_path):
    rep = run_discover(small(select="shrink", finetune=1), tmp_path / "r", progress=False)
    stages = rep["stages"]
    assert [s["stage"].split(" ")[0] for s in stages] == [
        "supernet", "search", "search", "select", "fine-tune"]
    assert stages[0]["params"] == rep["params"]["supernet"]
    assert stages[-1]["params"] == rep["params"]["compact"]
    for before, s in zip(stages, stages[1:]):
        assert s["removed"] == before["params"] - s["params"]
    assert stages[-1]["test"] == rep["test"]["compact"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Stages" in md and f"| {stages[-1]['params']:,} |" in md
    kept = [s for s in rep["select"]["path"] if s["chosen"]]
    assert len(kept) == 1 and f"- {kept[0]['params']:,}: " in md and md.count(" *\n") == 1


def test_a_search_that_changes_no_unit_says_so(tmp_path, capsys):
    rep = run_discover(small(lr=1e-7, epochs=1), tmp_path / "r")
    warnings = rep["warnings"]
    assert any("changed no unit" in w and "--lr" in w for w in warnings), warnings
    assert any("near chance" in w for w in warnings), warnings  # 4 classes, untrained
    assert "warning: the search changed no unit" in capsys.readouterr().err
    assert "**Warning:** the search changed no unit" in (tmp_path / "r" / "report.md").read_text()


def test_diagnose_warnings_by_hand():
    from archdisc.recipe.diagnose import warnings
    cfg = Config(lam=0.1, lr=1e-3)
    widths = {"a": 100, "b": 50}
    start = {"a": 20, "b": 10}
    same = warnings(start, [start, start], widths, cfg, "accuracy", 80.0, 10)
    assert len(same) == 1 and "changed no unit in 2 epochs" in same[0]
    assert warnings(start, [{"a": 30, "b": 10}, start], widths, cfg, "accuracy", 80.0, 10) == []
    full = warnings(start, [{"a": 99, "b": 50}], widths, cfg, "accuracy", 80.0, 10)
    assert len(full) == 1 and "99%" in full[0] and "--target-params" in full[0]
    assert warnings(start, [{"a": 94, "b": 47}], widths, cfg, "accuracy", 80.0, 10) == []
    chance = warnings(start, [{"a": 30, "b": 10}], widths, cfg, "accuracy", 14.9, 10)
    assert len(chance) == 1 and "near chance" in chance[0]
    assert warnings(start, [{"a": 30, "b": 10}], widths, cfg, "psnr", 5.0, 0) == []
    full_start = {"a": 100, "b": 50}  # nothing could switch on: no "changed no unit"
    assert warnings(full_start, [full_start], widths, cfg, "accuracy", 80.0, 10) == []
    assert warnings(start, [{"a": 30, "b": 10}], widths, cfg, "accuracy", 70.0, 2) == []
    assert len(warnings(start, [{"a": 30, "b": 10}], widths, cfg, "accuracy", 55.0, 2)) == 1


def test_progress_line_summarises_deep_models():
    from archdisc.recipe.rundir import epoch_line
    rec = {"epoch": 2, "train_loss": 0.5, "val_accuracy": 80.0, "lam": 0.1, "seconds": 1.0,
           "alive": {f"l{i}": 10 + i for i in range(8)}}
    line = epoch_line(rec, 5, "accuracy")
    assert "108 units in 8 layers (fewest l0=10, most l7=17)" in line
    rec["alive"] = {"fc1": 3, "fc2": 4}
    assert "alive fc1=3 fc2=4" in epoch_line(rec, 5, "accuracy")


def test_a_csv_without_target_says_which_column_is_the_label(tmp_path, capsys):
    rows = ["a,b,label"] + [f"{i},{(i * 7) % 5},{i % 2}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    run_discover(Config(data=str(tmp_path / "d.csv"), space="mlp",
                        space_options={"widths": [2, 8, 2]}, epochs=1, finetune=0,
                        select="none", device="cpu"), tmp_path / "r")
    assert "the label is column 'label', the last" in capsys.readouterr().err


def test_recalibrate_bn_estimates_the_statistics_of_the_network_as_it_is():
    """After a cut the running statistics describe the old network; re-estimated they are
    the mean of the batch means and of the batch (unbiased) variances of the first
    samples, computed here independently; the momentum and the mode are restored."""
    from archdisc.recipe.loop import recalibrate_bn
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3)
    net = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(3)).eval()
    bn = net[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    x = torch.randn(40, 1, 6, 6)
    split = torch.utils.data.TensorDataset(x, torch.zeros(40, dtype=torch.long))
    recalibrate_bn(net, split, 10, "cpu", samples=30)  # 3 batches of 10
    with torch.no_grad():
        h = [conv(x[i:i + 10]).transpose(0, 1).flatten(1) for i in (0, 10, 20)]
    mean = torch.stack([b.mean(1) for b in h]).mean(0)
    var = torch.stack([b.var(1) for b in h]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(bn.running_var, var, rtol=1e-5)
    assert bn.momentum == 0.1 and not net.training
