"""The exact numpy index: the reference every other backend is measured against."""

from __future__ import annotations

import numpy as np

from fashionrec.index.base import VectorIndex, register_index


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
        return {"x": self._x}

    def _restore(self, state):
        self._x = np.ascontiguousarray(state["x"], dtype=np.float32)
