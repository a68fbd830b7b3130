"""The hybrid's vocabulary: its candidate sources, the feature columns of a (customer, candidate) row, the bucket
ranker's evidence, and the small array helpers every source shares."""

from __future__ import annotations

import numpy as np

from fashionrec.config import TAG_COLUMNS

SOURCES = [
    "repurchase",
    "same_product",
    "pairs",
    "pop_decay",
    "pop_week",
    "pop_month",
    "age_pop",
    "dept_pop",
    "new_colour",
    "visual",
    "new_arrival",
    "taste",
]
SHARE_COLUMNS = TAG_COLUMNS
ITEM_FEATURES = [
    "pop_week",
    "pop_month",
    "pop_all",
    "first_sale_days",
    "last_sale_days",
    "code_pop_week",
    "code_pop_month",
    "code_first_days",
    "code_last_days",
    "never_sold",
    "trend",
    "buyer_age",
    "item_price",
]
USER_FEATURES = ["age", "n_purchases", "n_distinct", "days_since_last", "user_price"]
PAIR_FEATURES = (
    [
        "n_own",
        "own_w",
        "own_days",
        "n_code",
        "code_days",
        "vis_max",
        "vis_profile",
        "age_diff",
        "price_ratio",
        "als",
        "pair_score",
    ]
    + [f"share_{c}" for c in SHARE_COLUMNS]
    + ["taste_pct"]
)
FEATURES = [f"rank_{s}" for s in SOURCES] + ITEM_FEATURES + USER_FEATURES + PAIR_FEATURES
RANKERS = {"buckets", "binary", "lambdarank", "heuristic"}
# The bucket ranker's evidence: how recently the customer bought the item / its product, and each source's rank.
_INF = np.inf
BUCKETS = [
    ("own_days", [0, 7, 14, 30, 60, 90, 180, 365, _INF]),
    ("code_days", [0, 7, 14, 30, 60, 90, 180, 365, _INF]),
    ("rank_pop_decay", [0, 1, 2, 3, 5, 8, 12, 20, 30, _INF]),
    ("rank_pop_month", [0, 1, 2, 3, 5, 8, 12, 20, 30, _INF]),
    ("rank_pop_week", [0, 1, 2, 3, 5, 8, 12, 20, _INF]),
    ("rank_age_pop", [0, 2, 5, 10, _INF]),
    ("rank_dept_pop", [0, 2, 5, 10, _INF]),
    ("rank_new_arrival", [0, 1, 2, 3, 5, 10, _INF]),
    ("rank_new_colour", [0, 3, 6, 10, _INF]),
    ("rank_pairs", [0, 3, 6, 10, _INF]),
    ("rank_visual", [0, 3, 6, 10, _INF]),
    ("vis_max", [-_INF, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, _INF]),
    ("rank_taste", [0, 1, 2, 3, 5, 10, 20, _INF]),
    # the candidate's taste score as a percentile of every item's, for this customer (`recommend.taste`)
    ("taste_pct", [0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.01]),
]
# The columns the bucket ranker reads (source ranks, own/product recency, visual similarity) and those its
# own-purchases-first rule reads: with ranker='buckets' only these are computed in the batch path (the others stay
# NaN), so the bought-together sums over whole histories, the share and per-customer columns cost nothing.
BUCKET_FEATURES = frozenset(
    [f"rank_{s}" for s in SOURCES] + [name for name, _ in BUCKETS] + ["n_own", "own_w", "own_days", "pop_month"]
)
AGE_BANDS = np.array([0, 22, 26, 30, 35, 40, 45, 50, 55, 60, 200])
WINDOW_CACHE_ROWS = 2_000_000  # training rows kept for reuse across rankers (~0.4 GB); beyond, windows are rebuilt
BEYOND = -1e6  # offset of the taste scores of items that are not candidates: below every ranked candidate
BLOCK = 1024  # customers whose candidates and features are built together (memory ~ BLOCK x ~200 rows x 47 floats)

_CONTROLLER = None


def _one_thread():
    """threadpoolctl limit to one thread; the controller (a scan of loaded libraries) is built once."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


def _top(score: np.ndarray, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n largest positive scores (within mask), best first."""
    s = np.where(mask, score, 0.0) if mask is not None else score
    pos = np.flatnonzero(s > 0)
    if len(pos) > n:
        pos = pos[np.argpartition(-s[pos], n - 1)[:n]]
    return pos[np.argsort(-s[pos], kind="stable")]


def _top_sparse(idx: np.ndarray, val: np.ndarray, n: int) -> np.ndarray:
    """`_top` of a dense score vector given by its positive entries (indices ascending): the same argpartition and
    stable argsort on the same values, so ties come out in the same order."""
    if len(idx) > n:
        sel = np.argpartition(-val, n - 1)[:n]
        idx, val = idx[sel], val[sel]
    return idx[np.argsort(-val, kind="stable")]


def _group_lookup(keys: np.ndarray, vals: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query key: how many times it occurs in `keys`, and the smallest matching `vals` (NaN if none)."""
    cnt = np.zeros(len(query))
    mn = np.full(len(query), np.nan)
    if not len(keys):
        return cnt, mn
    uk, inv = np.unique(keys, return_inverse=True)
    c = np.bincount(inv, minlength=len(uk)).astype(float)
    v = np.full(len(uk), np.inf)
    np.minimum.at(v, inv, vals)
    pos = np.clip(np.searchsorted(uk, query), 0, len(uk) - 1)
    hit = (uk[pos] == query) & (query >= 0)
    cnt[hit] = c[pos[hit]]
    mn[hit] = v[pos[hit]]
    return cnt, mn
