"""Metrics: a leaf module (numpy; scikit-learn and SciPy imported where used; no torch, no timm), tested against
hand-computed values and slow references.

Ranking metrics take, per user, a ranked list of recommended ids and the set of ids actually bought. They follow
the H&M Kaggle competition's MAP@12: AP@K = sum_k P(k) rel(k) / min(|actual|, K).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def accuracy(y_true, y_pred) -> float:
    """Share of exact matches (sklearn.metrics.accuracy_score); 0.0 for no rows."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class index, columns = predicted (sklearn.metrics)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred (sklearn.metrics.f1_score,
    average="macro"); 0.0 for no rows. `n_classes` is accepted for callers that pass it and does not change the
    classes averaged over."""
    from sklearn.metrics import f1_score

    if not len(y_true):
        return 0.0
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0.0))


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


#: Values drawn per bootstrap batch, whatever n_boot and n: each array of a batch (indices, resampled values) is 32 MB.
BOOT_BATCH_VALUES = 1 << 22


def _boot_batch(n: int) -> int:
    return max(1, BOOT_BATCH_VALUES // max(n, 1))


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling users with replacement (scipy.stats.bootstrap, drawn in
    batches of `BOOT_BATCH_VALUES` values, so memory stays bounded for any number of users)."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:  # nothing to resample (SciPy needs two observations): the interval is the value itself
        v = float(values[0]) if len(values) else 0.0
        return (v, v)
    res = bootstrap(
        (values,),
        np.mean,
        n_resamples=n_boot,
        batch=_boot_batch(len(values)),
        vectorized=True,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap_by_group(
    correct_a: np.ndarray, correct_b: np.ndarray, groups: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """95% intervals of accuracy b and of b - a (0/1 hits per photo), resampling whole groups (photos of one product
    are not independent, so the products are what is resampled). Returns (interval of b, interval of b - a).
    scipy.stats.bootstrap (percentile, paired over the groups' hit and photo counts, drawn in bounded batches)."""
    from scipy.stats import bootstrap

    uniq, inv = np.unique(groups, return_inverse=True)
    na = np.bincount(inv, weights=correct_a, minlength=len(uniq))
    nb = np.bincount(inv, weights=correct_b, minlength=len(uniq))
    cnt = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    if len(uniq) < 2:  # one group: nothing to resample
        tot = max(cnt.sum(), 1.0)
        return np.full(2, nb.sum() / tot), np.full(2, (nb - na).sum() / tot)

    def accuracy_and_gain(a, b, c, axis=-1):
        tot = c.sum(axis)
        return np.stack([b.sum(axis) / tot, (b - a).sum(axis) / tot])

    res = bootstrap(
        (na, nb, cnt),
        accuracy_and_gain,
        n_resamples=n_boot,
        batch=_boot_batch(len(uniq)),
        vectorized=True,
        paired=True,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval.low, res.confidence_interval.high
    return np.array([lo[0], hi[0]]), np.array([lo[1], hi[1]])
