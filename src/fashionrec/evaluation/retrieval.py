"""Same-product retrieval and per-attribute tagging metrics (pure numpy)."""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(features: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int = 1024) -> np.ndarray:
    """Top-k cosine neighbours of each query row over all rows, the query itself excluded. (len(queries), k)."""
    f = _normalise(features)
    k = min(k, len(f) - 1)
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        qs = queries[s : s + chunk]
        sim = f[qs] @ f.T
        sim[np.arange(len(qs)), qs] = -np.inf
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        out[s : s + len(qs)] = np.take_along_axis(part, order, 1)
    return out


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
    count as errors)."""
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    n = len(y_true)
    if n == 0:
        return {"n": 0, "n_classes": len(classes), "accuracy": float("nan"), "macro_f1": float("nan")}
    acc = float((y_true == y_pred).mean())
    f1s = []
    for c in sorted(set(y_true.tolist()) | set(y_pred.tolist())):
        tp = float(((y_true == c) & (y_pred == c)).sum())
        fp = float(((y_true != c) & (y_pred == c)).sum())
        fn = float(((y_true == c) & (y_pred != c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"n": n, "n_classes": len(classes), "accuracy": acc, "macro_f1": float(np.mean(f1s))}
