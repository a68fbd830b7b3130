"""Run configuration: a YAML/TOML file sets defaults, the command line overrides, the resolved result is saved.

No heavy imports here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fashionrec.errors import FashionrecError


def load_config_file(path: str | Path | None) -> dict:
    """A flat mapping of option name -> value (dashes or underscores), or {command: {...}} sections."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise FashionrecError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix in {".toml"}:
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:
        raise FashionrecError(f"{path}: cannot parse config: {e}") from None
    if not isinstance(data, dict):
        raise FashionrecError(f"{path}: config must be a mapping of option names to values")
    return data


def resolved_args(args) -> dict:
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    d["argv"] = sys.argv[1:]
    return d
