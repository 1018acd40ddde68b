import csv

import optuna
import pytest

from archdisc import tune as tune_mod
from archdisc.cli import main
from archdisc import Config, ConfigError
from archdisc.tune import SizeAwareAbort, TuneSettings, export_best, storage_url, tune


def base(**kw):
    return Config(**{**dict(space="mlp", space_options={"widths": [20, 32, 32, 4]},
                            data="teacher", data_options={"n_train": 600, "n_val": 200,
                                                          "n_test": 200},
                            epochs=2, batch_size=50, lr=1e-2, device="cpu", select="none"),
                         **kw})


def read_front(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_parallel_study_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "study"
    study = tune(base(), out, TuneSettings(trials=4, abort=False), workers=2)
    for name in ("pareto.csv", "pareto.png", "summary.md", "study.journal"):
        assert (out / name).is_file(), name
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:
        assert {"params", "macs", "metric", "graph_hash", "run_dir"} <= set(t.user_attrs)
        assert 1e-3 <= t.params["lam"] <= 1.0
        assert t.values[1] == t.user_attrs["params"]
    rows = read_front(out / "pareto.csv")
    pareto = [r for r in rows if r["pareto"] == "True"]
    assert pareto and len(rows) == 4
    # the Pareto set is exactly the non-dominated trials, checked independently
    pts = [(float(r["metric"]), int(r["params"])) for r in rows]
    for r, (m, p) in zip(rows, pts):
        dominated = any(m2 >= m and p2 <= p and (m2, p2) != (m, p) for m2, p2 in pts)
        assert (r["pareto"] == "True") == (not dominated)
    for r in pareto:  # renders of the Pareto-optimal architectures
        assert (tmp_path / r["run_dir"]).joinpath("compact.svg").is_file()
    # re-running adds trials to the same study, which plain Optuna can open
    tune(base(), out, TuneSettings(trials=1), workers=1)
    loaded = optuna.load_study(study_name="archdisc-mlp-teacher",
                               storage=storage_url(out, None, 1))
    assert len(loaded.trials) == 5
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(read_front(out / "pareto.csv")) == len(complete) >= 4


def test_sqlite_study_failed_trial_and_export_best(tmp_path, monkeypatch):
    out = tmp_path / "study"
    real = tune_mod.run_discover

    def flaky(config, run_dir, **kw):
        if run_dir.name == "1":
            raise RuntimeError("boom")
        return real(config, run_dir, **kw)

    monkeypatch.setattr(tune_mod, "run_discover", flaky)
    tune(base(), out, TuneSettings(trials=3, abort=False), workers=1)
    study = optuna.load_study(study_name="archdisc-mlp-teacher",
                              storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    settings = TuneSettings()
    best, paths = export_best(out, settings)
    rows = [r for r in read_front(out / "pareto.csv") if r["pareto"] == "True"]
    assert best["metric"] == max(float(r["metric"]) for r in rows)
    assert set(paths) == {"safetensors", "torchscript", "onnx", "pt2"}
    smallest = min(rows, key=lambda r: int(r["params"]))
    best, _ = export_best(out, settings, min_metric=float(smallest["metric"]))
    assert best["params"] == int(smallest["params"])
    with pytest.raises(ConfigError, match="no Pareto trial"):
        export_best(out, settings, max_params=0)


def test_scalar_mode_with_median_pruner(tmp_path):
    study = tune(base(epochs=3), tmp_path / "s", TuneSettings(trials=3, mode="scalar"))
    assert len(study.directions) == 1
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and not [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    for t in done:
        frac = t.user_attrs["size_fraction"]
        assert t.value == pytest.approx(t.user_attrs["metric"] - 0.1 * 100 * frac)
        assert sorted(t.intermediate_values) == [1, 2, 3]


def test_size_aware_abort_rule():
    study = optuna.create_study(directions=["maximize", "minimize"])
    curve = {"2": {"metric": 80.0, "density": 0.1}}
    study.add_trial(optuna.trial.create_trial(values=[80, 100], user_attrs={"curve": curve}))
    rule = SizeAwareAbort(study, epochs=6, margin=5.0)
    assert rule.check_epoch == 2
    assert rule.should_abort(2, 70.0, 0.12)       # larger and far below: dominated
    assert rule.should_abort(2, 70.0, 0.095)      # as small (10% slack) and far below
    assert not rule.should_abort(2, 76.0, 0.12)   # within the margin
    assert not rule.should_abort(2, 70.0, 0.05)   # smaller: may be the front's small end
    assert not rule.should_abort(3, 10.0, 0.1)    # only checked once, at a third


def test_bad_settings_and_cli(tmp_path, capsys):
    with pytest.raises(ConfigError, match="two decades"):
        tune(base(), tmp_path, TuneSettings(lam_range=(0.1, 1.0)))
    assert main(["tune", "--out", str(tmp_path / "none"), "--export-best"]) == 2
    assert "no study here" in capsys.readouterr().err


def test_reruns_never_repeat_stale_trials_fail_and_other_configs_are_refused(tmp_path):
    out = tmp_path / "s"
    first = tune(base(epochs=1), out, TuneSettings(trials=2, abort=False))
    # a trial killed mid-run stays RUNNING: the next start (alone on the folder) fails it
    first.ask()
    study = tune(base(epochs=1), out, TuneSettings(trials=2, abort=False))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4
    draws = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(draws)) == len(draws)  # the re-run drew new parameters
    assert study.metric_names == ["val_metric", "params"]
    with pytest.raises(ConfigError, match=r"another base config \(differs in: lr\)"):
        tune(base(epochs=1, lr=0.5), out, TuneSettings(trials=1))
    mixed = tune(base(epochs=1, lr=0.5), out, TuneSettings(trials=1, abort=False),
                 join_different=True)
    assert len(mixed.trials) == 6


def test_killing_the_parent_of_workers_stops_them_and_keeps_finished_trials(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    out = tmp_path / "study"
    exe = Path(sys.executable).with_name("archdisc")
    cmd = [str(exe), "tune", "--out", str(out), "--trials", "40", "--workers", "2",
           "--no-abort", "--space", "mlp", "--space-option", "widths=[20, 32, 32, 4]",
           "--data", "teacher", "--data-option", "n_train=600", "--data-option", "n_val=200",
           "--data-option", "n_test=200", "--epochs", "2", "--select", "none",
           "--batch-size", "50", "--lr", "0.01",
           "--device", "cpu"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "summary.md").exists() and time.time() < deadline:  # written last
        time.sleep(0.2)
    assert (out / "summary.md").exists(), "no trial finished in 120 s"
    workers = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True,
                             text=True).stdout.split()
    assert len(workers) >= 2  # two workers (and multiprocessing's resource tracker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    time.sleep(3)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()
                and "zombie" not in Path(f"/proc/{w}/status").read_text()]
    kept = read_front(out / "pareto.csv")
    assert kept and "trials" in (out / "summary.md").read_text()
    # the next tune marks the killed workers' running trials FAIL and goes on
    S = optuna.trial.TrialState
    before = [t.state for t in optuna.load_study(study_name="archdisc-mlp-teacher",
                                                 storage=storage_url(out, None, 2)).trials]
    study = tune(base(), out, TuneSettings(trials=1, abort=False), workers=1)
    states = [t.state for t in study.trials]
    assert S.RUNNING not in states
    assert states.count(S.FAIL) == before.count(S.RUNNING) + before.count(S.FAIL)
    # every finished trial, also one that finished after the killed parent last wrote the file
    assert len(read_front(out / "pareto.csv")) == before.count(S.COMPLETE) + 1 >= len(kept) + 1
