"""The server's artifacts as data: a folder of `.npy` arrays plus `config.json` (kind, format version, key).

Why a folder of `.npy` files and not one `.npz`: `np.load(..., mmap_mode="r")` maps a `.npy` file but silently reads
a `.npz` member into memory, and several uvicorn workers share the big read-only tables only through the page
cache. Every array is loaded with `allow_pickle=False`, so an artifact can hold numbers and fixed-width strings but
never code. A folder is written under a temporary name and renamed into place: a killed writer leaves either the old
artifact or none, never half of one.

Small artifacts and the models use `fashionrec.artifacts` (one `.npz` each); this folder form exists only for the
tables that workers map.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from fashionrec.artifacts import ArtifactFormatError


class StaleArtifact(ArtifactFormatError):
    """An artifact written by another format version (or damaged): rebuild it; never guess at its contents.
    An ArtifactFormatError, like every other artifact's, so one `except` covers models, index and tables."""


def save_arrays(
    folder: str | Path, kind: str, version: int, arrays: dict[str, np.ndarray], config: dict | None = None
) -> Path:
    """Write `arrays` (name -> array; object arrays refused) and `config` to `folder`, atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.dtype == object:
                raise TypeError(f"{kind}/{name}: object arrays would need pickle; store strings as fixed-width 'U'")
            np.save(tmp / f"{name}.npy", a, allow_pickle=False)
        meta = {"kind": kind, "format_version": version, "arrays": sorted(arrays), "config": config or {}}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        with open(tmp / "config.json", "rb") as f:
            os.fsync(f.fileno())
        old = None
        if folder.exists():  # replace: move the old one aside first (rename over a non-empty folder fails)
            old = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.old"
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_config(folder: str | Path, kind: str, version: int) -> dict:
    """The artifact's config, or StaleArtifact naming what differs (kind, format version, missing or unreadable)."""
    folder = Path(folder)
    path = folder / "config.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise StaleArtifact(f"{folder}: no config.json (not an artifact, or written by an older fashionrec)") from None
    except (OSError, ValueError) as e:
        raise StaleArtifact(f"{path}: unreadable ({e})") from None
    if meta.get("kind") != kind:
        raise StaleArtifact(f"{folder}: holds '{meta.get('kind')}', expected '{kind}'")
    if meta.get("format_version") != version:
        raise StaleArtifact(
            f"{folder}: format version {meta.get('format_version')}, this fashionrec reads version "
            f"{version}; it will be rebuilt"
        )
    return meta


def load_arrays(
    folder: str | Path, kind: str, version: int, *, mmap: bool = False
) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, config) of an artifact written by `save_arrays`; memory-mapped read-only with `mmap=True`."""
    folder = Path(folder)
    meta = read_config(folder, kind, version)
    arrays = {}
    for name in meta["arrays"]:
        path = folder / f"{name}.npy"
        try:
            try:
                arrays[name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except ValueError:
                if not mmap:
                    raise
                arrays[name] = np.load(path, allow_pickle=False)  # an empty array cannot be mapped
        except (OSError, ValueError) as e:
            raise StaleArtifact(f"{folder / name}.npy: unreadable ({e})") from None
    return arrays, meta["config"]
