"""The exact index: brute-force inner product over every stored vector (FAISS `knn`), the reference every other
backend is measured against."""

from __future__ import annotations

import numpy as np

from fashionrec.index.base import VectorIndex, register_index
from fashionrec.index.knn import RowStore, knn


@register_index("exact")
class ExactIndex(VectorIndex):
    """Brute-force inner product (`fashionrec.index.knn.knn`): the reference every other backend is measured
    against. Vectors live in a `RowStore`, so an add costs the added rows, not a copy of the whole matrix."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self._store = RowStore(dim)

    @property
    def _x(self) -> np.ndarray:
        return self._store.array

    def _add_vectors(self, vectors):
        self._store.append(vectors)

    def _get_vector(self, row):
        return self._x[row]

    def _rows_matrix(self, rows):
        return self._x[rows]

    def _search_rows(self, q, k, allowed):
        if allowed is None:
            scores, rows = knn(q, self._x, k)
            return rows, scores
        cand = np.flatnonzero(allowed)
        scores, rows = knn(q, self._x[cand], k)
        return cand[rows], scores

    def _state(self):
        return {"x": self._x}

    def _restore(self, state):
        self._store = RowStore(self.dim, state["x"])
