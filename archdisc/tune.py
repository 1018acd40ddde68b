"""Optuna search of the regularization strength against quality: the size/quality front.

Every trial is a full ``discover`` run in ``DIR/trials/<number>/``. Two modes:

* ``pareto`` (default): a multi-objective study maximizing the validation metric and
  minimizing the compact model's size (parameters, or MACs). Optuna's pruners are
  single-objective only, so hopeless trials are stopped by our own rule
  (:class:`SizeAwareAbort`): after a third of the epochs, a trial that a finished
  trial dominated at that epoch by a wide margin (as small, far better) is stopped.
* ``scalar``: one objective, ``metric - size_weight * percent of supernet size``,
  with Optuna's ``MedianPruner`` on the per-epoch validation metric.

Storage: an SQLite file in DIR by default (re-running the same command adds trials to
the same study); with ``workers > 1`` a journal file (SQLite locks under parallel
writers); or any Optuna storage URL (e.g. PostgreSQL) so that machines join one study."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import socket
import sys
import threading
import time
from pathlib import Path

import optuna
import torch
from matplotlib.figure import Figure
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from archdisc.deploy.formats import export_run
from archdisc.io import atomic_write_text
from archdisc.plots import save_png
from archdisc.recipe.config import Config, ConfigError
from archdisc.recipe.discover import run_discover
from archdisc.recipe.setup import build_supernet, load_dataset
from archdisc.render import RenderError, render_run

SIZES = ("params", "macs")
MODES = ("pareto", "scalar")


@dataclasses.dataclass
class TuneSettings:
    trials: int = 8
    mode: str = "pareto"
    size: str = "params"               # objective on size: params | macs
    lam_range: tuple = (1e-3, 1.0)     # log-uniform, at least two decades
    lr_range: tuple | None = None      # default: base lr / 3 .. base lr * 3
    density_range: tuple = (0.02, 0.5)
    size_weight: float = 0.1           # scalar mode: metric points per % of supernet size
    abort: bool = True                 # pareto mode: stop hopeless trials early
    abort_margin: float | None = None  # default: 5 accuracy points / 1 dB

    def validate(self):
        if self.trials < 1:
            raise ConfigError(f"trials: must be >= 1, got {self.trials}")
        for name, allowed in (("mode", MODES), ("size", SIZES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r}: choose one of {allowed}")
        lo, hi = self.lam_range
        if not 0 < lo < hi or hi / lo < 100:
            raise ConfigError(f"lam_range {list(self.lam_range)}: need 0 < lo < hi spanning "
                              "at least two decades (hi / lo >= 100)")
        return self


def storage_url(out: Path, storage: str | None, workers: int):
    """The study's storage: the given URL, a journal file for parallel workers, or SQLite."""
    out.mkdir(parents=True, exist_ok=True)
    if storage:
        return storage
    if not (out / "study.db").exists() and (workers > 1 or (out / "study.journal").exists()):
        return JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return f"sqlite:///{out / 'study.db'}"  # an existing study.db: its study continues there


class SizeAwareAbort:
    """Stop a trial that is far behind, at no smaller size, at a third of its epochs.

    At epoch k (a third of the epochs) the trial is compared with the finished trials'
    records at the same epoch: if one of them was at most as dense (non-zero parameter
    fraction, 10% slack) and ``margin`` metric units better, the trial is dominated by a
    wide margin there and stopped. A trial that is worse but smaller is never stopped:
    it may be the front's small end."""
    def __init__(self, study, epochs: int, margin: float):
        self.study, self.margin = study, margin
        self.check_epoch = max(1, math.ceil(epochs / 3))

    def should_abort(self, epoch: int, metric: float, density: float) -> bool:
        if epoch != self.check_epoch:
            return False
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        recs = [t.user_attrs.get("curve", {}).get(str(epoch)) for t in done]
        peers = [r["metric"] for r in recs if r and r["density"] <= 1.1 * density]
        return bool(peers) and metric < max(peers) - self.margin


def graph_hash(graph_json: dict) -> str:
    structure = {"nodes": graph_json["nodes"], "edges": graph_json["edges"]}
    return hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()[:16]


