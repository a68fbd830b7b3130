"""The VectorIndex contract, the backend table, the factory and the automatic choice; no backend lives here.

Backends register themselves with `@register_index("name")` (exact.py, faiss.py; `fashionrec.index` imports them):
adding one needs no edit here. Saved indexes are data (fashionrec.artifacts: arrays in .npz + JSON), never pickle.

Vectors are L2-normalised on the way in, so inner product = cosine similarity. Items carry string ids and an
optional category, and `search(..., category=)` only returns items of that category. New items can be added at
any time without a rebuild (HNSW/IVF add incrementally; exact just appends).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fashionrec.artifacts import load_artifact, save_artifact
from fashionrec.errors import FashionrecError
from fashionrec.index.knn import knn, l2_normalize

_REGISTRY: dict[str, Callable[..., VectorIndex]] = {}


ARTIFACT_KIND = "vector-index"


def register_index(name: str):
    """Class decorator: `create_index(name)` / `VectorIndex.load` find the class by this name."""

    def wrap(cls):
        _REGISTRY[name] = cls
        cls.kind = name
        return cls

    return wrap


class VectorIndex(ABC):
    """Contract: `add(ids, vectors, categories=None)`, `search(queries, k, category=None) -> (ids, scores)`
    with ids as an object array (B, k) ('' only where fewer than k items match: an approximate backend that
    runs out of candidates, e.g. HNSW under a narrow category filter, is completed by an exact search over the
    allowed items), `remove(ids)`, `save(path)`, `VectorIndex.load(path)`. Adding an id that exists replaces its
    vector. Safe to call from several threads (one lock: searches and writes never see a half-added batch)."""

    kind = "base"

    def __init__(self, dim: int):
        if dim <= 0:
            raise ValueError("dim must be a positive integer")
        self.dim = dim
        self.ids: list[str] = []
        self.categories: list[str | None] = []
        self._pos: dict[str, int] = {}
        self._deleted: set[int] = set()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.ids) - len(self._deleted)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._pos

    def add(self, ids: Sequence[str], vectors: np.ndarray, categories: Sequence[str | None] | None = None) -> None:
        with self._lock:
            self._add(ids, vectors, categories)

    def remove(self, ids: Sequence[str]) -> None:
        """Mask items out of every later search (the vectors stay until a rebuild); unknown ids are ignored."""
        with self._lock:
            for i in ids:
                row = self._pos.pop(str(i), None)
                if row is not None:
                    self._deleted.add(row)

    def _add(self, ids, vectors, categories) -> None:
        vectors = l2_normalize(vectors)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(ids)}, {self.dim})")
        categories = list(categories) if categories is not None else [None] * len(ids)
        for i in ids:  # re-adding replaces: the old row is masked out
            if i in self._pos:
                self._deleted.add(self._pos[i])
        start = len(self.ids)
        self.ids.extend(str(i) for i in ids)
        self.categories.extend(categories)
        for j, i in enumerate(ids):
            self._pos[str(i)] = start + j
        self._add_vectors(vectors)

    def vector(self, item_id: str) -> np.ndarray:
        with self._lock:
            return self._get_vector(self._pos[item_id])

    def search(
        self, queries: np.ndarray, k: int = 10, category: str | None = None, exclude: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        if k <= 0:
            raise ValueError("k must be a positive integer")
        q = l2_normalize(queries)
        with self._lock:
            return self._search(q, k, category, exclude)

    def _search(self, q, k, category, exclude):
        allowed = None
        if category is not None:
            allowed = np.fromiter((c == category for c in self.categories), dtype=bool, count=len(self.categories))
        excl = {self._pos[e] for e in exclude if e in self._pos} | self._deleted
        fetch = k + len(excl)
        out_ids = np.full((len(q), k), "", dtype=object)
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows, scores = self._search_rows(q, fetch, allowed)
        # How many results exist at all: an approximate search that found fewer is redone exactly.
        if allowed is None:
            available = len(self.ids) - len(excl)
        else:
            available = int(allowed.sum()) - sum(1 for r in excl if allowed[r])
        want = min(k, available)
        for b in range(len(q)):
            j = self._fill(out_ids[b], out_scores[b], rows[b], scores[b], excl, allowed, k)
            if j < want:
                rows_b, scores_b = self._exact_rows(q[b], allowed, excl, k)
                self._fill(out_ids[b], out_scores[b], rows_b, scores_b, excl, allowed, k)
        return out_ids, out_scores

    def _fill(self, ids_out, scores_out, rows, scores, excl, allowed, k) -> int:
        j = 0
        for r, s in zip(rows, scores):
            if r < 0 or r in excl or (allowed is not None and not allowed[r]):
                continue
            ids_out[j], scores_out[j] = self.ids[r], s
            j += 1
            if j == k:
                break
        return j

    def _exact_rows(self, q: np.ndarray, allowed: np.ndarray | None, excl: set[int], k: int):
        """Exact top-k over the allowed, not excluded rows (the fallback when an approximate search ran short)."""
        mask = np.ones(len(self.ids), dtype=bool) if allowed is None else allowed.copy()
        if excl:
            mask[list(excl)] = False
        cand = np.flatnonzero(mask)
        scores, rows = knn(q, self._rows_matrix(cand), k)
        return cand[rows[0]], scores[0]

    def _rows_matrix(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self._get_vector(int(r)) for r in rows]) if len(rows) else np.zeros((0, self.dim), np.float32)

    @abstractmethod
    def _add_vectors(self, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _get_vector(self, row: int) -> np.ndarray: ...

    @abstractmethod
    def _search_rows(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows (B, k) by inner product, -1 padded; restricted to `allowed` rows when given."""

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim}

    def save(self, path: str | Path) -> Path:
        """One file of data (fashionrec.artifacts), written atomically: a killed writer leaves the previous index."""
        with self._lock:
            cats = [c for c in self.categories]
            arrays = {
                "ids": np.array(self.ids, dtype=str),
                "deleted": np.array(sorted(self._deleted), dtype=np.int64),
                "categories": np.array(["" if c is None else str(c) for c in cats], dtype=str),
                "has_category": np.array([c is not None for c in cats], dtype=bool),
            }
            for k, v in self._state().items():
                arrays[f"state.{k}"] = v
            return save_artifact(path, self.config(), arrays, kind=ARTIFACT_KIND)

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """Rebuild a saved index (any registered backend, or only `cls`'s kind when called on a subclass)."""
        cfg, arrays, _, _ = load_artifact(path, kind=ARTIFACT_KIND)
        cfg = dict(cfg)
        kind = cfg.pop("kind")
        if kind not in _REGISTRY:
            raise FashionrecError(f"{path}: index backend '{kind}' is not registered; have {sorted(_REGISTRY)}")
        idx = _REGISTRY[kind](**cfg)
        if not isinstance(idx, cls):
            raise FashionrecError(f"{path}: holds a '{kind}' index, not a {cls.__name__}")
        idx.ids = arrays["ids"].astype(object).tolist()
        idx.categories = [c if has else None for c, has in zip(arrays["categories"].tolist(), arrays["has_category"])]
        idx._deleted = set(arrays["deleted"].tolist())
        # a replaced id maps to its newest row; a removed one (every row deleted) to none
        idx._pos = {i: r for r, i in enumerate(idx.ids) if r not in idx._deleted}
        idx._restore({k[len("state.") :]: v for k, v in arrays.items() if k.startswith("state.")})
        return idx

    def _state(self) -> dict[str, np.ndarray]:
        """The backend's arrays (saved as `state.<name>`)."""
        raise NotImplementedError

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


def load_index(path: str | Path) -> VectorIndex:
    return VectorIndex.load(path)


AUTO_EXACT_MAX = 100_000
AUTO_HNSW_MAX = 3_000_000


def choose_index_kind(n_items: int) -> str:
    """Exact below 100k items (brute force is exact and fast there), HNSW below 3M, IVF-PQ above."""
    if n_items < AUTO_EXACT_MAX:
        return "exact"
    if n_items < AUTO_HNSW_MAX:
        return "hnsw"
    return "pq"


def create_index(kind: str = "auto", dim: int = 0, n_items: int = 0, **params) -> VectorIndex:
    if kind == "auto":
        kind = choose_index_kind(n_items)
    if kind not in _REGISTRY:  # e.g. 'hnsw' chosen automatically but faiss.py not imported
        raise ValueError(f"unknown index '{kind}'; choose from {sorted(_REGISTRY)} or 'auto'")
    return _REGISTRY[kind](dim, **params)


def list_indexes() -> list[str]:
    return sorted(_REGISTRY)
