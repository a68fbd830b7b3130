"""The hybrid's rankers: the bucket ranker (the default: the purchase rate of interpretable buckets, combined by
noisy-or), LightGBM (binary / lambdarank, the number of trees chosen by the newest window's MAP@12) and the fixed
order used without enough data; plus the choice of source sizes from their hit rates on the training windows."""

from __future__ import annotations

import numpy as np

from fashionrec.recommend.hybrid.schema import BUCKETS, FEATURES, SOURCES, _one_thread


def _bucket_masks(X: np.ndarray):
    """(family, bin) -> mask of the candidate rows that fall in it (own/product recency; source ranks)."""
    col = {n: i for i, n in enumerate(FEATURES)}
    n_own = np.nan_to_num(X[:, col["n_own"]])
    for name, edges in BUCKETS:
        v = X[:, col[name]]
        ok = ~np.isnan(v)
        if name == "code_days":
            ok &= n_own == 0  # other colours only (the item itself is the own_days family)
        b = np.searchsorted(np.asarray(edges, dtype=float), np.where(ok, v, 0.0), side="right") - 1
        for k in range(len(edges) - 1):
            yield name, k, ok & (b == k)


def _bucket_matrix(X: np.ndarray):
    import scipy.sparse as sp

    cols = [m for _, _, m in _bucket_masks(X)]
    return sp.csr_matrix(np.column_stack(cols).astype(np.float32)) if cols else sp.csr_matrix((len(X), 0))


def _fit_buckets(X: np.ndarray, y: np.ndarray, prior: float = 200.0, combine: str = "logistic") -> dict:
    """Purchase rate of each bucket on the training windows, shrunk towards the overall rate; with
    combine='logistic', an L2 logistic regression on the bucket indicators (it weighs correlated sources, e.g. the
    week's and the month's best sellers, instead of counting them twice)."""
    r0 = float(y.mean()) if len(y) else 0.0
    out = {"_base": r0, "_combine": combine}
    for name, k, m in _bucket_masks(X):
        n, h = int(m.sum()), int(y[m].sum())
        out[(name, k)] = (h + prior * r0) / (n + prior)
    if combine == "logistic" and 0 < y.sum() < len(y):
        from sklearn.linear_model import LogisticRegression

        out["_lr"] = LogisticRegression(C=0.1, max_iter=1000).fit(_bucket_matrix(X), y)
    return out


def _blocks_of(Xs: list, ys: list):
    """(rows, labels) of whole feature blocks from per-customer row views into them (`block.features_block` output), so
    that a window is read without stacking a copy of it; views of no common block are stacked."""
    i = 0
    while i < len(Xs):
        base = Xs[i].base if Xs[i].base is not None else Xs[i]
        j = i + 1
        while j < len(Xs) and Xs[j].base is base:
            j += 1
        rows = sum(len(x) for x in Xs[i:j])
        ok = base.ndim == 2 and base.shape[0] == rows and np.shares_memory(base[:1], Xs[i][:1])
        yield (base if ok else np.vstack(Xs[i:j])), np.concatenate(ys[i:j])
        i = j


# Rank blocks in which a source's hit rate is measured when its size is chosen (`choose_source_sizes`).
SIZE_EDGES = [0, 1, 2, 3, 5, 8, 12, 16, 20, 25, 30, 40, 60, 80, 120, 160, 240, 320]
SIZE_REFERENCE = (
    "pop_month"  # the list every customer gets: the yardstick of a candidate's worth, and never cut below k
)
# Sources whose places a rule sets, not the ranker: own purchases of the last `own_first_days` come first, and
# `arrival_slots` places are reserved for never-sold items. Cutting them would change those rules, not trim noise.
SIZE_KEEP = ("repurchase", "new_arrival")
MIN_BLOCK_ROWS = 200


def _count_ranks(X: np.ndarray, y: np.ndarray, rows: dict, hits: dict) -> None:
    """Per source: candidates and purchases at each within-source rank (the `rank_*` columns of X)."""
    for j, s in enumerate(SOURCES):
        r = X[:, j]
        m = ~np.isnan(r)
        if m.any():
            rr = r[m].astype(np.int64)
            n = int(rr.max()) + 1
            for d in (rows, hits):
                if len(d[s]) < n:
                    d[s] = np.concatenate([d[s], np.zeros(n - len(d[s]))])
            rows[s] += np.bincount(rr, minlength=len(rows[s]))
            hits[s] += np.bincount(rr, weights=y[m].astype(float), minlength=len(hits[s]))