def make_objective(base: Config, out: Path, s: TuneSettings, has_gates: bool):
    def objective(trial: optuna.Trial):
        lr_range = s.lr_range or (base.lr / 3, base.lr * 3)
        params = {"lam": trial.suggest_float("lam", *s.lam_range, log=True),
                  "lr": trial.suggest_float("lr", *lr_range, log=True),
                  "density": trial.suggest_float("density", *s.density_range, log=True),
                  **({"lam_edge": trial.suggest_float("lam_edge", *s.lam_range, log=True)}
                     if has_gates else {})}
        config = dataclasses.replace(base, **params)
        run_dir, curve = out / "trials" / str(trial.number), {}
        trial.set_user_attr("run_dir", str(run_dir))
        abort = SizeAwareAbort(trial.study, config.epochs, s.abort_margin) \
            if s.mode == "pareto" and s.abort else None
        trial.set_user_attr("heartbeat", time.time())

        def on_epoch(epoch, record, net):
            trial.set_user_attr("heartbeat", time.time())
            metric_key = next(k for k in record if k.startswith("val_"))
            value = record[metric_key]
            curve[str(epoch)] = {"metric": value, "density": record["density"]}
            trial.set_user_attr("curve", curve)
            if s.mode == "scalar":
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"median pruner at epoch {epoch}")
            elif abort is not None and abort.should_abort(epoch, value, record["density"]):
                raise optuna.TrialPruned(f"epoch {epoch}: {metric_key} {value:.3g} far below "
                                         "finished trials of similar density")

        report = run_discover(config, run_dir, force=True, progress=False, on_epoch=on_epoch)
        metric = report["val"]["compact"]
        size = report[s.size]["compact"]
        trial.set_user_attr("metric", metric)
        trial.set_user_attr("test_metric", report["test"]["compact"])
        trial.set_user_attr("params", report["params"]["compact"])
        trial.set_user_attr("macs", report["macs"]["compact"])
        trial.set_user_attr("size_fraction", size / report[s.size]["supernet"])
        trial.set_user_attr("wall_seconds", report["wall_seconds"])
        trial.set_user_attr("graph_hash", graph_hash(
            json.loads((run_dir / "compact.json").read_text())))
        if s.mode == "scalar":
            return metric - s.size_weight * 100 * size / report[s.size]["supernet"]
        return metric, size

    return objective


def sampler_for(seed: int, study: optuna.Study, worker: int, shared: bool):
    """A TPE sampler that never repeats another process's draws: its seed mixes the base
    seed, the trials already in the study, the worker index and, for a shared database
    (other machines), this machine and process."""
    key = [seed, len(study.trials), worker] + ([socket.gethostname(), os.getpid()]
                                               if shared else [])
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    return optuna.samplers.TPESampler(seed=int(digest[:8], 16))


def fail_stale_trials(study: optuna.Study, alone: bool, grace: float = 600.0) -> int:
    """Mark trials left RUNNING by a killed process as FAIL: every one when this process
    holds the study folder alone, else those without a heartbeat for ``grace`` seconds."""
    now, failed = time.time(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp())
        if alone or now - beat > grace:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            failed += 1
    return failed


def _optimize(study, base: Config, out: Path, settings: TuneSettings, has_gates, n_trials):
    """Run ``n_trials`` trials; pareto.csv / summary.md are current after every finished
    trial, so a killed tune process loses no finished trial's outputs."""
    study.optimize(make_objective(base, out, settings, has_gates), n_trials=n_trials,
                   catch=(Exception,),
                   callbacks=[lambda st, trial: write_outputs(st, out, settings, echo=False)])


def _worker(base_dict, out, storage, study_name, settings_dict, n_trials, has_gates, index,
            parent):
    """One of tune's worker processes. It stops when the tune process ``parent`` (its pid,
    given by the parent: a parent killed while this process still starts up is seen too)
    dies, kill -9 included; its running trial is then marked FAIL by the next tune here."""
    def exit_with_parent():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(1)  # K workers share the cores
    base, out = Config.from_dict(base_dict), Path(out)
    study = optuna.load_study(study_name=study_name, storage=storage_url(out, storage, 2))
    study.sampler = sampler_for(base.seed, study, index, bool(storage))
    _optimize(study, base, out, TuneSettings(**settings_dict), has_gates, n_trials)


