"""FAISS backends: flat, HNSW, IVF-Flat, IVF-PQ. `faiss` itself is imported when an index is built, so importing
fashionrec.index stays cheap for users of the exact index."""

from __future__ import annotations

import numpy as np

from fashionrec.index.base import VectorIndex, register_index
from fashionrec.index.knn import RowStore, knn


class _FaissIndex(VectorIndex):
    """Common FAISS plumbing. The raw vectors are kept too (float32), for `vector()` and exact re-ranking."""

    def __init__(self, dim: int, **params):
        super().__init__(dim)
        import faiss  # lazy: only FAISS users pay its import

        self._faiss = faiss
        self.params = params
        self._store = RowStore(dim)
        self._index = None

    @property
    def _x(self) -> np.ndarray:
        return self._store.array

    def config(self):
        return {"kind": self.kind, "dim": self.dim, **self.params}

    def _get_vector(self, row):
        return self._x[row]

    def _rows_matrix(self, rows):
        return self._x[rows]

    def _build(self, x: np.ndarray):
        raise NotImplementedError

    def _add_vectors(self, vectors):
        self._store.append(vectors)
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
        out = {"x": self._x}
        if self._index is not None:  # FAISS's own byte serialisation, stored as a uint8 array
            out["faiss"] = np.asarray(self._faiss.serialize_index(self._index), dtype=np.uint8)
        return out

    def _restore(self, state):
        self._store = RowStore(self.dim, state["x"])
        self._index = self._faiss.deserialize_index(state["faiss"]) if "faiss" in state else None


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
            s, r = knn(q[b], self._x[cand], k)
            out_r[b, : r.shape[1]], out_s[b, : r.shape[1]] = cand[r[0]], s[0]
        return out_r, out_s
