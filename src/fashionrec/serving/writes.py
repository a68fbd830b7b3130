"""Writes: new arrivals added and deleted through the API, in memory (a new snapshot) and on disk (persisted for
restarts; the folder's layout and crash rules: serving.arrivals), and replayed at start-up.

Every write follows the copy-on-write rule of `serving.state.Snapshot`: the next snapshot is built beside the
current one (`cow_copy`, then `add_items`, which replaces arrays) and swapped in under `state.lock`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.artifacts import ArtifactFormatError
from fashionrec.serving.arrivals import REGISTRY_FORMAT, UNCOMMITTED, fault_point
from fashionrec.serving.errors import Conflict, LimitReached, NotFound, StorageError, StorageFull, WritesRefused
from fashionrec.serving.state import LayeredIndex, ServingState, Snapshot, arrivals_index, cow_copy
from fashionrec.serving.store import load_arrays, save_arrays

log = logging.getLogger(__name__)
ARRIVALS_KIND = "serving-arrival-vectors"


def embed_image(state: ServingState, img) -> tuple[np.ndarray, np.ndarray]:
    """(raw backbone vector, projected vector) for a decoded PIL image."""
    from fashionrec.features import embed_pil

    backbone = state.backbone()
    raw = embed_pil(backbone, [img], device=state.torch_device)[0]
    return raw, state.projection(raw)[0]


def embed_upload(state: ServingState, data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw backbone vector, projected vector) for uploaded image bytes; raises ImageDecodeError on bad input."""
    from fashionrec.data.images import decode_image

    return embed_image(state, decode_image(data, source=source))


def reserve_arrival(state: ServingState, item_id: str, n_bytes: int) -> None:
    """Claim `item_id` for one POST before any slow work: a second POST of the same id gets 409 at once, so exactly
    one of N concurrent duplicates is added (first come, first served; nothing is ever replaced)."""
    if state.write_refusal:
        raise WritesRefused(state.write_refusal)
    with state.lock:
        snap = state.snapshot
        if item_id in snap.removed:
            raise Conflict(f"item '{item_id}' was deleted in this run; its id can be reused after a restart")
        if state.known_item(item_id, snap) or item_id in state.pending:
            raise Conflict(f"item '{item_id}' already exists")
        if state.store is not None and state.store.image_path(item_id).exists():
            raise Conflict(f"item '{item_id}' already exists (added by another server sharing this workspace)")
        if len(snap.arrivals) + len(state.pending) >= state.max_arrivals:
            raise LimitReached(f"the server holds {state.max_arrivals:,} new arrivals, its limit; delete some first")
        used = sum(int(a.get("bytes", 0)) for a in snap.arrivals.values()) + state.pending_bytes
        used += state.leftover_bytes
        if used + n_bytes > state.max_arrival_bytes:
            raise StorageFull(
                f"arrival storage would exceed its {state.max_arrival_bytes:,}-byte cap "
                f"({used:,} bytes used, {state.leftover_bytes:,} of them by uncommitted uploads in "
                f"{state.arrivals_folder / UNCOMMITTED}); delete some arrivals first"
            )
        state.pending.add(item_id)
        state.pending_bytes += n_bytes


def release_arrival(state: ServingState, item_id: str, n_bytes: int) -> None:
    with state.lock:
        if item_id in state.pending:
            state.pending.discard(item_id)
            state.pending_bytes -= n_bytes


def create_arrival(state: ServingState, item_id: str, data: bytes, metadata: dict, *, image=None) -> dict:
    """The POST /items path: reserve the id, embed (slow, outside the lock), store, commit, release."""
    reserve_arrival(state, item_id, len(data))
    try:
        return add_arrival(state, item_id, data, metadata, image=image)
    finally:
        release_arrival(state, item_id, len(data))


def _commit_arrivals(state: ServingState, new: dict[str, dict]) -> None:
    """Swap in a snapshot with `new` arrivals (id -> record with "vector"): every model and the index at once.
    Caller holds state.lock."""
    snap = state.snapshot
    memo: dict = {}
    models = {n: cow_copy(m, memo) for n, m in snap.models.items()}
    ids = list(new)
    vecs = np.stack([new[i]["vector"] for i in ids]).astype(np.float32)
    metas = [new[i]["metadata"] for i in ids]
    meta_df = pd.DataFrame(metas, index=pd.Index(ids, name="article_id")) if any(metas) else None
    for m in models.values():
        m.add_items(ids, vectors=vecs, metadata=meta_df)
    arrivals = {**snap.arrivals, **new}
    index = LayeredIndex(snap.index.base, arrivals_index(vecs.shape[1], arrivals))
    state.snapshot = Snapshot(models, index, arrivals, snap.removed, snap.version + 1)