def tune(base: Config, out, settings: TuneSettings, storage: str | None = None,
         study_name: str | None = None, workers: int = 1,
         join_different: bool = False) -> optuna.Study:
    """Run ``settings.trials`` more trials of the study in ``out`` and write its outputs.
    A study made with another base config (or settings) is refused unless
    ``join_different``."""
    settings.validate()
    base = base.validate()
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("tune does not run under torchrun: start it as one process; --workers "
                          "K runs K trials at a time, --storage spreads them over machines")
    if settings.abort_margin is None:
        settings.abort_margin = 5.0 if base.task == "classification" else 1.0
    out = Path(out)
    study_name = study_name or f"archdisc-{base.space}-{base.data}"
    directions = ["maximize"] if settings.mode == "scalar" else ["maximize", "minimize"]
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) \
        if settings.mode == "scalar" else None
    url = storage_url(out, storage, workers)
    study = _open_study(url, study_name, directions, pruner)
    _check_same_base(study, base, settings, join_different)
    with _alone(out) as alone:
        stale = fail_stale_trials(study, alone=alone and not storage)
        study.sampler = sampler_for(base.seed, study, 0, bool(storage))
        where = url if isinstance(url, str) else out / "study.journal"
        stale = f", {stale} left running by a killed process marked FAIL" if stale else ""
        print(f"study {study_name!r} in {where} ({len(study.trials)} trials so far{stale})",
              file=sys.stderr)
        has_gates = bool(build_supernet(base, load_dataset(base)).candidate_edges())
        if workers == 1:
            _optimize(study, base, out, settings, has_gates, settings.trials)
        else:
            share = [settings.trials // workers + (i < settings.trials % workers)
                     for i in range(workers)]
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker, args=(base.to_dict(), str(out), storage,
                                                       study_name, dataclasses.asdict(settings),
                                                       n, has_gates, i + 1, os.getpid()))
                     for i, n in enumerate(share) if n]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
    write_outputs(study, out, settings)
    return study


def _open_study(url, study_name, directions, pruner) -> optuna.Study:
    """Create or load the study; a missing database driver or an unreachable server is
    one clear ConfigError."""
    for attempt in range(3):  # machines starting together race to create the tables
        try:
            return optuna.create_study(study_name=study_name, directions=directions,
                                       pruner=pruner, storage=url, load_if_exists=True)
        except ImportError as e:  # ModuleNotFoundError too: the URL's driver is missing
            hint = " (pip install -e '.[postgres]')" if str(url).startswith("postgres") else ""
            raise ConfigError(f"--storage: the database driver is not installed{hint}: "
                              f"{e}") from None
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors: server down, bad URL
            if type(e).__module__.split(".")[0] not in ("sqlalchemy", "psycopg", "psycopg2"):
                raise
            if attempt < 2:
                time.sleep(1 + attempt)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--storage: cannot open the study storage {url}: "
                              f"{first}") from None


def _check_same_base(study, base: Config, settings: TuneSettings, join_different: bool):
    """The study remembers the base config and settings it was made with; names objectives."""
    mine = {k: v for k, v in base.to_dict().items() if k != "seed"}
    mine["tune"] = {k: getattr(settings, k) for k in ("mode", "size", "lam_range", "lr_range",
                                                     "density_range", "size_weight")}
    mine = json.loads(json.dumps(mine))  # tuples -> lists, as stored
    old = study.user_attrs.get("base")
    if old is None:
        study.set_user_attr("base", mine)
        study.set_metric_names(["val_metric"] + ([] if settings.mode == "scalar"
                                                 else [settings.size]))
    elif old != mine and not join_different:
        diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
        raise ConfigError(f"study {study.study_name!r} was made with another base config "
                          f"(differs in: {', '.join(diff)}); use another --out / --study, or "
                          f"pass --join-different to mix the trials")


