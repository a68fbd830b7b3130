"""VectorIndex contract, the exact numpy reference and the FAISS backends.

Vectors are L2-normalised on the way in, so inner product = cosine similarity. Items carry string ids and an
optional category, and `search(..., category=)` only returns items of that category. New items can be added at
any time without a rebuild (HNSW/IVF add incrementally; exact just appends).
"""

from __future__ import annotations

import pickle
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fashionrec.io import atomic_path

_REGISTRY: dict[str, Callable[..., "VectorIndex"]] = {}


def register_index(name: str):
    def wrap(cls):
        _REGISTRY[name] = cls
        cls.kind = name
        return cls
    return wrap


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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
        vectors = _normalize(vectors)
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

    def search(self, queries: np.ndarray, k: int = 10, category: str | None = None,
               exclude: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        if k <= 0:
            raise ValueError("k must be a positive integer")
        q = _normalize(queries)
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
        s = self._rows_matrix(cand) @ q
        order = np.argsort(-s, kind="stable")[:k]
        return cand[order], s[order]

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
        """One file, written atomically (a killed writer leaves the previous index intact)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump({"config": self.config(), "ids": self.ids, "categories": self.categories,
                             "deleted": sorted(self._deleted), "state": self._state()}, f, protocol=5)
        return Path(path)

    def _state(self):
        raise NotImplementedError

    def _restore(self, state) -> None:
        raise NotImplementedError


def load_index(path: str | Path) -> VectorIndex:
    with open(path, "rb") as f:
        blob = pickle.load(f)
    cfg = dict(blob["config"])
    kind = cfg.pop("kind")
    idx = _REGISTRY[kind](**cfg)
    idx.ids, idx.categories = blob["ids"], blob["categories"]
    idx._deleted = set(blob["deleted"])
    # a replaced id maps to its newest row; a removed one (every row deleted) to none
    idx._pos = {i: r for r, i in enumerate(idx.ids) if r not in idx._deleted}
    idx._restore(blob["state"])
    return idx


VectorIndex.load = staticmethod(load_index)


@register_index("exact")
class ExactIndex(VectorIndex):
    """Brute-force numpy inner product: the reference every other backend is measured against."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self._x = np.zeros((0, dim), dtype=np.float32)

    def _add_vectors(self, vectors):
        self._x = np.vstack([self._x, vectors])

    def _get_vector(self, row):
        return self._x[row]

    def _rows_matrix(self, rows):
        return self._x[rows]

    def _search_rows(self, q, k, allowed):
        s = q @ self._x.T
        if allowed is not None:
            s[:, ~allowed] = -np.inf
        k = min(k, s.shape[1])
        if k == 0:
            return np.full((len(q), 0), -1), np.zeros((len(q), 0))
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(s, part, 1).argsort(1)[:, ::-1]
        rows = np.take_along_axis(part, order, 1)
        scores = np.take_along_axis(s, rows, 1)
        rows = np.where(np.isfinite(scores), rows, -1)
        return rows, scores

    def _state(self):
        return self._x

    def _restore(self, state):
        self._x = state


class _FaissIndex(VectorIndex):
    """Common FAISS plumbing. The raw vectors are kept too (float32), for `vector()` and exact re-ranking."""

    def __init__(self, dim: int, **params):
        super().__init__(dim)
        import faiss  # lazy: only FAISS users pay its import

        self._faiss = faiss
        self.params = params
        self._x = np.zeros((0, dim), dtype=np.float32)
        self._index = None

    def config(self):
        return {"kind": self.kind, "dim": self.dim, **self.params}

    def _get_vector(self, row):
        return self._x[row]

    def _rows_matrix(self, rows):
        return self._x[rows]

    def _build(self, x: np.ndarray):
        raise NotImplementedError

    def _add_vectors(self, vectors):
        self._x = np.vstack([self._x, vectors])
        if self._index is None or not self._index.is_trained:
            self._index = self._build(self._x)
            if self._index.ntotal == 0:
                self._index.add(self._x)
        else:
            self._index.add(vectors)

    def _search_rows(self, q, k, allowed):
        if self._index is None:
            return np.full((len(q), 0), -1), np.zeros((len(q), 0))
        params = None
        if allowed is not None:
            sel = self._faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64))
            params = self._search_params(sel)
        else:
            params = self._search_params(None)
        k = min(k, self._index.ntotal)
        scores, rows = self._index.search(q, k, params=params) if params is not None else self._index.search(q, k)
        return rows, scores

    def _search_params(self, sel):
        return self._faiss.SearchParameters(sel=sel) if sel is not None else None

    def _state(self):
        return {"x": self._x, "index": self._faiss.serialize_index(self._index) if self._index is not None else None}

    def _restore(self, state):
        self._x = state["x"]
        self._index = self._faiss.deserialize_index(state["index"]) if state["index"] is not None else None