def add_arrival(
    state: ServingState, item_id: str, data: bytes, metadata: dict, *, persist: bool = True, image=None
) -> dict:
    """Make a new item recommendable at once: every model, the index; persisted for restarts.
    `image`: `data` already decoded (the server decodes an upload once, with its limits).

    Write order (the folder locked against other processes): metadata file, image file, registry naming the id (the
    commit point), vectors, then the in-memory snapshot. A process killed at any step leaves either an arrival the
    next start replays, or files the next start sweeps into `uncommitted/`."""
    raw, vec = (
        embed_image(state, image) if image is not None else embed_upload(state, data, source=f"upload for {item_id}")
    )
    if not persist:
        rec = {"image": "", "metadata": dict(metadata), "bytes": len(data), "vector": vec}
        with state.lock:
            _commit_arrivals(state, {item_id: rec})
            snap = state.snapshot
        return state.item_info(item_id, snap)
    store = state.store
    rec = {"image": str(store.image_path(item_id)), "metadata": dict(metadata), "bytes": len(data), "vector": vec}
    with state.persist_lock, store.locked():
        try:
            store.write_files(item_id, data, rec["metadata"])
            snap = state.snapshot
            _persist(state, {**snap.arrivals, item_id: rec}, snap.removed)
        except OSError as e:
            store.remove_files(item_id)
            raise StorageError(f"could not store new arrival '{item_id}' in {store.folder}: {e}") from None
        fault_point("commit")
        with state.lock:
            _commit_arrivals(state, {item_id: rec})
            snap = state.snapshot
    return state.item_info(item_id, snap)


def _persist(state: ServingState, arrivals: Mapping[str, dict], removed) -> None:
    """Write the registry and vectors naming `arrivals`, plus arrivals another process sharing this workspace
    committed (in the registry on disk, not in this process's snapshot, not deleted here). Caller holds
    `state.persist_lock` and `state.store.locked()`."""
    store = state.store
    _, disk = store.read_registry()
    rows = {i: {"metadata": r.get("metadata") or {}, "bytes": int(r.get("bytes", 0))} for i, r in arrivals.items()}
    others = [i for i in disk if i not in rows and i not in removed and store.image_path(i).is_file()]
    rows.update({i: disk[i] for i in others})
    store.write_registry(rows)
    vectors = {i: r["vector"] for i, r in arrivals.items() if r.get("vector") is not None}
    if others:
        saved = _saved_vectors(state)
        vectors.update({i: saved[i] for i in others if i in saved})
    _save_vectors(state, vectors)
    fault_point("vectors")


def _model_key(state: ServingState) -> str:
    """What the arrivals' vectors depend on: the backbone, its input size and the projection (not the data
    folder's path or file times, which key the artifacts)."""
    h = hashlib.sha1(f"{state.backbone_name}|{state.input_size}".encode())
    for a in (state.projection.mean, state.projection.components):
        if a is not None:
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _save_vectors(state: ServingState, vectors: Mapping[str, np.ndarray]) -> None:
    ids = list(vectors)
    folder = state.arrivals_folder / "vectors"
    if not ids:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # derived data: rebuilt from the images
        return
    save_arrays(
        folder,
        ARRIVALS_KIND,
        1,
        {"ids": np.array(ids, dtype=str), "vectors": np.stack([vectors[i] for i in ids]).astype(np.float32)},
        {"fingerprint": state.fingerprint, "model_key": _model_key(state)},
    )


def _saved_vectors(state: ServingState, dim: int = 0) -> dict[str, np.ndarray]:
    """The saved arrival vectors that fit these artifacts ({} when none, damaged or computed for another model:
    the images are embedded again)."""
    folder = state.arrivals_folder / "vectors"
    try:
        arrays, cfg = load_arrays(folder, ARRIVALS_KIND, 1)
        ids, vecs = arrays["ids"], arrays["vectors"]
        if cfg.get("fingerprint") != state.fingerprint and cfg.get("model_key") != _model_key(state):
            log.info("%s: computed for another model; embedding the arrivals' images again", folder)
            return {}
        if ids.ndim != 1 or vecs.ndim != 2 or len(ids) != len(vecs) or vecs.dtype.kind != "f":
            raise ArtifactFormatError(f"{folder}: {len(ids)} ids for vectors of shape {vecs.shape} ({vecs.dtype})")
        if dim and vecs.shape[1] != dim:
            raise ArtifactFormatError(f"{folder}: vectors of dimension {vecs.shape[1]}, the models use {dim}")
        if not np.isfinite(vecs).all():
            raise ArtifactFormatError(f"{folder}: vectors hold NaN or infinity")
    except ArtifactFormatError as e:
        if folder.exists():
            log.warning("arrival vectors not reused (%s); embedding the images again", e)
        return {}
    except KeyError as e:
        log.warning("arrival vectors not reused (%s: no array %s); embedding the images again", folder, e)
        return {}
    return {str(i): np.asarray(v, np.float32) for i, v in zip(ids.tolist(), vecs)}


