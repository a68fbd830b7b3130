"""Metrics in pure numpy: a leaf module (no torch, no timm), tested against hand-computed values and slow references.

Ranking metrics take, per user, a ranked list of recommended ids and the set of ids actually bought. They follow
the H&M Kaggle competition's MAP@12: AP@K = sum_k P(k) rel(k) / min(|actual|, K).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over classes present in y_true or y_pred (sklearn's convention)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.union1d(y_true, y_pred)
    f1s = []
    for c in labels:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def _dedupe(ranked: Sequence) -> list:
    seen, out = set(), []
    for x in ranked:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def average_precision_at_k(ranked: Sequence, actual: set, k: int) -> float:
    if not actual:
        return 0.0
    ranked = _dedupe(ranked)[:k]
    hits, score = 0, 0.0
    for i, item in enumerate(ranked):
        if item in actual:
            hits += 1
            score += hits / (i + 1)
    return score / min(len(actual), k)


def recall_at_k(ranked: Sequence, actual: set, k: int) -> float:
    if not actual:
        return 0.0
    return len(set(_dedupe(ranked)[:k]) & actual) / len(actual)


def hit_rate_at_k(ranked: Sequence, actual: set, k: int) -> float:
    return float(bool(set(_dedupe(ranked)[:k]) & actual))


def ndcg_at_k(ranked: Sequence, actual: set, k: int) -> float:
    """Binary-relevance NDCG: DCG = sum rel_i / log2(i + 2); ideal puts min(|actual|, k) hits first."""
    if not actual:
        return 0.0
    ranked = _dedupe(ranked)[:k]
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked) if item in actual)
    idcg = sum(1.0 / np.log2(i + 2) for i in range(min(len(actual), k)))
    return float(dcg / idcg)


RANKING_METRICS: dict[str, Callable[[Sequence, set, int], float]] = {
    "map": average_precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "hitrate": hit_rate_at_k,
}


def per_user_scores(recs: dict[str, Sequence], truth: dict[str, set], k: int, metric: str) -> np.ndarray:
    """One score per user in `truth` (users with no recommendation score 0)."""
    fn = RANKING_METRICS[metric]
    return np.array([fn(recs.get(u, []), truth[u], k) for u in truth], dtype=np.float64)


def catalog_coverage(recs: dict[str, Sequence], catalog_size: int, k: int) -> float:
    items = set()
    for r in recs.values():
        items.update(_dedupe(r)[:k])
    return len(items) / catalog_size if catalog_size else 0.0


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling users with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def paired_bootstrap_by_group(
    correct_a: np.ndarray, correct_b: np.ndarray, groups: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """95% intervals of accuracy b and of b - a (0/1 hits per photo), resampling whole groups (photos of one product
    are not independent, so the products are what is resampled). Returns (interval of b, interval of b - a)."""
    uniq, inv = np.unique(groups, return_inverse=True)
    na = np.bincount(inv, weights=correct_a, minlength=len(uniq))
    nb = np.bincount(inv, weights=correct_b, minlength=len(uniq))
    cnt = np.bincount(inv, minlength=len(uniq))
    rng = np.random.default_rng(seed)
    acc, diff = [], []
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
        tot = (w * cnt).sum()
        acc.append((w * nb).sum() / tot)
        diff.append((w * (nb - na)).sum() / tot)
    return np.percentile(acc, [2.5, 97.5]), np.percentile(diff, [2.5, 97.5])