def choose_source_sizes(rows: dict, hits: dict, maxima: dict, k: int = 12) -> dict:
    """Each source's size from its own numbers on the training windows.

    Rule: a candidate is worth ranking while it is bought at least as often as the average of the k best sellers of
    the month (`SIZE_REFERENCE`), the list every customer can get, so a weaker candidate could only push a better
    one out. For each source the rank blocks of `SIZE_EDGES` (merged until they hold `MIN_BLOCK_ROWS` candidates) are
    walked, and the size is the end of the last block at or above that rate, within the configured maximum. The
    reference list keeps at least k; `SIZE_KEEP` sources keep their size. Returns {source: {"size", "max",
    "hit_rate_by_block"}} plus "_threshold"."""
    ref_rows = rows[SIZE_REFERENCE][:k].sum()
    tau = float(hits[SIZE_REFERENCE][:k].sum() / ref_rows) if ref_rows else 0.0
    out: dict = {"_threshold": tau}
    for s in SOURCES:
        mx = int(maxima[s])
        r, h = rows[s][:mx], hits[s][:mx]
        blocks, a, size = [], 0, 0
        edges = [e for e in SIZE_EDGES if e < mx] + [mx]
        for b in edges[1:]:
            if r[a:b].sum() < MIN_BLOCK_ROWS and b < mx:
                continue  # too few candidates to tell: merged with the next block
            rate = float(h[a:b].sum() / r[a:b].sum()) if r[a:b].sum() else 0.0
            blocks.append((a, b, round(rate, 5), int(r[a:b].sum())))
            if rate >= tau and r[a:b].sum():
                size = b
            a = b
        if s in SIZE_KEEP or not ref_rows:
            size = mx
        elif s == SIZE_REFERENCE:
            size = max(size, min(k, mx))
        out[s] = {"size": int(size), "max": mx, "hit_rate_by_block": blocks}
    return out


