"""Atomic artifact writes and the workspace folder.

Every artifact is written to a temporary name in its destination folder and renamed when complete, so a crash
or a kill mid-write leaves the previous artifact intact (os.replace is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def default_workspace() -> Path:
    """`$FASHIONREC_HOME`, else the user's cache folder (`$XDG_CACHE_HOME/fashionrec` or ~/.cache/fashionrec).

    Never the data folder: it may be read-only (a shared mount) and must not be polluted.
    """
    env = os.environ.get("FASHIONREC_HOME")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashionrec"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else ".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have (0666 minus umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(df, path: str | Path) -> None:
    """A pandas DataFrame as CSV without its index, written atomically."""
    with atomic_path(path, suffix=".tmp.csv") as tmp:
        df.to_csv(tmp, index=False)