def remove_arrival(state: ServingState, item_id: str) -> None:
    """DELETE /items/{id}: an arrival leaves the index, every answer and the registry (its files are deleted).
    The fitted models keep a column for it until a restart, so its id is not reusable before then."""
    if state.write_refusal:
        raise WritesRefused(state.write_refusal)
    with state.persist_lock, state.store.locked():
        snap = state.snapshot
        if item_id not in snap.arrivals:
            if state.known_item(item_id, snap):
                raise Conflict(
                    f"item '{item_id}' is a catalog item; only arrivals added through the API can be deleted"
                )
            raise NotFound(f"unknown item '{item_id}'")
        rec = snap.arrivals[item_id]
        arrivals = {k: v for k, v in snap.arrivals.items() if k != item_id}
        try:
            _persist(state, arrivals, snap.removed | {item_id})
        except OSError as e:
            raise StorageError(f"could not update the arrivals registry in {state.store.folder}: {e}") from None
        with state.lock:
            snap = state.snapshot  # writers are serialised by persist_lock: only readers ran meanwhile
            index = LayeredIndex(snap.index.base, arrivals_index(len(rec["vector"]), arrivals))
            state.snapshot = replace(
                snap, index=index, arrivals=arrivals, removed=snap.removed | {item_id}, version=snap.version + 1
            )
        state.store.remove_files(item_id)


def replay_arrivals(state: ServingState, dim: int = 0) -> None:
    """Restore the arrivals posted in earlier runs, in one snapshot (see serving.arrivals for the folder): the
    registry read and checked (a damaged one set aside and rebuilt from the files), registries of this shop under
    another key migrated, leftovers of a killed writer swept. Vectors come from the saved vectors when they fit;
    otherwise the images are embedded again (needs the backbone). Never raises for a damaged file."""
    from fashionrec import __version__

    store = state.store
    adopted: list[Path] = []
    with store.locked():
        # a server that cannot write (several workers, read-only workspace) changes nothing on disk: a damaged
        # registry is recovered in memory and left for a writing server to set aside
        header, rows = store.read_registry(set_aside=state.write_refusal is None)
        changed = False
        if header is None and state.write_refusal is None:
            for reg in store.candidates():
                try:
                    got = store.adopt(reg, rows)
                except (OSError, ValueError) as e:
                    log.warning("arrivals of %s not migrated: %s", reg, e)
                    continue
                rows.update(got)
                adopted.append(reg)
                log.warning("migrated %d new arrival(s) from %s into %s", len(got), reg, store.folder)
            changed = bool(adopted)
        elif header.get("recovered"):
            changed = True
        elif header.get("format") != REGISTRY_FORMAT or header.get("fashionrec") != __version__:
            log.info(
                "arrivals registry %s was written by fashionrec %s (format %s): migrated",
                store.registry,
                header.get("fashionrec", "0.1"),
                header.get("format"),
            )
            changed = True
        for item_id in [i for i in rows if not store.image_path(i).is_file()]:
            log.warning("new arrival %s: its image %s is missing; not restored", item_id, store.image_path(item_id))
            del rows[item_id]
            changed = True
        if state.write_refusal is None:
            state.leftover_bytes = store.sweep(set(rows))
            if changed:
                try:
                    store.write_registry(rows)
                    for reg in adopted:
                        store.retire(reg)
                except OSError as e:
                    log.warning("could not rewrite %s: %s", store.registry, e)
        else:
            state.leftover_bytes = store.uncommitted_bytes()
        vectors = _saved_vectors(state, dim)
        new = {}
        embedded = 0
        for item_id, rec in rows.items():
            try:
                if state.known_item(item_id):
                    log.warning("new arrival %s is now in the catalog; the catalog's row is used", item_id)
                    continue
                img = store.image_path(item_id)
                vec = vectors.get(item_id)
                if vec is None or (dim and len(vec) != dim):
                    vec = embed_upload(state, img.read_bytes(), source=str(img))[1]
                    embedded += 1
                new[item_id] = {
                    "image": str(img),
                    "metadata": rec.get("metadata") or {},
                    "bytes": int(rec.get("bytes", 0)),
                    "vector": np.asarray(vec, np.float32),
                }
            except Exception as e:  # one bad arrival must not stop the server; its files stay where they are
                log.warning("could not restore new arrival %s: %s", item_id, e)
        if (embedded or changed) and state.write_refusal is None:
            try:
                _save_vectors(state, {i: r["vector"] for i, r in new.items()})
            except OSError as e:
                log.warning("could not save the arrivals' vectors: %s", e)
    if new:
        with state.lock:
            _commit_arrivals(state, new)
