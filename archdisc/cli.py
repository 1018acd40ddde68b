"""The ``archdisc`` command.

    archdisc spaces                                  list the built-in search spaces
    archdisc discover --space mlp --data fashion-mnist --out runs/demo [options]
    archdisc discover --model torchvision.models:resnet18 --model-option num_classes=10 \
                      --data my_images/ --out runs/r18     (any nn.Module, via torch.fx)
    archdisc render RUN [--format svg|png|pdf] [--supernet]
    archdisc export RUN [--format safetensors|torchscript|onnx|pt2|all]
    archdisc tune --space mlp --data fashion-mnist --trials 20 --out study [options]

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser
and sets ``func``; :func:`main` parses, calls ``func`` and turns the known errors into
a one-line message and an exit status (2: bad usage or config, 1: the run failed).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tomllib
import typing
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from archdisc.data import available_datasets
from archdisc.deploy.formats import FORMATS as EXPORT_FORMATS, export_run
from archdisc.errors import ArchdiscError, ConfigError, TrainingError
from archdisc.recipe import rundir
from archdisc.recipe.config import CHOICES, Config, load_config
from archdisc.recipe.discover import run_discover
from archdisc.render import FORMATS as PICTURE_FORMATS, RenderError, render_run
from archdisc.spaces import spaces
from archdisc.tune import MODES, SIZES, TuneSettings, export_best, tune


def _add_spaces(sub):
    p = sub.add_parser("spaces", help="list the built-in search spaces",
                       description="List the built-in search spaces.")
    p.set_defaults(func=_spaces)


def _spaces(args) -> int:
    width = max(map(len, spaces()))
    for name, (_, description) in spaces().items():
        print(f"{name:<{width}}  {description}")
    return 0


# ---------------------------------------------------------------------- discover
def _option_value(text: str):
    """``key=value`` with a TOML value (``[20, 32]``, ``0.5``, ``true``) or a bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


