"""Steering lam to a size: the budget controller, the lam warm-up and the fine-tune default.

Teacher data (20 features, 4 classes), supernet 20-64-64-4 (5,764 parameters): fast.
"""
import json

import pytest
import torch

from archdisc.extract import extract, verify_equivalent
from archdisc import load
from archdisc import Config, ConfigError, run_discover


def cfg(**kw) -> Config:
    base = dict(space="mlp", space_options={"widths": [20, 64, 64, 4]}, data="teacher",
                data_options={"teacher_widths": [8, 4], "n_train": 2000, "n_val": 500,
                              "n_test": 500},
                epochs=6, batch_size=64, lr=1e-2, lam=1.0, density=0.05, device="cpu",
                finetune=2, control_every=10)
    return Config(**{**base, **kw})


@pytest.mark.parametrize("target", [600, 1500])
def test_target_params_is_met_and_extraction_is_exact(tmp_path, target):
    report = run_discover(cfg(target_params=target), tmp_path / "r", progress=False)
    kept = report["params"]["compact"]
    assert kept <= target * 1.15, (kept, target)
    assert kept >= target * 0.5, (kept, target)  # the controller did not overshoot to nothing
    assert report["target_params"] == target
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all("params" in m and m["lam"] > 0 for m in metrics)
    # the saved supernet and compact (before fine-tune) are the same function
    net = load(tmp_path / "r" / "supernet")
    _, compact = extract(net, verify=True)
    assert sum(p.numel() for p in compact.parameters()) == kept
    x = torch.randn(64, 20)
    assert verify_equivalent(net, compact, inputs=x) <= 1e-5
    assert report["finetune"]["epochs"] == 2 and report["epochs_total"] == 8


def test_target_density_lowers_lam_when_too_small(tmp_path):
    # lam 5 alone would keep the net at its few initial units; the budget asks for more
    report = run_discover(cfg(lam=5.0, target_density=0.3), tmp_path / "r", progress=False)
    target = report["target_params"]
    assert target == round(0.3 * report["params"]["supernet"])
    assert 0.6 * target <= report["params"]["compact"] <= 1.15 * target
    assert report["lam_final"] < 5.0


def test_lam_warmup_ramps(tmp_path):
    run_discover(cfg(epochs=3, lam_warmup=2, finetune=0), tmp_path / "r", progress=False)
    lams = [json.loads(x)["lam"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lams[0] == pytest.approx(0.5) and lams[1] == pytest.approx(1.0) == lams[2]


def test_finetune_is_on_by_default_and_reported(tmp_path):
    assert Config().finetune > 0
    report = run_discover(cfg(epochs=2, finetune=1), tmp_path / "r", progress=False)
    ft = report["finetune"]
    assert ft["test_before"] == report["test"]["compact_extracted"]
    assert ft["test_after"] == report["test"]["compact"]


def test_finetune_cosine_schedule_decays_to_zero(tmp_path, monkeypatch):
    made = []
    adam = torch.optim.Adam

    def spy(*a, **k):
        made.append(adam(*a, **k))
        return made[-1]

    monkeypatch.setattr(torch.optim, "Adam", spy)
    report = run_discover(cfg(epochs=2, finetune=2, finetune_lr=1e-2, finetune_schedule="cosine"),
                          tmp_path / "r", progress=False)
    assert report["finetune"]["schedule"] == "cosine"
    assert len(report["finetune"]["train_loss"]) == 2
    lr_end = made[-1].param_groups[0]["lr"]  # the fine-tune optimizer is the last Adam made
    assert lr_end == pytest.approx(0.0, abs=1e-9)
    assert Config().finetune_schedule == "constant"


@pytest.mark.parametrize("kw, match", [
    (dict(target_params=0), "target_params"),
    (dict(target_density=1.5), "target_density"),
    (dict(target_params=100, target_density=0.1), "not both"),
    (dict(target_params=100, optimizer="adam"), "regularized optimizer"),
    (dict(lam_warmup=-1.0), "lam_warmup"),
    (dict(control_every=0), "control_every"),
    (dict(group_weight="cube"), "group_weight"),
    (dict(finetune_schedule="linear"), "finetune_schedule"),
])
def test_bad_budget_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict({k: v for k, v in cfg(**kw).to_dict().items()
                          if k in ("target_params", "target_density", "optimizer",
                                   "lam_warmup", "control_every", "group_weight",
                                   "finetune_schedule")})


def test_unknown_lam_layer(tmp_path):
    with pytest.raises(ConfigError, match="lam_layers.*fc9"):
        run_discover(cfg(lam_layers={"fc9": 0.5}, epochs=1), tmp_path / "r", progress=False)
