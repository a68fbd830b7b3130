"""Same-product retrieval and per-attribute tagging metrics (numpy; neighbours from FAISS, scores from scikit-learn)."""

from __future__ import annotations

import numpy as np

from fashionrec.evaluation.metrics import accuracy, macro_f1
from fashionrec.index.knn import knn, l2_normalize


def nearest_neighbours(features: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Top-k cosine neighbours of each query row over all rows, the query itself excluded. (len(queries), k), best
    first, equal similarities by row (`fashionrec.index.knn.knn`)."""
    f = l2_normalize(features)
    queries = np.asarray(queries, dtype=np.int64)
    k = min(k, len(f) - 1)
    if k <= 0:
        return np.zeros((len(queries), 0), dtype=np.int64)
    _, rows = knn(f[queries], f, k + 1)
    # drop the query itself, or the (k+1)-th row where the query is not among the first k+1 (ties with copies of it)
    keep = rows != queries[:, None]
    keep[keep.all(1), -1] = False
    return rows[keep].reshape(len(queries), k)


def retrieval_metrics(
    features: np.ndarray, groups: np.ndarray, queries: np.ndarray, types: np.ndarray | None = None, ks=(1, 10)
) -> dict:
    """Recall@k: share of queries with another photo of the same product (group) among their k nearest photos.
    same-type P@10: among the 10 nearest photos whose type is known, the share with the query's type
    (queries with a known type only). Gallery: every row but the query."""
    groups = np.asarray(groups)
    queries = np.asarray(queries, dtype=np.int64)
    out: dict = {"n_queries": int(len(queries)), "n_gallery": int(len(features))}
    if not len(queries):
        return {**out, **{f"recall@{k}": float("nan") for k in ks}, "type_precision@10": None}
    nn = nearest_neighbours(features, queries, max(max(ks), 10))
    same = groups[nn] == groups[queries][:, None]
    for k in ks:
        out[f"recall@{k}"] = float(same[:, :k].any(1).mean())
    out["type_precision@10"] = None
    if types is not None:
        types = np.asarray(types, dtype=object)
        known_q = types[queries] != ""
        nt = types[nn[:, :10]]
        known_n = nt != ""
        hits = (nt == types[queries][:, None]) & known_n
        denom = known_n.sum(1)
        use = known_q & (denom > 0)
        if use.any():
            out["type_precision@10"] = float((hits.sum(1)[use] / denom[use]).mean())
            out["n_type_queries"] = int(use.sum())
    return out


def classification_report(y_true, y_pred, classes) -> dict:
    """Accuracy and macro-F1 over the classes present in y_true or y_pred (string labels; unknown true labels
    count as errors): `fashionrec.evaluation.metrics` (scikit-learn)."""
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    n = len(y_true)
    if n == 0:
        return {"n": 0, "n_classes": len(classes), "accuracy": float("nan"), "macro_f1": float("nan")}
    return {
        "n": n,
        "n_classes": len(classes),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
    }