def _cut_to_sizes(X: np.ndarray, y: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows as chosen sizes would give them: ranks at or past a source's size blanked, rows with no source
    left dropped. Returns (X, y, the kept rows' mask)."""
    n = len(SOURCES)
    past = X[:, :n] >= sizes  # NaN (not in the source) compares False
    if not past.any():
        return X, y, np.ones(len(y), dtype=bool)
    X = X.copy()
    X[:, :n][past] = np.nan
    keep = ~np.isnan(X[:, :n]).all(1)
    return X[keep], y[keep], keep


def _cut_set(st: tuple, sizes: np.ndarray) -> tuple:
    """`_cut_to_sizes` for a LightGBM training set (X, y, group sizes, purchases per customer)."""
    X, y, g, truth = st
    Xc, yc, keep = _cut_to_sizes(X, y, sizes)
    g2 = np.add.reduceat(keep.astype(np.int64), np.r_[0, np.cumsum(g)[:-1]]) if len(g) else g
    nz = g2 > 0
    return Xc, yc, g2[nz], truth[nz]


def _count_buckets(X: np.ndarray, y: np.ndarray, counts: dict) -> None:
    """Add each bucket's (rows, purchases) in X, y to counts (the streaming form of `_fit_buckets`)."""
    for name, k, m in _bucket_masks(X):
        n, h = counts.get((name, k), (0, 0))
        counts[(name, k)] = (n + int(m.sum()), h + int(y[m].sum()))


def _buckets_from_counts(counts: dict, rows: int, pos: int, prior: float = 200.0, combine: str = "noisy_or") -> dict:
    """`_fit_buckets` from counts: the same rates (the overall rate is positives / rows, as y.mean() computes it)."""
    r0 = pos / rows if rows else 0.0
    out = {"_base": r0, "_combine": combine}
    for name, edges in BUCKETS:
        for k in range(len(edges) - 1):
            n, h = counts.get((name, k), (0, 0))
            out[(name, k)] = (h + prior * r0) / (n + prior)
    return out


def _describe_buckets(b: dict):
    for name, edges in BUCKETS:
        for k in range(len(edges) - 1):
            yield name, edges[k], edges[k + 1], b.get((name, k), b["_base"])


def _score_buckets(b: dict, X: np.ndarray) -> np.ndarray:
    """Logistic score on the bucket indicators; or the best bucket's rate ('max'); or the noisy-or of the rates."""
    if "_lr" in b:
        return b["_lr"].decision_function(_bucket_matrix(X))
    if b.get("_combine") == "max":
        best = np.zeros(len(X))
        for name, k, m in _bucket_masks(X):
            best[m] = np.maximum(best[m], b.get((name, k), b["_base"]))
        return best
    miss = np.ones(len(X))
    for name, k, m in _bucket_masks(X):
        miss[m] *= 1.0 - b.get((name, k), b["_base"])
    return 1.0 - miss


def _map_at_k(score: np.ndarray, y: np.ndarray, groups: np.ndarray, n_true: np.ndarray, k: int) -> float:
    """Kaggle MAP@k over groups (one customer each): hits among the top k / min(all purchases, k)."""
    aps, o = [], 0
    for g, nt in zip(groups, n_true):
        s, t = score[o : o + g], y[o : o + g]
        o += g
        top = t[np.argsort(-s, kind="stable")[:k]]
        hits = np.cumsum(top)
        aps.append(float((top * hits / np.arange(1, len(top) + 1)).sum() / min(max(nt, 1), k)))
    return float(np.mean(aps)) if aps else 0.0


def lightgbm_params(model) -> dict:
    params = {
        "objective": model.ranker_kind,
        "learning_rate": model.learning_rate,
        "num_leaves": model.num_leaves,
        "min_child_samples": model.min_child_samples,
        "feature_fraction": model.feature_fraction,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": model.lambda_l2,
        "seed": model.seed,
        "verbose": -1,
        "num_threads": 1,
        "deterministic": True,
        "force_row_wise": True,
    }
    if model.ranker_kind == "lambdarank":
        params.update(eval_at=[12], lambdarank_truncation_level=20)
    params["metric"] = "None"
    return params


def _dataset(lgb, sets, reference=None):
    X = np.vstack([s[0] for s in sets])
    y = np.concatenate([s[1] for s in sets])
    g = np.concatenate([s[2] for s in sets])
    return lgb.Dataset(X, y, group=g, feature_name=FEATURES, reference=reference, free_raw_data=False)


def fit_lightgbm(model, sets: list, stats: dict):
    """LightGBM on the training sets (newest first: (X, y, groups, purchases per customer)). With 3+ windows the
    newest validates: the number of trees is chosen by the real MAP@12 of that window (every purchase counts, also
    those no source found; LightGBM's map@k scores such users 1). Returns (booster, number of trees)."""
    import lightgbm as lgb

    params = lightgbm_params(model)
    n_iter = model.n_estimators
    if len(sets) >= 3 and sets[0][1].sum() >= 5:
        b = lgb.train(params, _dataset(lgb, sets[1:]), num_boost_round=model.n_estimators)
        Xv, yv, gv, tv = sets[0]
        curve = {}
        for it in sorted({10, 25, 50, 100, 150, 200, 300, 400, 600, model.n_estimators}):
            if it <= model.n_estimators:
                curve[it] = _map_at_k(b.predict(Xv, num_iteration=it), yv, gv, tv, 12)
        n_iter = max(curve, key=lambda it: (round(curve[it], 6), -it))
        stats["valid_map@12_by_trees"] = {int(k): round(v, 5) for k, v in curve.items()}
    booster = lgb.train(params, _dataset(lgb, sets), num_boost_round=n_iter)
    stats["trees"] = n_iter
    return booster, n_iter


def fallback_scores(X: np.ndarray) -> np.ndarray:
    """A fixed order (ranker='heuristic', or too little data to learn one): own purchases (recent first), other
    colours of recently bought products (of products that sell now first), then what sells now."""
    f = {n: X[:, i] for i, n in enumerate(FEATURES)}
    z = lambda a, v=0.0: np.nan_to_num(a, nan=v)  # noqa: E731
    own = (z(f["n_own"]) > 0) * (2.0 + np.exp(-z(f["own_days"], 1e3) / 60.0))
    code = (
        ((z(f["n_code"]) > 0) & (z(f["n_own"]) == 0))
        * (1.0 + np.exp(-z(f["code_days"], 1e3) / 60.0))
        * np.where(z(f["code_pop_month"]) > 0, 1.0, 0.6)
    )
    pop = z(f["pop_month"]) / (z(f["pop_month"]).max() + 1e-9)
    return own + code + pop + 0.2 * z(f["vis_max"]) + 0.1 * z(f["trend"])


def predict(model, X: np.ndarray) -> np.ndarray:
    """The ranker's score of every row; with `own_first`, the customer's own purchases of the last
    `own_first_days` first, in repurchase's order."""
    if getattr(model, "buckets", None) is not None:
        s = _score_buckets(model.buckets, X)
    elif model.booster is None:
        s = fallback_scores(X)
    else:
        with _one_thread():
            s = model.booster.predict(X, num_threads=1)
    if getattr(model, "own_first", False):
        ow = np.nan_to_num(X[:, FEATURES.index("own_w")])
        od = np.nan_to_num(X[:, FEATURES.index("own_days")], nan=np.inf)
        ow = np.where(od <= getattr(model, "own_first_days", np.inf), ow, 0.0)
        pm = np.nan_to_num(X[:, FEATURES.index("pop_month")])
        top = model.state.pop_month.max() if getattr(model, "state", None) is not None else pm.max()
        s = s + (ow > 0) * (10.0 + ow + 0.5 * pm / (top + 1e-9))
    return s
