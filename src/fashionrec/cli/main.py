"""The parser and the dispatch: global options, then each command module registers its sub-commands."""

from __future__ import annotations

import argparse
import logging
import sys

from fashionrec.cli import common, demo, embed, experiment, recommend, serve, train
from fashionrec.errors import FashionrecError

DESCRIPTION = (
    "The `fashionrec` command line: image classifiers (train, predict, tag, adapt), recommendations "
    "(recommend, similar, evaluate, embed) and the web server for a shop's data folder."
)

#: In `fashionrec --help` order. A new command group is a module with `register(subparsers)`, listed here.
COMMAND_MODULES = (train, demo, experiment, recommend, embed, serve)


EPILOG = common.examples(
    "fashionrec demo",
    "fashionrec tag --data shop --label-column product_type_name --out tags.csv",
    "fashionrec --config run.yaml recommend --data shop --out recs.csv",
) + (
    "\n\n--config FILE (YAML, TOML or JSON): option values as `name: value` pairs for every command, or one\n"
    "section per command (`recommend: {k: 24}`); the command line wins. Unknown names and invalid values\n"
    "are errors naming the key.\n\n"
    "`fashionrec COMMAND --help` describes each command's options, with an example."
)

#: Options of the top-level parser: in a config file they set the top-level defaults, not a command's.
GLOBAL_KEYS = ("workspace", "quiet", "verbose")


def build_parser() -> argparse.ArgumentParser:
    p = common.Parser(prog="fashionrec", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument(
        "--workspace", help="folder for caches and artifacts (default: $FASHIONREC_HOME or ~/.cache/fashionrec)"
    )
    p.add_argument(
        "--config",
        help="YAML/TOML/JSON file of option values (default: none); the command line overrides it",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO level)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=common.Parser, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """name -> parser of every sub-command (aliases included once)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _key(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def _option_table(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every name a config file may use for an option of `parser` (its dest and each spelling) -> the action."""
    table = {}
    for a in parser._actions:
        if not a.option_strings or isinstance(a, argparse._HelpAction) or a.dest == "config":
            continue
        for name in (a.dest, *(_key(o) for o in a.option_strings)):
            table[name] = a
    return table


def _unknown(path, key: str, known, where: str) -> FashionrecError:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return FashionrecError(f"{path}: unknown option '{key}'{where}{hint}")


def _config_value(path, key: str, action: argparse.Action, value):
    """`value` for `action` as the command line would parse it; an invalid one is an error naming the key."""
    bad = f"{path}: option '{key}'"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise FashionrecError(f"{bad}: expected true or false, not {value!r}")
        return value
    if isinstance(value, (dict, list)):
        raise FashionrecError(f"{bad}: expected a single value, not {value!r}")
    if isinstance(value, bool) and action.choices is not None and {"yes", "no"} <= set(action.choices):
        value = "yes" if value else "no"  # YAML reads yes/no as booleans
    if action.type is not None and value is not None:
        numeric = action.type in (int, float)
        if isinstance(value, bool) or (action.type is int and isinstance(value, float) and not value.is_integer()):
            raise FashionrecError(f"{bad}: invalid {action.type.__name__} value {value!r}")
        try:
            value = action.type(value if numeric and isinstance(value, (int, float)) else str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            why = str(e) if isinstance(e, argparse.ArgumentTypeError) else f"invalid {action.type.__name__} value"
            raise FashionrecError(f"{bad}: {why}: {value!r}") from None
    elif value is not None and not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise FashionrecError(f"{bad}: invalid choice {value!r} (choose from {choices})")
    return value


def _warn_if_renamed(path, key: str, action: argparse.Action) -> bool:
    old = "--" + key.split(".")[-1].replace("_", "-")
    if isinstance(action, common.RenamedOption) and old in action.deprecated:
        new = action.option_strings[0].lstrip("-")
        print(f"fashionrec: warning: {path}: '{key}' is deprecated; use '{new}'", file=sys.stderr)
        return True
    return False


def _set_default(parser: argparse.ArgumentParser, action: argparse.Action, value) -> None:
    parser.set_defaults(**{action.dest: value})
    action.required = False  # a config file may supply a required option


def _apply_config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """--config FILE: option values for every command (`name: value`), or {command: {...}} sections; the command
    line wins. Names may use dashes or underscores; unknown names and invalid values are errors naming the key."""
    from fashionrec.config import load_config_file

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    data = load_config_file(known.config)
    if not data:
        return
    path = known.config
    commands = subcommands(parser)
    tables = {name: _option_table(subp) for name, subp in commands.items()}
    top = {k: a for k, a in _option_table(parser).items() if k in GLOBAL_KEYS}
    ordered = sorted(data.items(), key=lambda kv: isinstance(kv[1], dict))  # flat values first: sections win
    for raw_key, value in ordered:
        key = _key(str(raw_key))
        if isinstance(value, dict):
            if key not in commands:
                raise _unknown(path, key, commands, " (a section must be a command)")
            for raw_sub, sub_value in value.items():
                sub_key = _key(str(raw_sub))
                if sub_key in top:
                    _set_default(parser, top[sub_key], _config_value(path, sub_key, top[sub_key], sub_value))
                    continue
                if sub_key not in tables[key]:
                    raise _unknown(path, sub_key, tables[key], f" for `fashionrec {key}`")
                action = tables[key][sub_key]
                _warn_if_renamed(path, sub_key, action)
                _set_default(commands[key], action, _config_value(path, f"{key}.{sub_key}", action, sub_value))
        elif key in top:
            _set_default(parser, top[key], _config_value(path, key, top[key], value))
        else:
            owners = [name for name, table in tables.items() if key in table]
            if not owners:
                raise _unknown(path, key, set().union(*tables.values(), top), "")
            warned = False
            for name in owners:
                action = tables[name][key]
                warned = warned or _warn_if_renamed(path, key, action)
                _set_default(commands[name], action, _config_value(path, key, action, value))


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line, --config applied, without running anything (argparse exits 2 on bad options)."""
    parser = build_parser()
    _apply_config_defaults(parser, argv)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
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
