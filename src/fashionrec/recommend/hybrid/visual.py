"""Source of visual likeness: the photos nearest to the customer's 5 newest purchases (neighbours of every photo
computed once per catalog), and what sells now in pictures (the `trend` of every photo)."""

from __future__ import annotations

import numpy as np

from fashionrec.recommend.hybrid.schema import _top

_NB_CACHE: dict = {}


def sells_now(pop_month: np.ndarray, vectors: np.ndarray, has_vec: np.ndarray) -> np.ndarray | None:
    """What sells now, in pictures: the popularity-weighted mean of the month's 200 best sellers' image vectors."""
    top = [j for j in _top(pop_month, 200) if has_vec[j]]
    if not top:
        return None
    prof = (vectors[top] * pop_month[top, None]).sum(0)
    return prof / max(np.linalg.norm(prof), 1e-12)


def _ann_neighbours(x: np.ndarray, k: int, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of every row of x (inner product; -1 where fewer) through `fashionrec.index.create_index`."""
    from fashionrec.index import create_index

    index = create_index("auto", dim=x.shape[1], n_items=len(x))
    index.add([str(r) for r in range(len(x))], x)
    sims = np.zeros((len(x), k), dtype=np.float32)
    nb = np.full((len(x), k), -1, dtype=np.int64)
    for a in range(0, len(x), batch):
        ids, sc = index.search(x[a : a + batch], k)
        ok = ids != ""
        nb[a : a + batch][ok] = ids[ok].astype(np.int64)
        sims[a : a + batch][ok] = sc[ok]
    return sims, nb


def all_neighbours(model) -> None:
    """Visual neighbours of every item with a photo (time-independent): one exact FAISS search below 100k photos,
    the approximate `VectorIndex` (HNSW) above, where the exact all-pairs search grows as n^2."""
    model._nb_ids = model._nb_sims = None
    if model.V is None or not model.n_visual or model.has_vec.sum() < 2:
        return
    import hashlib

    import faiss

    key = (model.V.shape, model.n_visual, hashlib.sha1(model.V.tobytes()).hexdigest())
    if key in _NB_CACHE:
        model._nb_ids, model._nb_sims = _NB_CACHE[key]
        return
    faiss.omp_set_num_threads(1)  # one thread: measured 10x faster than OpenMP on 2 busy cores
    rows = np.flatnonzero(model.has_vec)
    x = np.ascontiguousarray(model.V[rows], dtype=np.float32)
    kk = min(model.n_visual + 1, len(rows))
    from fashionrec.index.base import choose_index_kind

    if choose_index_kind(len(rows)) == "exact":  # exact all-pairs search: O(n^2), seconds below 100k photos
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, nb = index.search(x, kk)
    else:  # a big catalog: the project's approximate index (HNSW, IVF-PQ above 3M), built once, searched in batches
        sims, nb = _ann_neighbours(x, kk)
    ids = np.where(nb >= 0, rows[np.maximum(nb, 0)], -1)
    model._nb_ids = np.full((len(model.has_vec), kk - 1), -1, dtype=np.int64)
    model._nb_sims = np.zeros((len(model.has_vec), kk - 1), dtype=np.float32)
    for r in range(len(rows)):  # drop the item itself (wherever it landed among equal scores)
        keep = ids[r] != rows[r]
        model._nb_ids[rows[r]] = (
            ids[r][keep][: kk - 1]
            if keep.sum() >= kk - 1
            else np.pad(ids[r][keep], (0, kk - 1 - keep.sum()), constant_values=-1)
        )
        model._nb_sims[rows[r]] = (
            sims[r][keep][: kk - 1] if keep.sum() >= kk - 1 else np.pad(sims[r][keep], (0, kk - 1 - keep.sum()))
        )
    _NB_CACHE.clear()  # one catalog at a time (evaluation refits on the same photos)
    _NB_CACHE[key] = (model._nb_ids, model._nb_sims)


def neighbours(model, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Visual neighbours of item j (time-independent, cached)."""
    if getattr(model, "_nb_ids", None) is not None and j < len(model._nb_ids):
        ok = model._nb_ids[j] >= 0
        return model._nb_ids[j][ok], model._nb_sims[j][ok]
    if j not in model._nb_cache:
        if model.V is None or not model.has_vec[j]:
            model._nb_cache[j] = (np.zeros(0, dtype=np.int64), np.zeros(0))
        else:
            s = np.where(model.has_vec, model.V @ model.V[j], -np.inf)
            s[j] = -np.inf
            n = min(model.n_visual, len(s) - 1)
            top = np.argpartition(-s, n - 1)[:n] if n > 0 else np.zeros(0, dtype=np.int64)
            top = top[np.isfinite(s[top])]
            top = top[np.argsort(-s[top])]
            model._nb_cache[j] = (top, s[top])
    return model._nb_cache[j]


def visual_source(model, recent5: np.ndarray) -> np.ndarray:
    """Visual neighbours of the newest 5 items, best similarity per item, in the order pandas'
    Series.sort_values(ascending=False) gives (its tie order, reproduced: argsort of the reversed values)."""
    nb = [neighbours(model, int(j)) for j in recent5]
    if not nb:
        return np.zeros(0, dtype=np.int64)
    ids = np.concatenate([x[0] for x in nb]).astype(np.int64)
    sims = np.concatenate([x[1] for x in nb])
    if not len(ids):
        return np.zeros(0, dtype=np.int64)
    uq, inv = np.unique(ids, return_inverse=True)
    best = np.full(len(uq), -np.inf, dtype=sims.dtype)
    np.maximum.at(best, inv.ravel(), sims)
    order = np.arange(len(uq))[::-1][best[::-1].argsort(kind="quicksort")][::-1]
    return uq[order][: model.n_visual]
