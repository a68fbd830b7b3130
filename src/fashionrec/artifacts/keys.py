"""One key type for "everything an artifact was built from": data files, image contents, backbone weights, settings,
package version. Change any part and the key changes, so a cache built from something else is never reused.

`artifact_key(data=[Path("transactions.csv"), Path("customers.csv")], images=photo_paths,
              backbone=backbone.feature_key(), settings={"k": 50})` -> 'c0ffee...' (hex sha256, 32 chars).

Values may be str/int/float/bool/None, lists/tuples/dicts of them, `Path` (the file's *content* fingerprint:
size + mtime + sha256, cached per (path, size, mtime) so a second call costs one stat), numpy arrays (their bytes)
and bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

KEY_VERSION = 1  # bump when the way keys are computed changes
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file's bytes, cached by (resolved path, size, mtime_ns): replacing the file changes it."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        hit = _SHA_CACHE.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest


def file_fingerprint(path: str | Path) -> str:
    """Content identity of one file: 'size:sha256' (the path itself is left out: a moved copy is the same data)."""
    p = Path(path)
    return f"{p.stat().st_size}:{file_sha256(p)}"


def files_fingerprint(paths: Iterable[str | Path], *, content: bool = True) -> str:
    """One digest for many files (e.g. every photo). content=False uses name+size+mtime only (no reads): cheaper for
    20,000 photos, and still changes when a photo is replaced (new mtime)."""
    h = hashlib.sha256()
    for p in sorted(str(x) for x in paths):
        if content:
            h.update(f"{Path(p).name}|{file_fingerprint(p)}\n".encode())
        else:
            try:
                st = os.stat(p)
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def _canonical(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # nan / inf are not JSON; repr is exact
    if isinstance(value, Path):
        return {"file": file_fingerprint(value)} if value.is_file() else {"missing": str(value)}
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        if a.dtype.hasobject:
            return {"objects": [_canonical(v) for v in a.ravel().tolist()], "shape": list(a.shape)}
        return {"array": hashlib.sha256(a.tobytes()).hexdigest(), "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(value, np.generic):
        return _canonical(value.item())
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    raise TypeError(
        f"artifact_key: cannot key a {type(value).__name__} ({value!r:.80}); pass str, numbers, Path, "
        "numpy arrays, bytes or containers of them"
    )


def artifact_key(**parts: Any) -> str:
    """A hex digest of every part plus the fashionrec version and KEY_VERSION (a new release never reuses a cache).

    Parts are named, so `artifact_key(data=a, settings=b)` and `artifact_key(data=b, settings=a)` differ.
    """
    from fashionrec import __version__

    doc = {"_key_version": KEY_VERSION, "_fashionrec": __version__, **{k: _canonical(v) for k, v in parts.items()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
