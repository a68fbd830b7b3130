"""New arrivals on disk: one folder per shop, keyed by the shop's content, written so that a crash loses nothing.

Layout of `<workspace>/arrivals/<shop key>/`:
- `<id>.img`: the uploaded bytes as received; `<id>.meta.json`: the arrival's metadata (a copy of its registry row,
  so the registry can be rebuilt from the files alone);
- `arrivals.json`: the registry, `{"format": 2, "fashionrec": version, "shop": {...}, "arrivals": {id: row}}`;
  an id is an arrival when the registry names it (the commit point);
- `vectors/`: the arrivals' projected vectors (`serving.store` arrays), so a restart needs no backbone;
- `uncommitted/`: files of uploads whose writer died before the registry named them (counted by the storage cap);
- `.lock`: taken (fcntl.flock) around every change of the folder, so several server processes can share it
  (each writes the registry merged with what the others committed; a server sees the others' arrivals after its
  next start).

The key is a hash of the catalog's ids and the customers' ids, not of the data folder's path: a moved or copied
data folder keeps its arrivals. A registry found under another key that belongs to the same shop (same catalog, or
same data folder path, e.g. a new customers.csv; a version-1 registry keyed by the folder's path) is migrated into
this folder (files copied, the old registry renamed `arrivals.json.migrated-<time>`), never dropped.

A registry that does not parse or has the wrong shape is renamed `arrivals.json.corrupt-<time>` (kept for
inspection), a message names it, and the arrivals are recovered from their `.img` + `.meta.json` files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)
REGISTRY = "arrivals.json"
REGISTRY_FORMAT = 2
UNCOMMITTED = "uncommitted"
LOCK = ".lock"
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
META_SUFFIX = ".meta.json"
FAULT_ENV = "FASHIONREC_FAULT_POINT"  # testing hook: the write step at which the process kills itself (SIGKILL)
MAX_META_VALUE = 1000


def fault_point(step: str) -> None:
    """Kill this process (SIGKILL, no clean-up) when $FASHIONREC_FAULT_POINT names `step`: how the fault-injection
    tests stop a real server between two write steps. Does nothing otherwise."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _digest(ids: Iterable) -> str:
    h = hashlib.sha1()
    for i in ids:
        h.update(i if isinstance(i, bytes) else str(i).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def shop_identity(catalog_ids: Iterable[str], customer_ids: Iterable) -> dict:
    """{"key", "catalog_key"}: the arrivals folder's name (catalog ids + customer ids, in sorted order) and the
    catalog's own hash (a registry of the same catalog with other customers is migrated, not dropped)."""
    cat = _digest(sorted(catalog_ids))
    cust = _digest(customer_ids)
    return {"key": hashlib.sha1(f"{cat}|{cust}".encode()).hexdigest()[:16], "catalog_key": cat[:16]}


def path_key(data_root: Path) -> str:
    """The folder name fashionrec 0.1 registries used: a hash of the data folder's path."""
    return hashlib.sha1(str(data_root).encode()).hexdigest()[:12]


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"


def clean_metadata(meta) -> dict:
    """The metadata of a registry row: str keys, scalar values (anything else is dropped), or ValueError."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f"metadata is a {type(meta).__name__}, not an object")
    out = {}
    for k, v in meta.items():
        if isinstance(v, str):
            v = v[:MAX_META_VALUE]
        elif not (isinstance(v, (int, float, bool)) or v is None):
            continue
        out[str(k)[:100]] = v
    return out


class RegistryError(ValueError):
    """The registry file does not hold a registry (truncated, not JSON, wrong types)."""


def parse_registry(text: str) -> tuple[dict, dict]:
    """(header, {id: raw row}) of a registry's text, version 1 (a plain {id: row} object) or 2; RegistryError when
    it is not one. Rows are checked one by one later (`check_row`): one bad row does not discard the others."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise RegistryError(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RegistryError(f"holds a JSON {type(obj).__name__}, not an object")
    if "format" in obj:
        if obj.get("format") != REGISTRY_FORMAT or not isinstance(obj.get("arrivals"), dict):
            raise RegistryError(f"format {obj.get('format')!r} with no 'arrivals' object; expected {REGISTRY_FORMAT}")
        header = {k: v for k, v in obj.items() if k != "arrivals"}
        return header, obj["arrivals"]
    return {"format": 1}, obj


def check_row(item_id, row) -> dict:
    """A registry row as {"file", "metadata", "bytes"}, or ValueError saying what is wrong."""
    if not isinstance(item_id, str) or not SAFE_ID.fullmatch(item_id):
        raise ValueError(f"id {item_id!r} is not a valid arrival id")
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, not an object")
    n = row.get("bytes", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"'bytes' is {n!r}, not a byte count")
    return {"file": f"{item_id}.img", "metadata": clean_metadata(row.get("metadata")), "bytes": n}


class ArrivalStore:
    """The arrivals folder of one shop (see the module docstring)."""

    def __init__(self, workspace: Path, identity: dict, data_root: Path):
        self.root = Path(workspace) / "arrivals"
        self.identity = dict(identity)
        self.data_root = Path(data_root)
        self.folder = self.root / identity["key"]

    # ------------------------------------------------------------------------------------------------ paths
    @property
    def registry(self) -> Path:
        return self.folder / REGISTRY

    def image_path(self, item_id: str) -> Path:
        return self.folder / f"{item_id}.img"

    def meta_path(self, item_id: str) -> Path:
        return self.folder / f"{item_id}{META_SUFFIX}"

    def writable(self) -> str | None:
        """None when the folder can be written, else why not (a read-only workspace: writes are refused)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".probe.{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            return f"the arrivals folder {self.folder} is not writable ({e.strerror or e})"
        return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the folder among processes (and threads: each call opens its own descriptor). A
        folder that cannot be created or locked (read-only workspace) is used without the lock: reads only."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # ------------------------------------------------------------------------------------------------ writes
    def _write(self, path: Path, data: bytes, step: str) -> None:
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"{step}-tmp")
        os.replace(tmp, path)
        fault_point(step)

    def write_files(self, item_id: str, data: bytes, metadata: dict) -> None:
        """The arrival's metadata, then its image, each under a temporary name renamed when complete. Caller holds
        `locked()`; the arrival exists once `write_registry` names it."""
        row = {"id": item_id, "metadata": metadata, "bytes": len(data)}
        self._write(self.meta_path(item_id), (json.dumps(row, indent=1) + "\n").encode(), "meta")
        self._write(self.image_path(item_id), data, "image")

    def remove_files(self, item_id: str) -> None:
        for p in (self.image_path(item_id), self.meta_path(item_id)):
            with contextlib.suppress(OSError):
                p.unlink()

    def write_registry(self, rows: dict[str, dict]) -> None:
        """The registry naming exactly `rows` (id -> {"metadata", "bytes"}), atomically. Caller holds `locked()`."""
        from fashionrec import __version__

        obj = {
            "format": REGISTRY_FORMAT,
            "fashionrec": __version__,
            "shop": {**self.identity, "data_root": str(self.data_root)},
            "arrivals": {
                i: {"file": f"{i}.img", "metadata": r.get("metadata") or {}, "bytes": int(r.get("bytes", 0))}
                for i, r in rows.items()
            },
        }
        self._write(self.registry, (json.dumps(obj, indent=1) + "\n").encode(), "registry")

    # ------------------------------------------------------------------------------------------------ reads
    def read_registry(self, set_aside: bool = True) -> tuple[dict | None, dict[str, dict]]:
        """(header, {id: row}) of this folder's registry: (None, {}) when there is none; a damaged one is set
        aside (renamed, named in the log; left in place with `set_aside=False`) and its arrivals recovered from
        the files. Caller holds `locked()`."""
        try:
            text = self.registry.read_bytes().decode("utf-8")
            header, raw = parse_registry(text)
        except FileNotFoundError:
            return None, {}
        except (OSError, UnicodeDecodeError, RegistryError) as e:
            return self._set_aside(str(e), move=set_aside)
        rows = {}
        for item_id, row in raw.items():
            try:
                rows[item_id] = check_row(item_id, row)
            except ValueError as e:
                got = self._row_from_files(item_id) if isinstance(item_id, str) else None
                if got is not None:
                    log.warning("%s: arrival %r: %s; recovered from its files", self.registry, item_id, e)
                    rows[item_id] = got
                else:
                    log.warning("%s: arrival %r skipped: %s (no file to recover it from)", self.registry, item_id, e)
        return header, rows

    def _set_aside(self, why: str, move: bool = True) -> tuple[dict, dict[str, dict]]:
        aside = self.registry.with_name(f"{REGISTRY}.corrupt-{_stamp()}")
        where = "left in place (this server does not write)"
        if move:
            try:
                os.replace(self.registry, aside)
                where = f"set aside as {aside}"
            except OSError as e:
                where = f"left in place ({e.strerror or e})"
        rows = self.rows_from_files()
        log.warning(
            "arrivals registry %s is damaged (%s): %s; %d arrival(s) recovered from their image files",
            self.registry,
            why,
            where,
            len(rows),
        )
        return {"format": REGISTRY_FORMAT, "recovered": True}, rows

    def _row_from_files(self, item_id: str) -> dict | None:
        if not SAFE_ID.fullmatch(item_id):
            return None
        img = self.image_path(item_id)
        try:
            size = img.stat().st_size
        except OSError:
            return None
        if size == 0:
            return None
        meta = {}
        try:
            saved = json.loads(self.meta_path(item_id).read_text())
            if isinstance(saved, dict):
                meta = clean_metadata(saved.get("metadata"))
        except (OSError, ValueError):
            pass  # the image alone is an arrival without a name or category
        return {"file": img.name, "metadata": meta, "bytes": size}

    def rows_from_files(self) -> dict[str, dict]:
        """Every arrival whose image file is in the folder (with its metadata when its .meta.json reads)."""
        rows = {}
        for p in sorted(self.folder.glob("*.img")):
            got = self._row_from_files(p.stem)
            if got is not None:
                rows[p.stem] = got
        return rows

    # ------------------------------------------------------------------------------------------------ start-up
    def sweep(self, registered: set[str]) -> int:
        """Leftovers of a writer that died (caller holds `locked()`, so no live writer is mid-way): temporary files
        are deleted (partial copies of what their writer still had); image and metadata files the registry does
        not name go to `uncommitted/`. Returns the bytes held in `uncommitted/` (the storage cap counts them)."""
        moved = 0
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return 0
        for p in entries:
            try:
                if p.name.startswith(".") and ".tmp" in p.name:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                elif p.name.startswith(".vectors.") and p.name.endswith(".old"):
                    shutil.rmtree(p, ignore_errors=True)
                elif p.is_file() and (p.name.endswith(".img") or p.name.endswith(META_SUFFIX)):
                    stem = p.name[: -len(".img")] if p.name.endswith(".img") else p.name[: -len(META_SUFFIX)]
                    if stem not in registered:
                        (self.folder / UNCOMMITTED).mkdir(exist_ok=True)
                        os.replace(p, self.folder / UNCOMMITTED / p.name)
                        moved += 1
            except OSError as e:
                log.warning("could not sweep %s: %s", p, e)
        if moved:
            log.warning(
                "%d file(s) of uploads never committed (a server stopped mid-write) moved to %s; they count "
                "against the arrivals' storage cap until deleted",
                moved,
                self.folder / UNCOMMITTED,
            )
        return self.uncommitted_bytes()

    def uncommitted_bytes(self) -> int:
        try:
            return sum(p.stat().st_size for p in (self.folder / UNCOMMITTED).iterdir() if p.is_file())
        except OSError:
            return 0

    def candidates(self) -> list[Path]:
        """Registries of other folders that belong to this shop (same catalog or same data folder path; a version-1
        registry in the folder its data folder's path names): migrated when this folder has none."""
        out = []
        for reg in sorted(self.root.glob(f"*/{REGISTRY}")):
            if reg.parent == self.folder:
                continue
            try:
                header, _ = parse_registry(reg.read_text())
            except (OSError, UnicodeDecodeError, RegistryError):
                continue
            shop = header.get("shop") if isinstance(header.get("shop"), dict) else {}
            if header.get("format") == 1:
                mine = reg.parent.name == path_key(self.data_root)
            else:
                mine = shop.get("catalog_key") == self.identity["catalog_key"] or shop.get("data_root") == str(
                    self.data_root
                )
            if mine:
                out.append(reg)
        return out

    def adopt(self, reg: Path, rows: dict[str, dict]) -> dict[str, dict]:
        """Copy the arrivals of another folder's registry `reg` into this folder (those not in `rows`); returns the
        rows adopted. The files there are kept; its registry is renamed once this folder's registry names them."""
        header, raw = parse_registry(reg.read_text())
        got = {}
        for item_id, row in raw.items():
            if item_id in rows:
                continue
            try:
                clean = check_row(item_id, row)
            except ValueError as e:
                log.warning("%s: arrival %r not migrated: %s", reg, item_id, e)
                continue
            src = reg.parent / f"{item_id}.img"
            if not src.is_file() and isinstance(row.get("image"), str):  # version 1 rows: an absolute path
                src = Path(row["image"])
            if not src.is_file():
                log.warning("%s: arrival %r not migrated: its image %s is missing", reg, item_id, src)
                continue
            self._write(self.image_path(item_id), src.read_bytes(), "migrate-image")
            self._write(
                self.meta_path(item_id),
                (json.dumps({"id": item_id, **clean}, indent=1) + "\n").encode(),
                "migrate-meta",
            )
            got[item_id] = clean
        return got

    def retire(self, reg: Path) -> None:
        with contextlib.suppress(OSError):
            os.replace(reg, reg.with_name(f"{REGISTRY}.migrated-{_stamp()}"))