@contextlib.contextmanager
def _alone(out: Path):
    """Hold an exclusive lock on the study folder while tuning; yields whether this
    process got it (False: another tune process works in the same folder)."""
    import fcntl
    with open(out / ".tune.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


# ---------------------------------------------------------------------- outputs
def front(study, settings: TuneSettings):
    """Finished trials as rows, each marked whether it is on the Pareto front."""
    rows = [{"trial": t.number, "metric": t.user_attrs["metric"],
             "test_metric": t.user_attrs["test_metric"], "params": t.user_attrs["params"],
             "macs": t.user_attrs["macs"], **{k: t.params[k] for k in sorted(t.params)},
             "graph_hash": t.user_attrs["graph_hash"], "run_dir": t.user_attrs["run_dir"]}
            for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for r in rows:  # on the front: no other trial at least as good in both, better in one
        r["pareto"] = not any(
            o["metric"] >= r["metric"] and o[settings.size] <= r[settings.size]
            and (o["metric"] > r["metric"] or o[settings.size] < r[settings.size])
            for o in rows)
    return sorted(rows, key=lambda r: r[settings.size])


def write_outputs(study, out: Path, settings: TuneSettings, echo: bool = True):
    rows = front(study, settings)
    states = [t.state.name for t in study.trials]
    if rows:
        cols = ["trial", "pareto", "metric", "test_metric", "params", "macs", "lam", "lr",
                "density"] + (["lam_edge"] if "lam_edge" in rows[0] else []) + \
               ["graph_hash", "run_dir"]
        lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
        atomic_write_text(out / "pareto.csv", "\n".join(lines) + "\n")
        plot_front(rows, out / "pareto.png", settings.size)
        for run_dir in (Path(r["run_dir"]) for r in rows if r["pareto"]):
            try:
                render_run(run_dir, "svg")
            except (RenderError, FileNotFoundError) as e:
                print(f"tune: could not render {run_dir}: {e}")
    md = [f"# Study `{study.study_name}`", "",
          f"{len(states)} trials: " + ", ".join(f"{states.count(s)} {s.lower()}"
                                                for s in sorted(set(states))), "",
          f"| trial | pareto | val metric | test metric | {settings.size} | lam | lr | density |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['trial']} | {'**yes**' if r['pareto'] else ''} | {r['metric']:.2f} | "
           f"{r['test_metric']:.2f} | {r[settings.size]:,} | {r['lam']:.3g} | {r['lr']:.3g} | "
           f"{r['density']:.3g} |" for r in rows]
    text = "\n".join(md) + "\n"
    atomic_write_text(out / "summary.md", text)
    if echo:
        print(text)


def plot_front(rows, path: Path, size: str):
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    dom = [r for r in rows if not r["pareto"]]
    par = sorted((r for r in rows if r["pareto"]), key=lambda r: r[size])
    xy = lambda rs: ([r[size] for r in rs], [r["metric"] for r in rs])  # noqa: E731
    ax.scatter(*xy(dom), alpha=0.3, color="grey", label="dominated")
    ax.step(*xy(par), where="post", color="C3")
    ax.scatter(*xy(par), color="C3", zorder=3, label="Pareto front")
    for r in par:
        ax.annotate(str(r["trial"]), (r[size], r["metric"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel=f"compact model {size}", ylabel="validation metric")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def pick(study, settings: TuneSettings, min_metric=None, max_params=None) -> dict:
    """The Pareto trial for a trade-off: the smallest with metric >= ``min_metric``, or
    the best with size <= ``max_params``, or (neither given) the best metric."""
    par = [r for r in front(study, settings) if r["pareto"]]
    if min_metric is not None:
        best = min((r for r in par if r["metric"] >= min_metric),
                   key=lambda r: r[settings.size], default=None)
    else:
        best = max((r for r in par if max_params is None or r[settings.size] <= max_params),
                   key=lambda r: r["metric"], default=None)
    if best is None:
        raise ConfigError(f"no Pareto trial meets min_metric={min_metric} / "
                         f"max_params={max_params}; see pareto.csv for what the study found")
    return best


def export_best(out, settings: TuneSettings, storage=None, study_name=None,
                min_metric=None, max_params=None):
    """Export the Pareto trial chosen by :func:`pick` like ``archdisc export``."""
    out = Path(out)
    if storage is None and not any((out / f).exists() for f in ("study.db", "study.journal")):
        raise ConfigError(f"--out {out}: no study here (no study.db or study.journal)")
    url = storage_url(out, storage, 1)
    names = optuna.get_all_study_names(url)
    if study_name is None and len(names) != 1:
        raise ConfigError(f"--study: the storage holds {len(names)} studies {names}; name one")
    study = optuna.load_study(study_name=study_name or names[0], storage=url)
    best = pick(study, settings, min_metric, max_params)
    return best, export_run(Path(best["run_dir"]))
