"""The ``archdisc`` command.

    archdisc spaces                                  list the built-in search spaces
    archdisc discover --space mlp --data fashion-mnist --out runs/demo [options]

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
from pathlib import Path


def _add_spaces(sub):
    p = sub.add_parser("spaces", help="list the built-in search spaces",
                       description="List the built-in search spaces.")
    p.set_defaults(func=_spaces)


def _spaces(args) -> int:
    from search_spaces import SPACES
    width = max(map(len, SPACES))
    for name, (_, description) in SPACES.items():
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


def _add_discover(sub):
    from .train import CHOICES, Config
    p = sub.add_parser(
        "discover", help="train a supernet, extract the discovered architecture",
        description="Train the supernet of a search space with sparse Bregman iterations, "
                    "extract the architecture that survived, evaluate both on the test "
                    "split and write everything into the run folder --out.",
        epilog="Settings come from the defaults, then --config FILE.toml (or, with --resume "
               "and no --config, OUT/config.toml), then the options given here.")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--config", type=Path, help="TOML file with config fields")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="overwrite the run in --out even if its config differs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's choice); 1 is often fastest "
                        "for small models on a busy machine. Resume with the same N for "
                        "bit-identical results")
    p.add_argument("--space-option", action="append", type=_option_value, default=[],
                   metavar="KEY=VALUE", help="search-space option, e.g. widths=[784,64,10]")
    p.add_argument("--data-option", action="append", type=_option_value, default=[],
                   metavar="KEY=VALUE", help="dataset option, e.g. teacher_widths=[8,4]")
    # one option per scalar config field, e.g. --batch-size; only given ones override
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        typ = hints[f.name]
        typ = next((a for a in typing.get_args(typ) if a is not type(None)), typ)
        if typ is dict:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        allowed = "|".join(CHOICES[f.name]) + " " if f.name in CHOICES else ""
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ,
                       default=argparse.SUPPRESS, metavar=f.name.upper(),
                       help=f"{allowed}(default: {default})")
    p.set_defaults(func=_discover)


def _discover(args) -> int:
    from .train import Config, ConfigError, load_config, run_discover
    names = {f.name for f in dataclasses.fields(Config)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.space_option:
        overrides["space_options"] = dict(args.space_option)
    if args.data_option:
        overrides["data_options"] = dict(args.data_option)
    path = args.config
    if path is None and args.resume and (args.out / "config.toml").exists():
        path = args.out / "config.toml"
    config = load_config(path, overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads: must be an integer >= 1")
        import torch
        torch.set_num_threads(args.threads)
    report = run_discover(config, args.out, resume=args.resume, force=args.force,
                          progress=not args.quiet)
    print(f"outputs in {args.out}/: compact.safetensors + compact.json (discovered model), "
          f"report.md, report.json, metrics.jsonl, config.toml")
    print(report["headline"])
    return 0


# ---------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archdisc", description="Neural architecture discovery with sparse Bregman "
                                     "iterations.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_spaces, _add_discover):
        add(sub)
    return parser


def main(argv=None) -> int:
    from .data import DataError
    from .graph import GraphError
    from .train import ConfigError, RunError, TrainingError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunError, DataError, GraphError) as e:
        print(f"archdisc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"archdisc {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = (f"; continue with: archdisc discover --out {args.out} --resume"
                if args.command == "discover" else "")
        print(f"archdisc {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
