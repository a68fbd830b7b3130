"""The parser and the dispatch: global options, then each command module registers its sub-commands."""

from __future__ import annotations

import argparse
import logging
import sys

from fashionrec.cli import demo, embed, experiment, recommend, serve, train
from fashionrec.errors import FashionrecError

DESCRIPTION = (
    "The `fashionrec` command line: image classifiers (train, predict, tag, adapt), recommendations "
    "(recommend, similar, evaluate, embed) and the web server for a shop's data folder."
)

#: In `fashionrec --help` order. A new command group is a module with `register(subparsers)`, listed here.
COMMAND_MODULES = (train, demo, experiment, recommend, embed, serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fashionrec", description=DESCRIPTION)
    p.add_argument(
        "--workspace", help="folder for caches and artifacts (default: $FASHIONREC_HOME or ~/.cache/fashionrec)"
    )
    p.add_argument("--config", help="YAML/TOML/JSON file of option defaults; the command line overrides it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def _apply_config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """--config FILE: flat option defaults for every command, or {command: {...}} sections; the command line wins."""
    from fashionrec.config import load_config_file

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    data = load_config_file(known.config)
    if not data:
        return
    flat = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    for action in parser._subparsers._group_actions:
        for name, subp in action.choices.items():
            subp.set_defaults(**flat, **{k.replace("-", "_"): v for k, v in sections.get(name, {}).items()})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _apply_config_defaults(parser, argv)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        return int(args.func(args) or 0)
    except FashionrecError as e:
        print(f"fashionrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
