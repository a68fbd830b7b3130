import numpy as np
import pytest

from fashionrec.evaluation import metrics as M


def test_average_precision_hand_computed():
    # ranked a,b,c,d with a and c relevant: AP@4 = (1/1 + 2/3) / 2
    assert M.average_precision_at_k(["a", "b", "c", "d"], {"a", "c"}, 4) == pytest.approx((1 + 2 / 3) / 2)
    # Kaggle MAP@12 divides by min(|actual|, K)
    assert M.average_precision_at_k(["x", "a"], {"a", "b", "c"}, 2) == pytest.approx(0.5 / 2)
    assert M.average_precision_at_k([], {"a"}, 12) == 0.0
    # duplicates in a ranking do not earn twice
    assert M.average_precision_at_k(["a", "a", "b"], {"a", "b"}, 3) == pytest.approx(1.0)


def test_ndcg_hand_computed():
    # cornac's example style: hit at rank 2 only, one relevant item: 1/log2(3)
    assert M.ndcg_at_k(["x", "a"], {"a"}, 2) == pytest.approx(1 / np.log2(3))
    assert M.ndcg_at_k(["a", "x", "b"], {"a", "b"}, 3) == pytest.approx((1 + 0.5) / (1 + 1 / np.log2(3)))


def test_recall_hitrate_coverage():
    assert M.recall_at_k(["a", "b", "c"], {"a", "z"}, 2) == 0.5
    assert M.hit_rate_at_k(["b", "c"], {"a"}, 2) == 0.0
    assert M.hit_rate_at_k(["b", "a"], {"a"}, 2) == 1.0
    assert M.catalog_coverage({"u": ["a", "b"], "v": ["b", "c"]}, 10, 2) == pytest.approx(0.3)


def _slow_ap(ranked, actual, k):
    # Obviously-correct reference: precision at each relevant position, straight from the definition.
    seen, ranked2 = [], []
    for r in ranked:
        if r not in seen:
            seen.append(r)
            ranked2.append(r)
    ranked2 = ranked2[:k]
    total = 0.0
    for i in range(len(ranked2)):
        if ranked2[i] in actual:
            total += sum(1 for x in ranked2[: i + 1] if x in actual) / (i + 1)
    return total / min(len(actual), k) if actual else 0.0


def test_map_matches_slow_reference_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(300):
        ranked = list(rng.integers(0, 30, size=rng.integers(0, 20)))
        actual = set(rng.integers(0, 30, size=rng.integers(1, 8)).tolist())
        assert np.isclose(M.average_precision_at_k(ranked, actual, 12), _slow_ap(ranked, actual, 12))


def test_classification_metrics_match_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
    assert np.isclose(M.macro_f1(y, p), f1_score(y, p, average="macro"))
    assert M.confusion_matrix(y, p, 5).sum() == 200
    assert np.trace(M.confusion_matrix(y, p, 5)) == (y == p).sum()


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(2)
    v = rng.random(2000)
    lo, hi = M.bootstrap_ci(v)
    assert lo < v.mean() < hi
    lo2, hi2 = M.bootstrap_ci(v[:100])
    assert (hi - lo) < (hi2 - lo2)


def test_paired_bootstrap_by_group_resamples_whole_groups():
    """Known answers: the same hits give a zero-width difference; a product right in b and wrong in a moves the
    difference by its whole size; resampling products, not photos, keeps a product's photos together."""
    groups = np.repeat(np.arange(20), 3)  # 20 products x 3 photos
    a = np.zeros(60)
    ci_b, ci_d = M.paired_bootstrap_by_group(a, a, groups)
    assert np.allclose(ci_b, 0) and np.allclose(ci_d, 0)
    b = (groups < 10).astype(float)  # half the products right in b, all wrong in a
    ci_b, ci_d = M.paired_bootstrap_by_group(a, b, groups, n_boot=500)
    assert ci_b[0] < 0.5 < ci_b[1] and np.allclose(ci_b, ci_d)  # a is all zeros: b - a is b
    # per-product resampling: every resampled accuracy is a multiple of 1/20 (whole products), never of 1/60
    assert np.allclose(np.round(ci_b * 20), ci_b * 20)
    # photos as independent samples would give a narrower interval than products do
    ci_photos, _ = M.paired_bootstrap_by_group(a, b, np.arange(60), n_boot=500)
    assert (ci_photos[1] - ci_photos[0]) < (ci_b[1] - ci_b[0])


