"""One artifact file: arrays in a `.npz` plus a JSON header with a format version, read with `allow_pickle=False`.

After implicit's `save` (factors and hyperparameters with `np.savez`, never pickle): loading an artifact can not
run code, and a file from another program, an older fashionrec or a pickle is refused with an error naming the file.

Layout of the zip (a plain `np.savez` archive):
    __artifact__.npy   0-d unicode array: JSON {"format": "fashionrec-artifact", "version": 1, "kind": ...,
                       "fashionrec_version": ..., "config": {...}}
    <name>.npy         one entry per array (numeric, bool, datetime64, fixed-width unicode/bytes; never object)
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fashionrec.errors import FashionrecError
from fashionrec.io import atomic_path

FORMAT = "fashionrec-artifact"
VERSION = 2  # 2: str/object arrays stored as UTF-8 bytes + lengths (1: fixed-width unicode)
HEADER = "__artifact__"


class ArtifactFormatError(FashionrecError):
    """The file is not a readable artifact of this fashionrec (missing, foreign, older format, pickle)."""


class Artifact(NamedTuple):
    config: dict
    arrays: dict[str, np.ndarray]
    kind: str
    fashionrec_version: str


def _package_version() -> str:
    from fashionrec import __version__

    return __version__


def save_artifact(
    path: str | Path, config: dict, arrays: Mapping[str, np.ndarray] | None = None, *, kind: str = "data"
) -> Path:
    """Write `config` (JSON-able) and `arrays` to `path` atomically (temp name + rename).

    `kind` names what the artifact holds ("recommender", "index", ...): `load_artifact(kind=...)` refuses another.
    Object arrays are refused (they would need pickle to load): encode them first (see `artifacts.state`).
    """
    arrays = dict(arrays or {})
    if HEADER in arrays:
        raise ValueError(f"array name '{HEADER}' is reserved")
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"artifact array '{name}' is a {type(a).__name__}, not a numpy array")
        if a.dtype.hasobject:
            raise TypeError(f"artifact array '{name}' has dtype object, which cannot be loaded without pickle")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "fashionrec_version": _package_version(),
        "config": config,
    }
    text = json.dumps(header, allow_nan=True, separators=(",", ":"))
    with atomic_path(path, suffix=".tmp.npz") as tmp:  # np.savez keeps a name that ends in .npz as it is
        np.savez(str(tmp), **{HEADER: np.array(text)}, **arrays)
    return Path(path)


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] <= 5  # pickle protocol 2-5 opcode PROTO


def load_artifact(path: str | Path, kind: str | None = None) -> Artifact:
    """Read an artifact written by `save_artifact` (no pickle: `np.load(allow_pickle=False)`).

    Raises ArtifactFormatError naming the file when it is missing, a pickle (fashionrec before artifact format
    1: refit/rebuild it), not a fashionrec artifact, of another format version, or of another `kind`.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactFormatError(f"{path}: artifact not found" + (" (it is a folder)" if path.is_dir() else ""))
    if not zipfile.is_zipfile(path):
        if _looks_like_pickle(path):
            raise ArtifactFormatError(
                f"{path}: old format (a pickle, written by fashionrec before artifact format {VERSION}); it is not "
                "loaded because unpickling can run code: refit / rebuild it to get a safe file"
            )
        raise ArtifactFormatError(f"{path}: not a fashionrec artifact (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if HEADER not in z.files:
                raise ArtifactFormatError(f"{path}: not a fashionrec artifact (an .npz without '{HEADER}')")
            header = json.loads(str(z[HEADER][()]))
            arrays = {name: z[name] for name in z.files if name != HEADER}
    except ArtifactFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ArtifactFormatError(f"{path}: unreadable artifact ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactFormatError(f"{path}: not a fashionrec artifact (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise ArtifactFormatError(
            f"{path}: artifact format version {header.get('version')}; this fashionrec "
            f"reads version {VERSION}: refit / rebuild it"
        )
    if kind is not None and header.get("kind") != kind:
        raise ArtifactFormatError(f"{path}: holds a '{header.get('kind')}', not a '{kind}'")
    return Artifact(header["config"], arrays, header["kind"], header.get("fashionrec_version", "?"))