def _boolean(text: str) -> bool:
    """true / false (also yes / no, 1 / 0), as in TOML; anything else is refused."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.strip().lower() not in value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return value[text.strip().lower()]


def _add_discover(sub):
    p = sub.add_parser(
        "discover", help="train a supernet, extract the discovered architecture",
        description="Train the supernet of a search space with sparse Bregman iterations, "
                    "extract the architecture that survived, evaluate both on the test "
                    "split and write everything into the run folder --out.",
        epilog="Settings come from the defaults, then --config FILE.toml (or, with --resume "
               "and no --config, OUT/config.toml), then the options given here.")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="overwrite the run in --out even if its config differs")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no progress lines (errors and the result only)")
    _add_config_options(p)
    p.set_defaults(func=_discover)


def _add_config_options(p):
    """--config FILE, then one option per Config field in the fields' order (the dict
    fields as repeatable KEY=VALUE options, --threads after --device); the expert fields
    in a group of their own after the others."""
    p.add_argument("--config", type=Path, help="TOML file with config fields")
    expert = p.add_argument_group(
        "expert options", "research knobs of the optimizer, the lam controller and the "
                          "select stage; the defaults are the measured recipe")
    hints = typing.get_type_hints(Config)
    listed = {**CHOICES, "space": tuple(spaces()), "data": tuple(available_datasets())}
    for f in dataclasses.fields(Config):
        group = expert if f.metadata["expert"] else p
        _add_field_option(group, f, hints[f.name], listed.get(f.name))
        if f.name == "device":
            group.add_argument(
                "--threads", type=int, metavar="N",
                help="CPU threads for torch (default: torch's choice); 1 is often fastest "
                     "for small models on a busy machine. Resume with the same N for "
                     "bit-identical results")


# the dict fields with an option of their own (one KEY=VALUE each, repeatable)
_TABLE_OPTIONS = {
    "space_options": ("--space-option", "search-space option, e.g. widths=[784,64,10]"),
    "data_options": ("--data-option", "dataset option, e.g. teacher_widths=[8,4]"),
    "model_options": ("--model-option", "keyword argument of the --model callable, "
                                        "e.g. num_classes=10"),
}


def _add_field_option(group, f, typ, choices=None):
    """The option of Config field ``f`` (type ``typ``), e.g. --batch-size; only given ones
    override. The help text is the field's ``help`` metadata (archdisc/recipe/config.py)
    and ``choices``, the values it allows."""
    if f.name in _TABLE_OPTIONS:
        flag, text = _TABLE_OPTIONS[f.name]
        group.add_argument(flag, action="append", type=_option_value, default=[],
                           metavar="KEY=VALUE", help=text)
        return
    doc = f.metadata["help"]
    typ = next((a for a in typing.get_args(typ) if a is not type(None)), typ)
    flag = "--" + f.name.replace("_", "-")
    if typ is dict:
        group.add_argument(flag, dest=f.name, action="append", type=_option_value,
                           default=argparse.SUPPRESS, metavar="KEY=VALUE",
                           help=f"{doc}; repeat the option for several keys")
        return
    default = f.default if f.default is not dataclasses.MISSING else None
    allowed = f"; one of: {', '.join(choices)}" if choices else ""
    group.add_argument(flag, dest=f.name, type=_boolean if typ is bool else typ,
                       default=argparse.SUPPRESS, metavar=f.name.upper(),
                       help=f"{doc}{allowed} (default: {default})".replace("%", "%%"))


def _config_from_args(args, path=None):
    names = {f.name for f in dataclasses.fields(Config)}
    overrides = {k: dict(v) if isinstance(v, list) else v
                 for k, v in vars(args).items() if k in names}
    if args.space_option:
        overrides["space_options"] = dict(args.space_option)
    if args.data_option:
        overrides["data_options"] = dict(args.data_option)
    if args.model_option:
        overrides["model_options"] = dict(args.model_option)
    config = load_config(path or args.config, overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads: must be an integer >= 1")
        torch.set_num_threads(args.threads)
    return config


def _discover(args) -> int:
    path = None
    if args.config is None and args.resume and (args.out / "config.toml").exists():
        path = args.out / "config.toml"
    config = _config_from_args(args, path)
    report = run_discover(config, args.out, resume=args.resume, force=args.force,
                          progress=not args.quiet)
    if not report:  # a torchrun rank other than 0: rank 0 writes and reports
        return 0
    try:
        render_run(args.out, "svg")
        pictures = ", compact.svg (the discovered graph), growth.png" + (
            ", selection.png" if (args.out / "selection.png").exists() else "")
    except RenderError as e:
        pictures = ""
        print(f"archdisc discover: no picture: {e}", file=sys.stderr)
    print(f"outputs in {args.out}/: compact.safetensors + compact.json (discovered model), "
          f"report.md, report.json, metrics.jsonl, config.toml{pictures}")
    print(report["headline"])
    return 0


# ---------------------------------------------------------------------- render, export
def _run_parser(sub, name, help, description):
    """A subcommand that reads a discover run folder (its one positional argument)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("run", type=Path, help="a discover run folder")
    return p


def _add_render(sub):
    p = _run_parser(sub, "render", "draw the discovered architecture and its growth",
                    "Draw RUN's discovered graph with Graphviz (and the Graphviz source .gv), "
                    "the growth plot growth.png and selection.png (the models the select "
                    "stage scored).")
    p.add_argument("--format", choices=PICTURE_FORMATS, default="svg",
                   help="picture format: svg, png or pdf (default: svg)")
    p.add_argument("--supernet", action="store_true",
                   help="also draw the whole supernet, dead units, nodes and edges greyed")
    p.set_defaults(func=_render)


def _render(args) -> int:
    for path in render_run(args.run, args.format, args.supernet):
        print(path)
    return 0


def _add_export(sub):
    p = _run_parser(sub, "export", "export the compact model for deployment",
                    "Export RUN's compact model (dynamic batch size) into RUN/export/; every "
                    "file is checked against the PyTorch model before it is reported.")
    p.add_argument("--format", choices=(*EXPORT_FORMATS, "all"), default="all",
                   help="which format to write (default: all)")
    p.set_defaults(func=_export)


