"""Where features are kept: the SQLite `FeatureStore` (image files' features by model and photo content) and the
`FeatureCache` of a workspace (the store, plus one `.npz` per in-memory array)."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fashionrec.io import atomic_path, default_workspace

log = logging.getLogger(__name__)

FEATURE_DB = "features.sqlite"
_HASH_CHUNK = 1 << 20
_SQL_BATCH = 500  # ids per `IN (...)` query (SQLite allows 32,766 variables; smaller keeps statements cheap)


def content_hash(path: str | Path) -> str:
    """A photo's identity in the feature store: BLAKE2b-128 of its bytes (its path, name and time play no part)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FeatureStore:
    """Image features keyed by (model key, content hash of the photo), in one SQLite database (WAL mode): every
    folder's photos, under any path, for every model; several processes read and write it at once (each write is
    one transaction; readers never wait for writers). A `files` table remembers the hash of each path by size,
    modification time and inode, so unchanged photos are not read again.

    A damaged database is set aside (`features.sqlite.corrupt-<time>`, named in the log) and a new one started:
    features are derived data, recomputed when missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._broken = False
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS features (model TEXT NOT NULL, content TEXT NOT NULL, "
                "vector BLOB NOT NULL, PRIMARY KEY (model, content)) WITHOUT ROWID"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                "mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, content TEXT NOT NULL) WITHOUT ROWID"
            )
        except BaseException:
            con.close()
            raise
        return con

    def _run(self, fn, default):
        """fn(connection) in a transaction; a damaged database is set aside once and fn retried on a new one; any
        other failure (read-only workspace, disk full) logs and returns `default`: the caller computes instead."""
        if self._broken:
            return default
        for attempt in (0, 1):
            try:
                con = self._open()
                try:
                    con.execute("BEGIN")
                    out = fn(con)
                    con.execute("COMMIT")
                    return out
                finally:
                    con.close()
            except sqlite3.DatabaseError as e:
                damaged = "malformed" in str(e) or "not a database" in str(e) or "file is not" in str(e)
                if attempt == 0 and damaged:
                    self._set_aside(e)
                    continue
                log.warning("feature store %s unusable (%s); features are computed without it", self.path, e)
            except OSError as e:
                log.warning("feature store %s unusable (%s); features are computed without it", self.path, e)
            self._broken = True
            return default
        return default

    def _set_aside(self, why) -> None:
        with self._lock:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            for suffix in ("", "-wal", "-shm"):
                p = Path(f"{self.path}{suffix}")
                if p.exists():
                    try:
                        os.replace(p, f"{self.path}.corrupt-{stamp}{suffix}")
                    except OSError:
                        pass
            log.warning(
                "feature store %s is damaged (%s): set aside as %s.corrupt-%s", self.path, why, self.path, stamp
            )

    def hashes(self, paths: Sequence[str | Path]) -> list[str | None]:
        """The content hash of each file (None: missing or unreadable), read again only when its size,
        modification time or inode changed since it was last hashed."""
        stats: list[tuple | None] = []
        for p in paths:
            try:
                st = os.stat(p)
                stats.append((str(Path(p).absolute()), st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError:
                stats.append(None)
        keys = [s[0] for s in stats if s is not None]

        def lookup(con):
            memo = {}
            for b in range(0, len(keys), _SQL_BATCH):
                part = keys[b : b + _SQL_BATCH]
                q = f"SELECT path, size, mtime_ns, inode, content FROM files WHERE path IN ({','.join('?' * len(part))})"
                for row in con.execute(q, part):
                    memo[row[0]] = row
            return memo

        memo = self._run(lookup, {})
        out: list[str | None] = []
        fresh = []
        for s in stats:
            if s is None:
                out.append(None)
                continue
            m = memo.get(s[0])
            if m is not None and tuple(m[1:4]) == s[1:4]:
                out.append(m[4])
                continue
            try:
                h = content_hash(s[0])
            except OSError:
                out.append(None)
                continue
            out.append(h)
            fresh.append((*s, h))
        if fresh:
            self._run(
                lambda con: con.executemany(
                    "INSERT OR REPLACE INTO files (path, size, mtime_ns, inode, content) VALUES (?, ?, ?, ?, ?)", fresh
                ),
                None,
            )
        return out

    def get(self, model: str, contents: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """{content hash: vector} of the stored features of `model` among `contents` (vectors of another size,
        written by a damaged or foreign entry, are ignored)."""
        want = sorted(set(contents))

        def read(con):
            got = {}
            for b in range(0, len(want), _SQL_BATCH):
                part = want[b : b + _SQL_BATCH]
                q = f"SELECT content, vector FROM features WHERE model = ? AND content IN ({','.join('?' * len(part))})"
                for c, blob in con.execute(q, [model, *part]):
                    if isinstance(blob, bytes) and len(blob) == 4 * dim:
                        got[c] = np.frombuffer(blob, dtype=np.float32).copy()
            return got

        return self._run(read, {})

    def put(self, model: str, rows: Iterable[tuple[str, np.ndarray]]) -> None:
        data = [(model, c, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for c, v in rows if c]
        if data:
            self._run(
                lambda con: con.executemany(
                    "INSERT OR REPLACE INTO features (model, content, vector) VALUES (?, ?, ?)", data
                ),
                None,
            )

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self._run(lambda con: con.execute("SELECT COUNT(*) FROM features").fetchone()[0], 0)
        return self._run(
            lambda con: con.execute("SELECT COUNT(*) FROM features WHERE model = ?", (model,)).fetchone()[0], 0
        )


class FeatureCache:
    """Features under `<workspace>/features`: image files' features in the SQLite `FeatureStore` (keyed by model
    and photo content), in-memory arrays' features in one `.npz` per key. Writes are atomic."""

    def __init__(self, workspace: str | Path | None = None):
        self.root = Path(workspace or default_workspace()) / "features"
        self._store: FeatureStore | None = None

    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore(self.root / FEATURE_DB)
        return self._store

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # a damaged cache is recomputed, never fatal
            log.warning("%s: unreadable feature cache (%s); recomputing", p, e)
            return None

    def save(self, key: str, **arrays: np.ndarray) -> Path:
        if key.startswith("files-") and "fingerprints" in arrays:
            # image files' features (`file_fingerprint` strings: path|size|mtime): into the store, by content
            paths = [str(fp).rsplit("|", 2)[0] for fp in np.asarray(arrays["fingerprints"]).tolist()]
            store = self.store()
            store.put(key, zip(store.hashes(paths), np.asarray(arrays["features"], np.float32)))
            return store.path
        p = self.path(key)
        with atomic_path(p, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        return p
