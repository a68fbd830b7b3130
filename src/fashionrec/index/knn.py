"""Exact top-k by inner product, the one brute-force neighbour search of the project (FAISS `faiss.knn`), and the
growable float32 row store the indexes keep their vectors in.

No torch, no timm; `faiss` is imported on the first search.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, C order; a 1-D vector becomes one row), so inner product = cosine."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` gallery rows with the largest inner product with each query -> (scores, rows), both (B, min(k, N)),
    best first; equal scores are ordered by row (so the result does not depend on FAISS's heap order).

    Vectors are used as given (normalise them first for cosine similarity). FAISS computes the scores block by block
    (BLAS), so memory stays O(B x k) however large the gallery."""
    import faiss

    g = np.ascontiguousarray(gallery, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, g.shape[1])
    k = min(int(k), len(g))
    if k <= 0 or not len(q):
        return np.zeros((len(q), max(k, 0)), np.float32), np.zeros((len(q), max(k, 0)), np.int64)
    scores, rows = faiss.knn(q, g, k, metric=faiss.METRIC_INNER_PRODUCT)
    order = np.lexsort((rows, -scores), axis=-1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1).astype(np.int64)


class RowStore:
    """float32 rows of a fixed width that grow by appending: capacity doubles when full, so adding a batch costs
    the batch (amortised), never a copy of every row already stored. `array` is a view of the filled rows."""

    def __init__(self, dim: int, rows: np.ndarray | None = None):
        self.dim = dim
        self._buf = np.zeros((0, dim), np.float32) if rows is None else np.array(rows, dtype=np.float32, order="C")
        self._n = len(self._buf)

    def __len__(self) -> int:
        return self._n

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, self.dim)
        need = self._n + len(rows)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 16), self.dim), np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = rows
        self._n = need

    @property
    def array(self) -> np.ndarray:
        return self._buf[: self._n]