def _training_sample(x: np.ndarray, nlist: int, per_list: int = 50, seed: int = 0) -> np.ndarray:
    """k-means needs ~40+ points per list, not all N: training on 50 x nlist keeps a 1M-item build to minutes."""
    n = min(len(x), per_list * nlist)
    if n == len(x):
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]


@register_index("flat")
class FlatIndex(_FaissIndex):
    def _build(self, x):
        return self._faiss.IndexFlatIP(self.dim)


@register_index("hnsw")
class HNSWIndex(_FaissIndex):
    def __init__(self, dim: int, M: int = 32, ef_construction: int = 80, ef_search: int = 96):
        super().__init__(dim, M=M, ef_construction=ef_construction, ef_search=ef_search)

    def _build(self, x):
        idx = self._faiss.IndexHNSWFlat(self.dim, self.params["M"], self._faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = self.params["ef_construction"]
        idx.hnsw.efSearch = self.params["ef_search"]
        return idx

    def _search_params(self, sel):
        return self._faiss.SearchParametersHNSW(efSearch=self.params["ef_search"], sel=sel)

    def set_ef_search(self, ef: int) -> None:
        self.params["ef_search"] = ef


@register_index("ivf")
class IVFIndex(_FaissIndex):
    """IVF-Flat. Trained on the first batch added (needs >= 39 * nlist vectors for a good training set)."""

    def __init__(self, dim: int, nlist: int | None = None, nprobe: int = 16):
        super().__init__(dim, nlist=nlist, nprobe=nprobe)

    def _nlist(self, n: int) -> int:
        return self.params["nlist"] or int(max(1, min(4 * np.sqrt(n), n // 39)))

    def _build(self, x):
        nlist = self._nlist(len(x))
        quant = self._faiss.IndexFlatIP(self.dim)
        idx = self._faiss.IndexIVFFlat(quant, self.dim, nlist, self._faiss.METRIC_INNER_PRODUCT)
        idx.train(_training_sample(x, nlist))
        self.params["nlist"] = nlist
        return idx

    def _search_params(self, sel):
        return self._faiss.SearchParametersIVF(nprobe=self.params["nprobe"], sel=sel)


@register_index("pq")
class IVFPQIndex(_FaissIndex):
    """IVF-PQ with exact re-ranking of a shortlist (`rerank` x k candidates) on the stored float vectors."""

    def __init__(self, dim: int, nlist: int | None = None, m: int = 16, nprobe: int = 32, rerank: int = 10):
        super().__init__(dim, nlist=nlist, m=m, nprobe=nprobe, rerank=rerank)

    def _build(self, x):
        nlist = self.params["nlist"] or int(max(1, min(4 * np.sqrt(len(x)), len(x) // 39)))
        m = self.params["m"]
        while self.dim % m:
            m -= 1
        quant = self._faiss.IndexFlatIP(self.dim)
        idx = self._faiss.IndexIVFPQ(quant, self.dim, nlist, m, 8, self._faiss.METRIC_INNER_PRODUCT)
        idx.train(_training_sample(x, nlist))
        self.params.update(nlist=nlist, m=m)
        return idx

    def _search_params(self, sel):
        return self._faiss.SearchParametersIVF(nprobe=self.params["nprobe"], sel=sel)

    def _search_rows(self, q, k, allowed):
        rows, _ = super()._search_rows(q, k * self.params["rerank"], allowed)
        out_r = np.full((len(q), k), -1, dtype=np.int64)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        for b in range(len(q)):
            cand = rows[b][rows[b] >= 0]
            s = self._x[cand] @ q[b]
            order = np.argsort(-s)[:k]
            out_r[b, : len(order)], out_s[b, : len(order)] = cand[order], s[order]
        return out_r, out_s


AUTO_EXACT_MAX = 100_000
AUTO_HNSW_MAX = 3_000_000


def choose_index_kind(n_items: int) -> str:
    if n_items < AUTO_EXACT_MAX:
        return "exact"
    if n_items < AUTO_HNSW_MAX:
        return "hnsw"
    return "pq"


def create_index(kind: str = "auto", dim: int = 0, n_items: int = 0, **params) -> VectorIndex:
    if kind == "auto":
        kind = choose_index_kind(n_items)
    if kind not in _REGISTRY:
        raise ValueError(f"unknown index '{kind}'; choose from {sorted(_REGISTRY)} or 'auto'")
    return _REGISTRY[kind](dim, **params)