def _export(args) -> int:
    formats = EXPORT_FORMATS if args.format == "all" else (args.format,)
    written = export_run(args.run, formats)
    for fmt, path in written.items():
        print(f"{fmt:<12} {path}")
    for fmt, ms in rundir.add_export_latency(Path(args.run), written).items():
        print(f"{fmt:<12} {ms[0]:.3g} ms at batch 1, {ms[1]:.3g} ms at batch 64 "
              f"({torch.get_num_threads()} thread(s); in report.md)")
    return 0


# ---------------------------------------------------------------------- tune
def _add_tune(sub):
    p = sub.add_parser(
        "tune", help="Optuna search of lam against size: the Pareto front",
        description="Run --trials discover runs with lam (log scale), lr, initial density "
                    "(and the edge lam where the space has gates) chosen by Optuna; keep "
                    "the Pareto front of validation metric versus compact size. Re-running "
                    "the same command adds trials to the same study.",
        epilog="Several machines can join one study through a database URL, e.g. "
               "--storage postgresql://user:pw@host/db --study NAME on each machine "
               "(psycopg 3: the [postgres] extra).")
    p.add_argument("--out", required=True, type=Path, help="study folder")
    p.add_argument("--trials", type=int, default=8, help="trials to add (default 8)")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel local processes, each running single-process trials "
                        "(a journal file replaces SQLite); tune never starts torchrun")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite file in --out)")
    p.add_argument("--study", help="study name (default: archdisc-SPACE-DATA)")
    p.add_argument("--mode", choices=MODES, default="pareto",
                   help="pareto: two objectives; scalar: metric - weight * size%% with a "
                        "median pruner")
    p.add_argument("--size", choices=SIZES, default="params", help="size objective")
    p.add_argument("--lam-range", type=float, nargs=2, metavar=("LO", "HI"),
                   default=(1e-3, 1.0), help="lam search range, log scale (default 1e-3 1)")
    p.add_argument("--no-abort", action="store_true",
                   help="pareto mode: never stop hopeless trials early")
    p.add_argument("--export-best", action="store_true",
                   help="do not search: export the chosen Pareto trial of the study in --out")
    p.add_argument("--min-metric", type=float, help="with --export-best: smallest model "
                                                    "with validation metric >= X")
    p.add_argument("--max-params", type=float, help="with --export-best: best model with "
                                                    "size <= P")
    p.add_argument("--join-different", action="store_true",
                   help="add trials to a study made with another base config (mixes them)")
    _add_config_options(p)
    p.set_defaults(func=_tune)


def _tune(args) -> int:
    settings = TuneSettings(trials=args.trials, mode=args.mode, size=args.size,
                            lam_range=tuple(args.lam_range), abort=not args.no_abort)
    if args.export_best:
        trial, paths = export_best(args.out, settings, args.storage, args.study,
                                   args.min_metric, args.max_params)
        print(f"trial {trial['trial']}: validation metric {trial['metric']:.2f}, "
              f"{trial['params']:,} params")
        for fmt, path in paths.items():
            print(f"{fmt:<12} {path}")
        return 0
    config = _config_from_args(args)
    tune(config, args.out, settings, storage=args.storage, study_name=args.study,
         workers=args.workers, join_different=args.join_different)
    print(f"outputs in {args.out}/: pareto.csv, pareto.png, summary.md, trials/")
    return 0


# ---------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archdisc", description="Neural architecture discovery with sparse Bregman "
                                     "iterations.")
    try:
        v = version("archdisc")
    except PackageNotFoundError:
        v = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"archdisc {v}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_spaces, _add_discover, _add_render, _add_export, _add_tune):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingError as e:
        print(f"archdisc {args.command}: {e}", file=sys.stderr)
        return 1
    except (ArchdiscError, FileNotFoundError) as e:
        print(f"archdisc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (f"; continue with: archdisc discover --out {args.out} --resume"
                if args.command == "discover" else "")
        print(f"archdisc {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