# Hand-written references (the implementations the library calls replaced), kept as oracles.
def _oracle_macro_f1(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    f1s = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def _oracle_bootstrap_ci(values, n_boot, alpha=0.05, seed=0):
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def _oracle_paired_by_group(a, b, groups, n_boot, seed=0):
    uniq, inv = np.unique(groups, return_inverse=True)
    na, nb = np.bincount(inv, weights=a), np.bincount(inv, weights=b)
    cnt = np.bincount(inv)
    rng = np.random.default_rng(seed)
    acc, diff = [], []
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
        acc.append((w * nb).sum() / (w * cnt).sum())
        diff.append((w * (nb - na)).sum() / (w * cnt).sum())
    return np.percentile(acc, [2.5, 97.5]), np.percentile(diff, [2.5, 97.5])


def test_classification_metrics_match_hand_written_oracle():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, 300)
    p = np.where(rng.random(300) < 0.5, y, rng.integers(0, 7, 300))  # class 6 only ever predicted
    assert M.accuracy(y, p) == pytest.approx((y == p).mean())
    assert M.macro_f1(y, p, 7) == pytest.approx(_oracle_macro_f1(y, p))
    cm = np.zeros((7, 7), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    assert (M.confusion_matrix(y, p, 7) == cm).all()
    assert M.accuracy([], []) == 0.0 and M.macro_f1([], []) == 0.0
    # string labels (the tagger's report) go through the same functions
    from fashionrec.evaluation.retrieval import classification_report

    names = np.array(list("abcdefg"), dtype=object)
    r = classification_report(names[y], names[p], list("abcdef"))
    assert r["accuracy"] == pytest.approx((y == p).mean()) and r["macro_f1"] == pytest.approx(_oracle_macro_f1(y, p))


def test_bootstrap_ci_matches_oracle_and_covers_the_analytic_interval():
    rng = np.random.default_rng(4)
    v = rng.normal(1.0, 2.0, size=3001)  # odd length: the draws stay the oracle's
    lo, hi = M.bootstrap_ci(v, n_boot=2000)
    assert (lo, hi) == pytest.approx(_oracle_bootstrap_ci(v, 2000), rel=1e-9)
    # the mean of normal data: mean +- 1.96 s / sqrt(n); the bootstrap interval agrees within Monte-Carlo noise
    half = 1.959964 * v.std(ddof=1) / np.sqrt(len(v))
    assert abs(lo - (v.mean() - half)) < 0.1 * half and abs(hi - (v.mean() + half)) < 0.1 * half
    assert M.bootstrap_ci(np.array([0.25])) == (0.25, 0.25) and M.bootstrap_ci(np.array([])) == (0.0, 0.0)


def test_paired_bootstrap_by_group_matches_oracle():
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 40, 150)
    a, b = (rng.random(150) < 0.5).astype(float), (rng.random(150) < 0.7).astype(float)
    got_b, got_d = M.paired_bootstrap_by_group(a, b, groups, n_boot=400, seed=3)
    exp_b, exp_d = _oracle_paired_by_group(a, b, groups, 400, seed=3)
    assert np.allclose(got_b, exp_b) and np.allclose(got_d, exp_d)


def test_bootstrap_of_a_million_values_runs_in_bounded_memory():
    """An n_boot x n index matrix would be 200 x 1,000,000 x 8 bytes = 1.6 GB (twice, with the gathered values)."""
    import tracemalloc

    v = np.random.default_rng(6).random(1_000_000)
    tracemalloc.start()
    try:
        lo, hi = M.bootstrap_ci(v, n_boot=200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"
    assert lo < v.mean() < hi
