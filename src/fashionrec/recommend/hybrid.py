"""Hybrid: candidates from many sources, ranked by LightGBM trained on past windows of the log.

The shape of the H&M Kaggle winners' pipelines (1st place: recall strategies + interaction features + one GBDT;
3rd place: source flags and within-source ranks as features), scaled to one machine:

1. candidate sources per customer (`SOURCES`): own purchases (repurchase), other colours of products the customer
   bought, items bought together with theirs, popular last week / last month, popular in the customer's age band
   and in the departments they buy from, never-sold colours of products that sell now, visual neighbours of recent
   purchases, and new arrivals (items not sold yet) ranked by how much their photo looks like what sells now and
   like what this customer buys;
2. features per (customer, candidate): source flags and within-source ranks; item popularity, freshness (first and
   last sale, item and product level), buyers' mean age and price; the customer's age, activity and price level;
   how often and how recently they bought the item or its product; their share of purchases in the item's
   (predicted) type, group, department, colour...; visual similarity; ALS and bought-together scores;
3. a ranker trained on several past windows, then every statistic is recomputed at the fit date for serving. The
   default (`ranker="buckets"`) learns the purchase rate of interpretable buckets (how recently the customer bought
   the item or its product, each source's rank, visual similarity) and combines them by noisy-or; the customer's
   own purchases of the last 90 days come first in repurchase's order, and the last 4 of 12 places go to the best
   items nobody has bought yet. LightGBM (`ranker="binary"|"lambdarank"`, the number of trees chosen by the real
   MAP@12 of the newest window) is the alternative; on the H&M sample's leak-free protocol it scored lower
   (README, Results), which is why it is not the default at this data size.

Item attributes follow the leak-free rule of `RecData.describe`: the catalog row of items bought before the time
the features stand at, tags predicted from the photo otherwise. No feature says whether an item has a row.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from fashionrec.recommend.attributes import TAG_COLUMNS, UNKNOWN
from fashionrec.recommend.base import DAY, RecData, Recommender, register_recommender

log = logging.getLogger(__name__)

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


def product_codes(item_ids: list[str], metadata: pd.DataFrame | None) -> np.ndarray:
    """Product (style) code per item: the catalog's product_code, else H&M's id scheme (10 digits = code + colour)."""
    codes = np.array([""] * len(item_ids), dtype=object)
    if metadata is not None and "product_code" in getattr(metadata, "columns", []):
        m = metadata["product_code"].astype(str).to_dict()
        codes = np.array([m.get(i, "") for i in item_ids], dtype=object)
    hm = re.compile(r"^\d{10}$")
    for j, i in enumerate(item_ids):
        if not codes[j] and hm.match(i):
            codes[j] = str(int(i[:-3]))
    return codes


_CONTROLLER = None
_TASTE_CACHE: dict = {}


def _fit_taste(data: RecData, until, seed: int):
    """The taste model of `data` (up to `until`), fitted once per data object: hybrids compared on the same windows
    (evaluation, tuning) share it. A copy is returned, so that `add_items` on one model never reaches another."""
    import copy

    from fashionrec.recommend.taste import Taste

    if _TASTE_CACHE.get("data") is not data:
        _TASTE_CACHE.clear()
        _TASTE_CACHE["data"] = data
    key = (str(until), seed, data.n_items)
    if key not in _TASTE_CACHE:
        _TASTE_CACHE[key] = Taste(seed=seed).fit(data, until=until)
    return copy.copy(_TASTE_CACHE[key])


_NB_CACHE: dict = {}
_WINDOW_CACHE: dict = {}


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


class _State:
    """Everything the features need, computed from the events before `t` (a day boundary)."""

    def __init__(
        self,
        data: RecData,
        t: pd.Timestamp,
        cfg: Hybrid,
        vectors: np.ndarray | None,
        has_vec: np.ndarray,
        codes: np.ndarray,
    ):
        self.t = pd.Timestamp(t)
        # the events before t: a prefix of the integer-coded log (no copy of the log, no string ids mapped again)
        lg, p = data.coded(), data.before(self.t)
        n = data.n_items
        idx, ucode, ev_ts = lg["item"][:p], lg["user"][:p], lg["ts"][:p]
        age = (np.datetime64(self.t, "ns") - ev_ts) / DAY
        w = lg["weight"][:p]
        self.pop_week = np.bincount(idx[age <= 7], w[age <= 7], minlength=n)
        self.pop_month = np.bincount(idx[age <= 28], w[age <= 28], minlength=n)
        self.pop_all = np.bincount(idx, w, minlength=n)
        self.first_days = np.full(n, np.nan)
        self.last_days = np.full(n, np.nan)
        if len(idx):
            mx = np.full(n, -np.inf)
            np.maximum.at(mx, idx, age)
            mn = np.full(n, np.inf)
            np.minimum.at(mn, idx, age)
            sold = self.pop_all > 0
            self.first_days[sold], self.last_days[sold] = mx[sold], mn[sold]
        self.sold = self.pop_all > 0
        # product level
        uniq = {c: j for j, c in enumerate(sorted({c for c in codes if c}))}
        self.code_ids = np.array([uniq.get(c, -1) for c in codes], dtype=np.int64)
        nc = max(1, len(uniq))
        has_code = self.code_ids >= 0
        ci = np.maximum(self.code_ids, 0)

        def by_code(x, how):
            agg = np.full(nc, np.nan if how != "sum" else 0.0)
            if how == "sum":
                np.add.at(agg, ci[has_code], x[has_code])
            else:
                ok = has_code & ~np.isnan(x)
                fill = -np.inf if how == "max" else np.inf
                a = np.full(nc, fill)
                (np.maximum if how == "max" else np.minimum).at(a, ci[ok], x[ok])
                agg = np.where(np.isfinite(a), a, np.nan)
            return np.where(has_code, agg[ci], np.nan if how != "sum" else x)

        self.code_pop_week = by_code(self.pop_week, "sum")
        self.code_pop_month = by_code(self.pop_month, "sum")
        self.code_first = by_code(self.first_days, "max")
        self.code_last = by_code(self.last_days, "min")
        order = np.argsort(self.code_ids, kind="stable")
        order = order[self.code_ids[order] >= 0]
        self.code_order = order
        self.code_start = np.searchsorted(self.code_ids[order], np.arange(nc))
        self.code_end = np.searchsorted(self.code_ids[order], np.arange(nc), side="right")
        # attributes, as known at t (row if bought before t, predicted tags otherwise)
        desc = data.describe(self.t, SHARE_COLUMNS)
        self.attr = {}
        for c in SHARE_COLUMNS:
            vals = desc[c].to_numpy()
            cat = pd.Categorical(vals)
            a = np.asarray(cat.codes, dtype=np.int64)
            if UNKNOWN in cat.categories:
                a[vals == UNKNOWN] = -1
            self.attr[c] = a
        # customers: age per event, buyers' mean age and price per item
        ages = None
        if data.users is not None and "age" in data.users.columns:
            ages = data.users["age"]
        self.user_age = ages
        ev_age = np.full(p, np.nan)
        if ages is not None:  # age per event through the user codes (ages.reindex = Series.map's look-up)
            uniq = ages[~ages.index.duplicated(keep="first")]
            ev_age = uniq.reindex(pd.Index(data.user_ids, dtype=object)).to_numpy(dtype=np.float64)[ucode]
        ok = ~np.isnan(ev_age)
        s_age = np.bincount(idx[ok], ev_age[ok], minlength=n)
        c_age = np.bincount(idx[ok], minlength=n)
        self.buyer_age = np.where(c_age > 0, s_age / np.maximum(c_age, 1), np.nan)
        price = lg["price"][:p]
        okp = ~np.isnan(price)
        s_p = np.bincount(idx[okp], price[okp], minlength=n)
        c_p = np.bincount(idx[okp], minlength=n)
        self.item_price = np.where(c_p > 0, s_p / np.maximum(c_p, 1), np.nan)
        # histories at t: user codes are in sorted-id order (RecData.user_ids), slices of arrays sorted by user
        self.hist = data._hist.upto(np.bincount(ucode, minlength=len(data.user_ids)))  # views of RecData's
        # global candidate lists
        # what sells now, time-decayed (the popularity baseline's list: half-life 7 days over the last 28)
        self.pop_decay = np.bincount(
            idx[age <= 28], (w * np.power(0.5, np.maximum(age, 0) / 7.0))[age <= 28], minlength=n
        )
        self.list_decay = _top(self.pop_decay, cfg.n_pop_decay)
        self.list_week = _top(self.pop_week, cfg.n_pop_week)
        self.list_month = _top(self.pop_month, cfg.n_pop_month)
        self.list_new_colour = _top(
            self.code_pop_month + 1e-3 * self.code_pop_week, cfg.n_new_colour, ~self.sold & has_code
        )
        band = np.searchsorted(AGE_BANDS, ev_age, side="right") - 1
        self.age_lists = {}
        recent = age <= 28
        for b in range(len(AGE_BANDS) - 1):
            m = recent & (band == b)
            if m.any():
                self.age_lists[b] = _top(np.bincount(idx[m], w[m], minlength=n), cfg.n_age_pop)
        dep = self.attr.get("department_name")
        self.dept_lists = {}
        if dep is not None:
            m = dep >= 0
            for d in np.unique(dep[m]):
                self.dept_lists[int(d)] = _top(self.pop_month, cfg.n_dept_pop, dep == d)
        # bought together: items bought by the same customer within `pair_days` of each other (sparse counts)
        self.pairs = None
        if len(idx) and cfg.n_pairs:
            self.pairs = _co_purchases(ucode, idx, ev_ts, n, cfg.pair_days)
        # what sells now, in pictures: popularity-weighted mean of the month's best sellers' image vectors
        self.trend = np.zeros(n)
        self.arrival_pool = np.zeros(0, dtype=np.int64)
        self.V = vectors
        self.has_vec = has_vec
        if vectors is not None:
            prof = self._sells_now(vectors, has_vec)
            if prof is not None:
                self.trend = np.where(has_vec, vectors @ prof, 0.0)
            self.arrival_pool = _top(self.trend + 1.0, cfg.arrival_pool, ~self.sold & has_vec)
        # ALS factors (collaborative signal as a feature)
        self.als_user, self.als_items = {}, None
        if cfg._needs_als() and len(idx) >= 50:
            self._fit_als(ucode, data.user_ids, idx, n, cfg.seed)

    def _sells_now(self, vectors: np.ndarray, has_vec: np.ndarray) -> np.ndarray | None:
        """What sells now, in pictures: the popularity-weighted mean of the month's 200 best sellers' image vectors."""
        top = [j for j in _top(self.pop_month, 200) if has_vec[j]]
        if not top:
            return None
        prof = (vectors[top] * self.pop_month[top, None]).sum(0)
        return prof / max(np.linalg.norm(prof), 1e-12)

    def _fit_als(self, ucode, user_ids, idx, n, seed):
        import warnings

        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares

        # user codes are in sorted-id order: factorizing them = np.unique(ids, return_inverse=True), without strings
        u_codes, present = pd.factorize(ucode, sort=True)
        uid = np.asarray(user_ids, dtype=object)[np.asarray(present, dtype=np.int64)]
        x = sp.csr_matrix((np.ones(len(idx), dtype=np.float32), (u_codes, idx)), shape=(len(uid), n))
        x.sum_duplicates()
        x.data = 1.0 + np.log1p(x.data)
        als = AlternatingLeastSquares(factors=32, regularization=0.05, iterations=15, alpha=10.0, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            als.fit(x, show_progress=False)
        self.als_items = np.asarray(als.item_factors)
        uf = np.asarray(als.user_factors)
        self.als_user = {u: uf[j] for j, u in enumerate(uid)}

    def add_items(self, n_new: int, codes: np.ndarray, attrs: dict, vectors: np.ndarray | None, has_vec: np.ndarray):
        """New arrivals after fitting: unsold items, reachable through the new-arrival and new-colour sources."""
        z, nan = np.zeros(n_new), np.full(n_new, np.nan)
        for a in ("pop_week", "pop_month", "pop_all", "pop_decay"):
            setattr(self, a, np.concatenate([getattr(self, a), z]))
        for a in ("first_days", "last_days", "buyer_age", "item_price"):
            setattr(self, a, np.concatenate([getattr(self, a), nan]))
        self.sold = np.concatenate([self.sold, np.zeros(n_new, dtype=bool)])
        # product level: a new colour of a known product inherits the product's sales
        known = {}
        for j, c in enumerate(self.code_ids):
            if c >= 0:
                known.setdefault(c, j)
        old_codes = getattr(self, "_codes", None)
        new_ids = np.full(n_new, -1, dtype=np.int64)
        if old_codes is not None:
            lookup = {c: self.code_ids[j] for j, c in enumerate(old_codes) if c}
            new_ids = np.array([lookup.get(c, -1) for c in codes], dtype=np.int64)
        for a in ("code_pop_week", "code_pop_month", "code_first", "code_last"):
            old = getattr(self, a)
            vals = np.array(
                [old[known[c]] if c >= 0 and c in known else (0.0 if "pop" in a else np.nan) for c in new_ids]
            )
            setattr(self, a, np.concatenate([old, vals]))
        self.code_ids = np.concatenate([self.code_ids, new_ids])
        if old_codes is not None:
            self._codes = np.concatenate([old_codes, codes])
        for c in self.attr:
            self.attr[c] = np.concatenate([self.attr[c], attrs.get(c, np.full(n_new, -1, dtype=np.int64))])
        if self.pairs is not None:
            import scipy.sparse as sp

            n = self.pairs.shape[0] + n_new
            p = self.pairs.tocoo()
            self.pairs = sp.csr_matrix((p.data, (p.row, p.col)), shape=(n, n))
        if self.als_items is not None:
            self.als_items = np.vstack([self.als_items, np.zeros((n_new, self.als_items.shape[1]), np.float32)])
        self.V, self.has_vec = vectors, has_vec
        if vectors is not None:
            new_trend = np.zeros(n_new)
            prof = self._sells_now(vectors, has_vec)
            if prof is not None:
                new_trend = np.where(has_vec[-n_new:], vectors[-n_new:] @ prof, 0.0)
            self.trend = np.concatenate([self.trend, new_trend])
            new_idx = np.arange(len(self.trend) - n_new, len(self.trend))[has_vec[-n_new:]]
            self.arrival_pool = np.concatenate([new_idx, self.arrival_pool])
        else:
            self.trend = np.concatenate([self.trend, z])


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
    """(rows, labels) of whole feature blocks from per-customer row views into them (`_features_block` output), so
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


def _co_purchases(users, idx, ts, n, days, max_rows: int = 2_000_000):
    """Sparse item x item counts of pairs bought by one customer within `days` of each other (`users`: any ids,
    integer codes are fastest)."""
    import scipy.sparse as sp

    d_all = ts.astype("datetime64[D]").astype(np.int64)
    frame = lambda a: pd.DataFrame({"u": users[a:], "i": idx[a:], "d": d_all[a:]}).drop_duplicates()
    df = None
    if len(d_all) > max_rows and (np.diff(d_all) >= 0).all():
        # A log in time order: only its newest days can be kept, so read whole days back from the end until they hold
        # `max_rows` distinct rows; the rows kept below are then the same as from the whole log (every row of the
        # boundary day is read, duplicates share their day), without de-duplicating all of it (30M rows at 1M customers).
        take = max_rows
        while take < len(d_all):
            a = int(np.searchsorted(d_all, d_all[len(d_all) - take], side="left"))
            part = frame(a)
            if len(part) >= max_rows or a == 0:
                df = part
                break
            take *= 2
    if df is None:
        df = frame(0)
    if len(df) > max_rows:  # keep memory bounded on big logs: the most recent pairs are the informative ones
        df = df.nlargest(max_rows, "d")
    # A band join instead of a self-merge on the customer: each purchase meets only that customer's purchases within
    # `days` (sorted keys, searchsorted), so the work is the number of pairs kept, not the sum of squared basket
    # sizes (a customer with 500 purchases made 250,000 merge rows). The same pairs as the merge, counted the same.
    u = pd.factorize(df["u"])[0].astype(np.int64)
    d = df["d"].to_numpy(dtype=np.int64)
    i = df["i"].to_numpy(dtype=np.int64)
    span = int(d.max() - d.min()) + 2 * int(days) + 2 if len(d) else 1
    key = u * span + (d - (d.min() if len(d) else 0))
    order = np.argsort(key, kind="stable")
    key, i = key[order], i[order]
    lo = np.searchsorted(key, key - days, side="left")
    hi = np.searchsorted(key, key + days, side="right")
    cnt = hi - lo
    x = np.repeat(np.arange(len(key)), cnt)
    y = np.repeat(lo, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    keep = i[x] != i[y]
    return sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (i[x][keep], i[y][keep])), shape=(n, n))


@register_recommender("hybrid")
class Hybrid(Recommender):
    """Candidate sources + a LightGBM ranker learned on past windows of the purchase log (see the module doc)."""

    needs_images = True

    def __init__(
        self,
        label_days: int = 28,
        n_windows: int = 6,
        window_step_days: int = 14,
        ranker: str = "buckets",
        n_repurchase: int = 40,
        n_same_product: int = 30,
        n_pairs: int = 20,
        n_pop_decay: int = 30,
        n_pop_week: int = 30,
        n_pop_month: int = 30,
        n_age_pop: int = 20,
        n_dept_pop: int = 10,
        n_new_colour: int = 20,
        n_visual: int = 20,
        n_new_arrival: int = 20,
        arrival_pool: int = 500,
        pair_days: int = 14,
        recent_items: int = 10,
        use_als: bool = True,
        n_estimators: int = 600,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        feature_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        own_first: bool = True,
        own_first_days: float = 90.0,
        bucket_combine: str = "noisy_or",
        arrival_slots: int = 4,
        max_train_users: int = 20000,
        seed: int = 0,
        val_days: int | None = None,
        source_sizes: str = "fixed",
        taste: bool = True,
        n_taste: int = 0,
        taste_feature: bool = False,
    ):
        super().__init__()
        if val_days is not None:  # the earlier name of label_days
            label_days = val_days
        if label_days < 1 or n_windows < 1 or window_step_days < 1:
            raise ValueError("label_days, n_windows and window_step_days must be positive integers")
        if ranker not in RANKERS:
            raise ValueError(f"ranker must be one of {sorted(RANKERS)}")
        for name, v in [
            ("n_repurchase", n_repurchase),
            ("n_same_product", n_same_product),
            ("n_pairs", n_pairs),
            ("n_pop_decay", n_pop_decay),
            ("n_pop_week", n_pop_week),
            ("n_pop_month", n_pop_month),
            ("n_age_pop", n_age_pop),
            ("n_dept_pop", n_dept_pop),
            ("n_new_colour", n_new_colour),
            ("n_visual", n_visual),
            ("n_new_arrival", n_new_arrival),
            ("arrival_pool", arrival_pool),
        ]:
            if v < 0:
                raise ValueError(f"{name} must be >= 0")
        self.label_days, self.n_windows, self.window_step_days, self.ranker_kind = (
            label_days,
            n_windows,
            window_step_days,
            ranker,
        )
        self.n_repurchase, self.n_same_product, self.n_pairs = n_repurchase, n_same_product, n_pairs
        self.n_pop_week, self.n_pop_month, self.n_age_pop, self.n_dept_pop = (
            n_pop_week,
            n_pop_month,
            n_age_pop,
            n_dept_pop,
        )
        self.n_pop_decay = n_pop_decay
        self.n_new_colour, self.n_visual, self.n_new_arrival, self.arrival_pool = (
            n_new_colour,
            n_visual,
            n_new_arrival,
            arrival_pool,
        )
        self.pair_days, self.recent_items, self.use_als = pair_days, recent_items, use_als
        self.n_estimators, self.learning_rate, self.num_leaves = n_estimators, learning_rate, num_leaves
        self.min_child_samples, self.max_train_users, self.seed = min_child_samples, max_train_users, seed
        self.feature_fraction, self.lambda_l2 = feature_fraction, lambda_l2
        self.own_first, self.own_first_days = own_first, own_first_days
        if arrival_slots < 0:
            raise ValueError("arrival_slots must be >= 0")
        self.arrival_slots = arrival_slots
        if bucket_combine not in {"logistic", "max", "noisy_or"}:
            raise ValueError("bucket_combine must be 'logistic', 'max' or 'noisy_or'")
        self.bucket_combine = bucket_combine
        self._nb_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if source_sizes not in {"auto", "fixed"}:
            raise ValueError("source_sizes must be 'auto' (chosen on the training windows) or 'fixed'")
        self.source_sizes = source_sizes
        # The learned taste model (`recommend.taste`): a candidate source (the customer's best-liked photos in the
        # whole catalog), the order of the never-sold pool before it is cut, a feature of every candidate, and the
        # score of every item beyond the candidates (full rankings, `--items`, the taste metrics).
        if n_taste < 0:
            raise ValueError("n_taste must be >= 0")
        self.use_taste, self.n_taste, self.taste_feature = bool(taste), n_taste, bool(taste_feature)
        # The n_* above are each source's size; with source_sizes="auto" they are maxima: the training windows use
        # them, and `fit` cuts each source to the size its hit rates earn (`choose_source_sizes`), for the ranker and
        # for serving. Not the default: on the leak-free protocol it scored MAP@12 0.0090 against 0.0097 (README).
        self.max_sizes = {s: getattr(self, f"n_{s}", 0) for s in SOURCES}

    # ------------------------------------------------------------------ shared item facts
    def _prepare(self, data: RecData):
        self.data = data
        self.codes = product_codes(data.item_ids, data.metadata)
        self.V, self.has_vec = (None, np.zeros(data.n_items, dtype=bool))
        if data.image_features is not None:
            self.V, self.has_vec = data.image_features.aligned(data.item_ids)
        self._nb_cache = {}
        self._all_neighbours()

    def _state(self, data: RecData, t) -> _State:
        st = _State(data, t, self, self.V, self.has_vec, self.codes)
        st._codes = self.codes
        st.taste = getattr(self, "_taste_cur", None)
        if st.taste is not None:  # the whole never-sold pool: personalised by taste before it is cut
            n = len(st.sold)
            st.arrival_pool = np.flatnonzero(~st.sold & self.has_vec[:n] & st.taste.has[:n])
        return st

    def _taste_all(self, st: _State, h, ts, user=None) -> np.ndarray | None:
        """The customer's taste score of every item (-inf: no photo), or None without a taste model."""
        tm = getattr(st, "taste", None)
        if tm is None:
            return None
        return tm.taste(np.asarray(h, dtype=np.int64), np.asarray(ts).astype("datetime64[ns]"), user=user)

    def _taste_feature(self) -> bool:
        return getattr(self, "taste_feature", False)

    @staticmethod
    def _taste_percentile(tv: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Share of the items with a photo that this customer likes less than each candidate."""
        fin = np.sort(tv[np.isfinite(tv)])
        if not len(fin):
            return np.full(len(cand), np.nan)
        v = tv[cand]
        return np.where(np.isfinite(v), np.searchsorted(fin, v, side="left") / len(fin), np.nan)

    def _all_neighbours(self) -> None:
        """Visual neighbours of every item with a photo (time-independent): one exact FAISS search below 100k photos,
        the approximate `VectorIndex` (HNSW) above, where the exact all-pairs search grows as n^2."""
        self._nb_ids = self._nb_sims = None
        if self.V is None or not self.n_visual or self.has_vec.sum() < 2:
            return
        import hashlib

        import faiss

        key = (self.V.shape, self.n_visual, hashlib.sha1(self.V.tobytes()).hexdigest())
        if key in _NB_CACHE:
            self._nb_ids, self._nb_sims = _NB_CACHE[key]
            return
        faiss.omp_set_num_threads(1)  # one thread: measured 10x faster than OpenMP on 2 busy cores
        rows = np.flatnonzero(self.has_vec)
        x = np.ascontiguousarray(self.V[rows], dtype=np.float32)
        kk = min(self.n_visual + 1, len(rows))
        from fashionrec.index.base import choose_index_kind

        if choose_index_kind(len(rows)) == "exact":  # exact all-pairs search: O(n^2), seconds below 100k photos
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            sims, nb = index.search(x, kk)
        else:  # a big catalog: the project's approximate index (HNSW, IVF-PQ above 3M), built once, searched in batches
            sims, nb = _ann_neighbours(x, kk)
        ids = np.where(nb >= 0, rows[np.maximum(nb, 0)], -1)
        self._nb_ids = np.full((len(self.has_vec), kk - 1), -1, dtype=np.int64)
        self._nb_sims = np.zeros((len(self.has_vec), kk - 1), dtype=np.float32)
        for r in range(len(rows)):  # drop the item itself (wherever it landed among equal scores)
            keep = ids[r] != rows[r]
            self._nb_ids[rows[r]] = (
                ids[r][keep][: kk - 1]
                if keep.sum() >= kk - 1
                else np.pad(ids[r][keep], (0, kk - 1 - keep.sum()), constant_values=-1)
            )
            self._nb_sims[rows[r]] = (
                sims[r][keep][: kk - 1] if keep.sum() >= kk - 1 else np.pad(sims[r][keep], (0, kk - 1 - keep.sum()))
            )
        _NB_CACHE.clear()  # one catalog at a time (evaluation refits on the same photos)
        _NB_CACHE[key] = (self._nb_ids, self._nb_sims)

    def _neighbours(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Visual neighbours of item j (time-independent, cached)."""
        if getattr(self, "_nb_ids", None) is not None and j < len(self._nb_ids):
            ok = self._nb_ids[j] >= 0
            return self._nb_ids[j][ok], self._nb_sims[j][ok]
        if j not in self._nb_cache:
            if self.V is None or not self.has_vec[j]:
                self._nb_cache[j] = (np.zeros(0, dtype=np.int64), np.zeros(0))
            else:
                s = np.where(self.has_vec, self.V @ self.V[j], -np.inf)
                s[j] = -np.inf
                n = min(self.n_visual, len(s) - 1)
                top = np.argpartition(-s, n - 1)[:n] if n > 0 else np.zeros(0, dtype=np.int64)
                top = top[np.isfinite(s[top])]
                top = top[np.argsort(-s[top])]
                self._nb_cache[j] = (top, s[top])
        return self._nb_cache[j]

    # ------------------------------------------------------------------ candidates and features
    def _candidates(self, st: _State, h: np.ndarray, ts: np.ndarray, user, tv=None) -> dict[str, np.ndarray]:
        """Source name -> candidate indices, best first. tv: the customer's taste of every item (`_taste_all`)."""
        src: dict[str, np.ndarray] = {}
        if tv is None:
            tv = self._taste_all(st, h, ts, user)
        n = len(st.pop_all)
        if len(h):
            order = np.argsort(ts, kind="stable")[::-1]  # newest first
            recent_unique = pd.unique(h[order])
            src["repurchase"] = recent_unique[: self.n_repurchase]
            own = set(recent_unique.tolist())
            codes = pd.unique(st.code_ids[recent_unique])
            codes = codes[codes >= 0]
            same = []
            for c in codes:
                same.extend(st.code_order[st.code_start[c] : st.code_end[c]].tolist())
            same = np.array([j for j in dict.fromkeys(same) if j not in own], dtype=np.int64)
            if len(same):
                same = same[
                    np.argsort(-(st.code_pop_month[same] + st.pop_month[same] + 1e-3 * st.pop_all[same]), kind="stable")
                ]
            src["same_product"] = same[: self.n_same_product]
            recent = recent_unique[: self.recent_items]
            if st.pairs is not None and self.n_pairs:
                sc = np.asarray(st.pairs[recent].sum(0)).ravel()
                src["pairs"] = _top(sc, self.n_pairs)
            if self.V is not None and self.n_visual:
                nb = [self._neighbours(int(j)) for j in recent[:5]]
                if nb:
                    ids = np.concatenate([x[0] for x in nb])
                    sims = np.concatenate([x[1] for x in nb])
                    best = pd.Series(sims).groupby(ids).max().sort_values(ascending=False)
                    src["visual"] = best.index.to_numpy(dtype=np.int64)[: self.n_visual]
        src["pop_decay"] = st.list_decay
        src["pop_week"] = st.list_week
        src["pop_month"] = st.list_month
        src["new_colour"] = st.list_new_colour
        age = self._user_age(st, user)
        if not np.isnan(age):
            band = int(np.searchsorted(AGE_BANDS, age, side="right") - 1)
            if band in st.age_lists:
                src["age_pop"] = st.age_lists[band]
        dep = st.attr.get("department_name")
        if dep is not None and len(h) and st.dept_lists:
            d = dep[h]
            d = d[d >= 0]
            if len(d):
                vals, cnt = np.unique(d, return_counts=True)
                lists = [st.dept_lists.get(int(v), np.zeros(0, dtype=np.int64)) for v in vals[np.argsort(-cnt)][:2]]
                src["dept_pop"] = np.array(list(dict.fromkeys(np.concatenate(lists).tolist())), dtype=np.int64)
        if len(st.arrival_pool) and self.n_new_arrival:
            pool = st.arrival_pool[st.arrival_pool < n]
            if tv is not None:
                s = tv[pool]
            else:
                s = st.trend[pool].copy()
                prof = self._profile(h, ts)
                if prof is not None:
                    s = s + self.V[pool] @ prof
            src["new_arrival"] = pool[np.argsort(-s, kind="stable")[: self.n_new_arrival]]
        if tv is not None and self.n_taste:
            src["taste"] = _top(tv, self.n_taste, np.isfinite(tv))
        return src

    def _profile(self, h, ts):
        if self.V is None or not len(h):
            return None
        recent = pd.unique(h[np.argsort(ts, kind="stable")[::-1]])[: self.recent_items]
        recent = recent[self.has_vec[recent]]
        if not len(recent):
            return None
        p = self.V[recent].mean(0)
        return p / max(np.linalg.norm(p), 1e-12)

    def _user_age(self, st: _State, user) -> float:
        if user is None or st.user_age is None:
            return np.nan
        a = st.user_age.get(user, np.nan)
        return float(a) if a == a else np.nan

    def _features(self, st: _State, h, ts, prices, user, tv=None) -> tuple[np.ndarray, np.ndarray, dict]:
        """Candidates and their feature rows for one customer. tv: the customer's taste of every item, when the caller
        has it already (`_taste_all`)."""
        if tv is None:
            tv = self._taste_all(st, h, ts, user)
        src = self._candidates(st, h, ts, user, tv)
        cand = np.array(
            list(dict.fromkeys(np.concatenate([v for v in src.values()] or [np.zeros(0)]).astype(np.int64).tolist())),
            dtype=np.int64,
        )
        m = len(cand)
        cols = []
        where = {int(c): i for i, c in enumerate(cand)}
        for s in SOURCES:  # within-source rank (NaN = not from this source)
            r = np.full(m, np.nan)
            for rank, j in enumerate(src.get(s, ())):
                i = where[int(j)]
                if r[i] != r[i]:
                    r[i] = rank
            cols.append(r)
        cols += [
            st.pop_week[cand],
            st.pop_month[cand],
            st.pop_all[cand],
            st.first_days[cand],
            st.last_days[cand],
            st.code_pop_week[cand],
            st.code_pop_month[cand],
            st.code_first[cand],
            st.code_last[cand],
            (~st.sold[cand]).astype(float),
            st.trend[cand],
            st.buyer_age[cand],
            st.item_price[cand],
        ]
        t64 = np.datetime64(st.t, "ns")
        age = self._user_age(st, user)
        if len(h):
            hd = (t64 - ts) / DAY
            up = np.nanmean(prices) if prices is not None and np.isfinite(prices).any() else np.nan
            ucols = [age, len(h), len(np.unique(h)), float(hd.min()), up]
        else:
            hd = np.zeros(0)
            up = np.nan
            ucols = [age, 0, 0, np.nan, np.nan]
        cols += [np.full(m, v, dtype=float) for v in ucols]
        # customer x item
        n_own = np.zeros(m)
        own_w = np.zeros(m)
        own_days = np.full(m, np.nan)
        n_code = np.zeros(m)
        code_days = np.full(m, np.nan)
        vis_max = np.zeros(m)
        vis_prof = np.zeros(m)
        shares = {c: np.zeros(m) for c in SHARE_COLUMNS}
        if len(h):
            hi = np.fromiter((where.get(int(j), -1) for j in h), dtype=np.int64, count=len(h))
            ok = hi >= 0
            np.add.at(n_own, hi[ok], 1.0)
            np.add.at(own_w, hi[ok], np.power(0.5, np.maximum(hd[ok], 0) / 30.0))  # repurchase's recency weights
            od = np.full(m, np.inf)
            np.minimum.at(od, hi[ok], hd[ok])
            own_days = np.where(np.isfinite(od), od, np.nan)
            hc = st.code_ids[h]
            cc = st.code_ids[cand]
            okc = hc >= 0
            n_code, code_days = _group_lookup(hc[okc], hd[okc], cc)
            for c in SHARE_COLUMNS:
                a = st.attr[c]
                ah = a[h]
                oka = ah >= 0
                if oka.any():
                    cnt, _ = _group_lookup(ah[oka], np.zeros(int(oka.sum())), a[cand])
                    shares[c] = cnt / len(h)
            if self.V is not None:
                recent = pd.unique(h[np.argsort(ts, kind="stable")[::-1]])[: self.recent_items]
                recent = recent[self.has_vec[recent]]
                if len(recent):
                    sims = self.V[cand] @ self.V[recent].T
                    vis_max = sims.max(1)
                    p = self.V[recent].mean(0)
                    vis_prof = self.V[cand] @ (p / max(np.linalg.norm(p), 1e-12))
        age_diff = age - st.buyer_age[cand]
        price_ratio = st.item_price[cand] / up if up == up and up else np.full(m, np.nan)
        als = np.full(m, np.nan)
        if st.als_items is not None and user in st.als_user:
            als = st.als_items[cand] @ st.als_user[user]
        pair = np.zeros(m)
        if st.pairs is not None and len(h):
            pair = np.asarray(st.pairs[h].sum(0)).ravel()[cand]
        cols += [n_own, own_w, own_days, n_code, code_days, vis_max, vis_prof, age_diff, price_ratio, als, pair]
        cols += [shares[c] for c in SHARE_COLUMNS]
        cols += [self._taste_percentile(tv, cand) if tv is not None and self._taste_feature() else np.full(m, np.nan)]
        X = np.column_stack(cols).astype(np.float32) if m else np.zeros((0, len(FEATURES)), np.float32)
        return cand, X, src

    def _history(self, st: _State, user):
        if user in st.hist:
            return st.hist[user]
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype="datetime64[ns]"), None

    # ------------------------------------------------------------------ the same, for a block of customers at once
    def _features_block(self, st: _State, users, want_sources: bool = False, needed: frozenset | None = None):
        """Candidates and features of many customers at once: exactly the rows `_features` gives each of them (same
        candidates in the same order, same float32 values), built with array operations over the whole block
        (newest-first histories, other colours, bought-together sums as one sparse product, own/product/share
        features by sorted keys); only what must stay per customer to give bit-identical results (small argsorts
        whose tie order the per-customer path fixes, the new-arrival and visual dot products) runs in a loop.

        Returns (cands: list of index arrays, X: (sum of lengths, len(FEATURES)) float32, sources) where sources is
        (customer position, source number, item) of every source entry when `want_sources`, else None.
        needed: the feature names to compute (None: all); the others are NaN (`_needed_features`)."""
        import scipy.sparse as sp

        want = (lambda name: True) if needed is None else needed.__contains__

        users = list(users)
        B, n = len(users), len(st.pop_all)
        hists = [self._history(st, u) for u in users]
        lens = np.fromiter((len(x[0]) for x in hists), dtype=np.int64, count=B)
        ages = self._user_ages(st, users)
        t64 = np.datetime64(st.t, "ns")
        bh = np.repeat(np.arange(B), lens)
        hh = np.concatenate([x[0] for x in hists]).astype(np.int64) if lens.sum() else np.zeros(0, dtype=np.int64)
        th = (
            np.concatenate([x[1] for x in hists]).astype("datetime64[ns]")
            if lens.sum()
            else np.zeros(0, dtype="datetime64[ns]")
        )
        hd = (t64 - th) / DAY
        # newest-first unique history of every customer (argsort(ts, stable)[::-1], then first occurrences)
        pos = np.arange(len(hh))
        o = np.lexsort((-pos, -th.astype(np.int64), bh))
        keys = bh[o] * n + hh[o]
        _, first = np.unique(keys, return_index=True)
        first = np.sort(first)
        ru_b, ru_i = bh[o][first], hh[o][first]
        ru_start = np.searchsorted(ru_b, np.arange(B))
        ru_end = np.searchsorted(ru_b, np.arange(B), side="right")
        ru_rank = np.arange(len(ru_b)) - ru_start[ru_b]
        own_keys = ru_b * n + ru_i  # unique; sorted by (customer, item) below for look-ups
        own_sorted = np.sort(own_keys)
        # other colours of the products bought (product order = first purchase, newest first)
        same_lists = self._same_product_block(st, B, n, ru_b, ru_i, own_sorted)
        # bought together: sum of the pair rows of the recent items / of the whole history, one sparse product each
        pair_rows = pair_hist = None
        if st.pairs is not None and len(hh):
            pairs = st.pairs.tocsr()
            rec = ru_rank < self.recent_items
            if self.n_pairs:
                R = sp.csr_matrix((np.ones(int(rec.sum()), dtype=pairs.dtype), (ru_b[rec], ru_i[rec])), shape=(B, n))
                pair_rows = R @ pairs
                pair_rows.sort_indices()
            if want("pair_score"):  # the whole history's sums: the costliest product of the block
                Hc = sp.csr_matrix((np.ones(len(hh), dtype=pairs.dtype), (bh, hh)), shape=(B, n))
                Hc.sum_duplicates()
                pair_hist = (Hc @ pairs).tocsr()
                pair_hist.sort_indices()
        dep = st.attr.get("department_name")
        pool = st.arrival_pool[st.arrival_pool < n] if len(st.arrival_pool) and self.n_new_arrival else None
        Vpool = self.V[pool] if pool is not None and self.V is not None else None
        band_of = np.searchsorted(AGE_BANDS, ages, side="right") - 1
        cands, row_parts, src_parts, rank_parts, ucols, vis_m, vis_p, als_parts = [], [], [], [], [], [], [], []
        taste_parts = []
        src_num = {s: k for k, s in enumerate(SOURCES)}
        offset = 0
        for b in range(B):
            h, ts, pr = hists[b]
            ru = ru_i[ru_start[b] : ru_end[b]]
            src: dict[str, np.ndarray] = {}
            if len(h):
                src["repurchase"] = ru[: self.n_repurchase]
                src["same_product"] = same_lists[b]
                recent = ru[: self.recent_items]
                if pair_rows is not None:
                    a, z = pair_rows.indptr[b], pair_rows.indptr[b + 1]
                    idx, val = pair_rows.indices[a:z], pair_rows.data[a:z]
                    keep = val > 0
                    src["pairs"] = _top_sparse(idx[keep].astype(np.int64), val[keep], self.n_pairs)
                if self.V is not None and self.n_visual:
                    src["visual"] = self._visual_source(recent[:5])
            src["pop_decay"] = st.list_decay
            src["pop_week"] = st.list_week
            src["pop_month"] = st.list_month
            src["new_colour"] = st.list_new_colour
            if not np.isnan(ages[b]) and int(band_of[b]) in st.age_lists:
                src["age_pop"] = st.age_lists[int(band_of[b])]
            if dep is not None and len(h) and st.dept_lists:
                d = dep[h]
                d = d[d >= 0]
                if len(d):
                    vals, cnt = np.unique(d, return_counts=True)
                    lists = [st.dept_lists.get(int(v), np.zeros(0, dtype=np.int64)) for v in vals[np.argsort(-cnt)][:2]]
                    src["dept_pop"] = np.array(list(dict.fromkeys(np.concatenate(lists).tolist())), dtype=np.int64)
            prof = None
            tv = self._taste_all(st, h, ts, users[b])
            if pool is not None:
                if tv is not None:
                    s = tv[pool]
                else:
                    s = st.trend[pool].copy()
                    prof = self._profile_from(ru)
                    if prof is not None:
                        s = s + Vpool @ prof
                src["new_arrival"] = pool[np.argsort(-s, kind="stable")[: self.n_new_arrival]]
            if tv is not None and self.n_taste:
                src["taste"] = _top(tv, self.n_taste, np.isfinite(tv))
            names = list(src)
            parts = [np.asarray(src[s_], dtype=np.int64) for s_ in names]
            concat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            uq, fi, inv = np.unique(concat, return_index=True, return_inverse=True)
            oo = np.argsort(fi, kind="stable")
            cand = uq[oo]
            where = np.empty(len(uq), dtype=np.int64)
            where[oo] = np.arange(len(uq))
            cands.append(cand)
            m = len(cand)
            row_parts.append(offset + where[inv.ravel()])
            src_parts.append(np.repeat([src_num[s_] for s_ in names], [len(p) for p in parts]).astype(np.int64))
            rank_parts.append(
                np.concatenate([np.arange(len(p)) for p in parts]) if parts else np.zeros(0, dtype=np.int64)
            )
            # per-customer facts
            if not any(want(f) for f in USER_FEATURES + ["price_ratio"]):
                ucols.append((ages[b], np.nan, np.nan, np.nan, np.nan))
            elif len(h):
                up = np.nanmean(pr) if pr is not None and np.isfinite(pr).any() else np.nan
                ucols.append((ages[b], len(h), len(ru), float(((t64 - ts.astype("datetime64[ns]")) / DAY).min()), up))
            else:
                up = np.nan
                ucols.append((ages[b], 0, 0, np.nan, np.nan))
            vm, vp = np.zeros(m), np.zeros(m)
            if len(h) and self.V is not None:
                recent = ru[: self.recent_items]
                recent = recent[self.has_vec[recent]]
                if len(recent):
                    Vc = self.V[cand]
                    vm = (Vc @ self.V[recent].T).max(1)
                    if want("vis_profile"):
                        p = self.V[recent].mean(0)
                        vp = Vc @ (p / max(np.linalg.norm(p), 1e-12))
            vis_m.append(vm)
            vis_p.append(vp)
            taste_parts.append(
                self._taste_percentile(tv, cand) if tv is not None and self._taste_feature() else np.full(m, np.nan)
            )
            if want("als") and st.als_items is not None and users[b] in st.als_user:
                als_parts.append(st.als_items[cand] @ st.als_user[users[b]])
            else:
                als_parts.append(np.full(m, np.nan))
            offset += m
        M = offset
        counts = np.fromiter((len(c) for c in cands), dtype=np.int64, count=B)
        cand_all = np.concatenate(cands) if M else np.zeros(0, dtype=np.int64)
        cb = np.repeat(np.arange(B), counts)
        X = np.empty((M, len(FEATURES)), dtype=np.float64)
        col = 0
        ranks = np.full((M, len(SOURCES)), np.nan)
        if M:
            np.fmin.at(
                ranks, (np.concatenate(row_parts), np.concatenate(src_parts)), np.concatenate(rank_parts).astype(float)
            )
        X[:, : len(SOURCES)] = ranks
        col = len(SOURCES)
        for v in (
            st.pop_week,
            st.pop_month,
            st.pop_all,
            st.first_days,
            st.last_days,
            st.code_pop_week,
            st.code_pop_month,
            st.code_first,
            st.code_last,
            (~st.sold).astype(float),
            st.trend,
            st.buyer_age,
            st.item_price,
        ):
            X[:, col] = v[cand_all]
            col += 1
        uc = np.array(ucols, dtype=float).reshape(B, 5)
        X[:, col : col + 5] = uc[cb]
        col += 5
        # customer x item, by sorted keys over the whole block
        ck = cb * n + cand_all
        ck_order = np.argsort(ck, kind="stable")
        ck_sorted = ck[ck_order]
        n_own, own_w, own_days = np.zeros(M), np.zeros(M), np.full(M, np.nan)
        n_code, code_days = np.zeros(M), np.full(M, np.nan)
        shares = {c: np.zeros(M) for c in SHARE_COLUMNS}
        if len(hh) and M:
            p_ = np.clip(np.searchsorted(ck_sorted, bh * n + hh), 0, M - 1)
            ok = ck_sorted[p_] == bh * n + hh
            hi = ck_order[p_[ok]]
            np.add.at(n_own, hi, 1.0)
            np.add.at(own_w, hi, np.power(0.5, np.maximum(hd[ok], 0) / 30.0))
            od = np.full(M, np.inf)
            np.minimum.at(od, hi, hd[ok])
            own_days = np.where(np.isfinite(od), od, np.nan)
            n_users_h = lens[cb]
            hc, cc = st.code_ids[hh], st.code_ids[cand_all]
            NC = int(max(st.code_ids.max(initial=0), 0)) + 2
            okc = hc >= 0
            n_code, code_days = _group_lookup(bh[okc] * NC + hc[okc], hd[okc], np.where(cc >= 0, cb * NC + cc, -1))
            for c in SHARE_COLUMNS:
                if not want(f"share_{c}"):
                    continue
                a = st.attr[c]
                ah = a[hh]
                oka = ah >= 0
                if oka.any():
                    NA = int(a.max(initial=0)) + 2
                    cnt, _ = _group_lookup(
                        bh[oka] * NA + ah[oka],
                        np.zeros(int(oka.sum())),
                        np.where(a[cand_all] >= 0, cb * NA + a[cand_all], -1),
                    )
                    shares[c] = np.where(n_users_h > 0, cnt / np.maximum(n_users_h, 1), 0.0)
        age_rows = ages[cb]
        up_rows = uc[cb, 4]
        age_diff = age_rows - st.buyer_age[cand_all]
        with np.errstate(divide="ignore", invalid="ignore"):
            price_ratio = np.where((up_rows == up_rows) & (up_rows != 0), st.item_price[cand_all] / up_rows, np.nan)
        pair = np.zeros(M)
        if pair_hist is not None and M:
            pk = np.repeat(np.arange(B), np.diff(pair_hist.indptr)) * n + pair_hist.indices
            q = np.clip(np.searchsorted(pk, ck), 0, max(len(pk) - 1, 0))
            if len(pk):
                hit = (pk[q] == ck) & (lens[cb] > 0)
                pair[hit] = pair_hist.data[q[hit]]
        vis_max = np.concatenate(vis_m) if M else np.zeros(0)
        vis_prof = np.concatenate(vis_p) if M else np.zeros(0)
        als = np.concatenate(als_parts) if M else np.zeros(0)
        taste_pct = np.concatenate(taste_parts) if M else np.zeros(0)
        for v in (
            [n_own, own_w, own_days, n_code, code_days, vis_max, vis_prof, age_diff, price_ratio, als, pair]
            + [shares[c] for c in SHARE_COLUMNS]
            + [taste_pct]
        ):
            X[:, col] = v
            col += 1
        if needed is not None:
            X[:, [j for j, f in enumerate(FEATURES) if f not in needed]] = np.nan
        sources = None
        if want_sources:
            rows = np.concatenate(row_parts) if M else np.zeros(0, dtype=np.int64)
            sources = (cb[rows], np.concatenate(src_parts) if M else rows, cand_all[rows])
        return cands, X.astype(np.float32), sources

    def _user_ages(self, st: _State, users) -> np.ndarray:
        out = np.full(len(users), np.nan)
        if st.user_age is None:
            return out
        ua = st.user_age
        if ua.index.is_unique:
            ix = ua.index.get_indexer(pd.Index(list(users), dtype=object))
            vals = pd.to_numeric(ua, errors="coerce").to_numpy(dtype=np.float64)
            out[ix >= 0] = vals[ix[ix >= 0]]
            return out
        return np.array([self._user_age(st, u) for u in users], dtype=np.float64)

    def _same_product_block(self, st: _State, B: int, n: int, ru_b, ru_i, own_sorted) -> list:
        """Other colours of the products each customer bought: products in order of the newest purchase, all their
        items except those bought, ordered by product + item sales of the month (stable), the first n_same_product."""
        out = [np.zeros(0, dtype=np.int64)] * B
        c = st.code_ids[ru_i]
        ok = c >= 0
        if not ok.any():
            return out
        cb, cc = ru_b[ok], c[ok]
        NC = int(st.code_ids.max()) + 1
        _, fi = np.unique(cb * NC + cc, return_index=True)
        fi = np.sort(fi)
        cb, cc = cb[fi], cc[fi]
        crank = np.arange(len(cb)) - np.searchsorted(cb, cb)  # product's place among the customer's products
        start, end = st.code_start[cc], st.code_end[cc]
        cnt = end - start
        within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        items = st.code_order[np.repeat(start, cnt) + within]
        ib = np.repeat(cb, cnt)
        ir = np.repeat(crank, cnt)
        k = ib * n + items
        q = np.clip(np.searchsorted(own_sorted, k), 0, max(len(own_sorted) - 1, 0))
        keep = own_sorted[q] != k if len(own_sorted) else np.ones(len(k), dtype=bool)
        items, ib, ir, within = items[keep], ib[keep], ir[keep], within[keep]
        score = -(st.code_pop_month[items] + st.pop_month[items] + 1e-3 * st.pop_all[items])
        o = np.lexsort((within, ir, score, ib))
        items, ib = items[o], ib[o]
        s0 = np.searchsorted(ib, np.arange(B))
        s1 = np.searchsorted(ib, np.arange(B), side="right")
        for b in np.flatnonzero(s1 > s0):
            out[b] = items[s0[b] : min(s1[b], s0[b] + self.n_same_product)]
        return out

    def _visual_source(self, recent5: np.ndarray) -> np.ndarray:
        """Visual neighbours of the newest 5 items, best similarity per item, in the order pandas'
        Series.sort_values(ascending=False) gives (its tie order, reproduced: argsort of the reversed values)."""
        nb = [self._neighbours(int(j)) for j in recent5]
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
        return uq[order][: self.n_visual]

    def _profile_from(self, ru: np.ndarray):
        """`_profile` from the newest-first unique history."""
        if self.V is None or not len(ru):
            return None
        recent = ru[: self.recent_items]
        recent = recent[self.has_vec[recent]]
        if not len(recent):
            return None
        p = self.V[recent].mean(0)
        return p / max(np.linalg.norm(p), 1e-12)

    def recommend_block(self, users, k: int = 12, timings: dict | None = None, *, items=None) -> list[list[str]]:
        """Top-k item ids for a block of customers (the batch job's unit): the lists `recommend(u, k)` gives each
        (lists longer than the candidates continue in taste order; without a taste model they are filled from the
        month's and week's best sellers). items: rank only these item indices (`Recommender.recommend_block`).
        timings: if a dict, seconds in candidates (+features) and ranking are added to it."""
        import time

        if items is not None:
            return super().recommend_block(users, k, items=items)
        self._check_fitted()
        st = self.state
        users = list(users)
        t0 = time.perf_counter()
        with _one_thread():  # small dot products: BLAS threads cost more than they give (results are the same)
            cands, X, _ = self._features_block(st, users, needed=self._needed_features())
        t1 = time.perf_counter()
        s = self._predict(X) if len(X) else np.zeros(0)
        out = self._rank_block(cands, s, k, users)
        if timings is not None:
            timings["candidates"] = timings.get("candidates", 0.0) + t1 - t0
            timings["ranking"] = timings.get("ranking", 0.0) + time.perf_counter() - t1
        return out

    def batch_copy(self) -> Hybrid:
        """A shallow copy holding only what `recommend_block` reads (the fitted state, vectors, neighbours, ranker,
        item ids), without the training log, the user x item matrix and the log's histories (the state keeps its
        own): what the batch job ships to Ray workers (at 30M purchases the log alone is several GB)."""
        import copy

        import scipy.sparse as sp

        self._check_fitted()
        slim = copy.copy(self)
        d = RecData.__new__(RecData)
        d.item_ids, d.item_index, d.now = self.data.item_ids, self.data.item_index, self.data.now
        d.events = self.data.events.iloc[:0]
        d.user_ids, d.user_index, d._hist = [], {}, {}
        d._coded = {k: v[:0] for k, v in self.data.coded().items()}
        d.matrix = sp.csr_matrix((0, self.data.n_items), dtype=np.float32)
        d.image_features, d.metadata, d.predicted = None, pd.DataFrame(), None
        d.users = self.data.users  # customers' ages: the taste model's age bands
        d.colour_features = None
        slim.data = d
        if getattr(self, "taste_model", None) is not None:  # the taste model reads only its own arrays and `now`
            tm = copy.copy(self.taste_model)
            tm.data = d
            slim.taste_model = slim._taste_cur = tm
            slim.state = copy.copy(self.state)
            slim.state.taste = tm
        return slim

    def _rank_block(self, cands, s, k, users=None) -> list[list[str]]:
        st, ids = self.state, self.data.item_ids
        fill = [ids[j] for j in st.list_month] + [ids[j] for j in st.list_week]
        out, o = [], 0
        for b, cand in enumerate(cands):
            sc = s[o : o + len(cand)] + 1e-9 * st.pop_month[cand]
            o += len(cand)
            items = [ids[j] for j in self._with_arrivals(cand, sc, k)]
            if len(items) < k and users is not None and getattr(st, "taste", None) is not None:
                h, ts, _ = self._history(st, users[b])  # beyond the candidates: every other item by taste
                tv = self._taste_all(st, h, ts, users[b])
                seen = set(cand.tolist())
                order = np.lexsort((np.arange(len(tv)), -tv))
                more = [j for j in order[: k + len(cand)].tolist() if j not in seen and np.isfinite(tv[j])]
                items += [ids[j] for j in more[: k - len(items)]]
            if len(items) < k:
                seen = set(items)
                items += [i for i in fill if i not in seen and not seen.add(i)][: k - len(items)]
            if len(items) < k and users is not None:  # a full ranking: the items without a photo last, by sales
                seen = set(items)
                rest = np.lexsort((np.arange(len(st.pop_all)), -st.pop_all))
                items += [ids[j] for j in rest.tolist() if ids[j] not in seen][: k - len(items)]
            out.append(items)
        return out

    # ------------------------------------------------------------------ training
    def _needed_features(self, training: bool = False) -> frozenset | None:
        """The feature columns the ranker reads (None: all of them). The bucket ranker reads `BUCKET_FEATURES`: when
        training it (and when scoring with it once fitted) nothing else is computed. The fixed order it falls back
        to without enough training data, and the LightGBM rankers, read everything."""
        if self.ranker_kind != "buckets":
            return None
        if training or getattr(self, "buckets", None) is not None:
            return BUCKET_FEATURES
        return None

    def _needs_als(self) -> bool:
        """The ALS score is a feature of the LightGBM rankers only: the bucket ranker (default) and the fixed order
        never read it, so it is not fitted for them (7 ALS fits per `fit`: minutes at 1M customers)."""
        return bool(self.use_als) and self.ranker_kind in {"binary", "lambdarank"}

    def _candidate_key(self) -> tuple:
        return (
            self.label_days,
            self.n_repurchase,
            self.n_same_product,
            self.n_pairs,
            self.n_pop_decay,
            self.n_pop_week,
            self.n_pop_month,
            self.n_age_pop,
            self.n_dept_pop,
            self.n_new_colour,
            self.n_visual,
            self.n_new_arrival,
            self.arrival_pool,
            self.pair_days,
            self.recent_items,
            self._needs_als(),
            self._needed_features(training=True),
            self.max_train_users,
            self.seed,
            getattr(self, "use_taste", False),
            getattr(self, "n_taste", 0),
            getattr(self, "taste_feature", False),
        )

    def _window(self, data: RecData, t: pd.Timestamp, rng):
        """Training examples of one past window; cached per data object, so that rankers compared on the same
        windows (evaluation, tuning) pay for candidates and features once."""
        key = (id(data), str(t), self._candidate_key())
        if _WINDOW_CACHE.get("data") is not data:
            _WINDOW_CACHE.clear()
            _WINDOW_CACHE["data"] = data
        if key not in _WINDOW_CACHE:
            res = self._window_uncached(data, t, rng)
            n_rows = sum(len(y) for y in res[1])
            used = sum(sum(len(y) for y in v[1]) for k_, v in _WINDOW_CACHE.items() if k_ != "data")
            if used + n_rows > WINDOW_CACHE_ROWS:  # a big log: memory first, windows are rebuilt when asked again
                return res
            _WINDOW_CACHE[key] = res + (list(self._last_window_truth),)
        *res, truth = _WINDOW_CACHE[key]
        self._last_window_truth = truth
        return tuple(res)

    def _window_uncached(self, data: RecData, t: pd.Timestamp, rng):
        st = self._state(data, t)
        c = data.coded()  # the label window [t, t + label_days): a slice of the time-ordered coded log
        p0, p1 = data.before(t), data.before(t + pd.Timedelta(days=self.label_days))
        truth: dict = {}
        ids = data.user_ids
        for u, j in zip(c["user"][p0:p1].tolist(), c["item"][p0:p1].tolist()):
            truth.setdefault(ids[u], set()).add(j)
        users = sorted(truth)
        if len(users) > self.max_train_users:
            users = list(rng.choice(users, self.max_train_users, replace=False))
        Xs, ys, groups, n_true, src_hits = [], [], [], 0, {s: 0 for s in SOURCES}
        self._last_window_truth = []
        n = data.n_items
        for b0 in range(0, len(users), BLOCK):  # the same rows as `_features` per customer, built a block at a time
            part = users[b0 : b0 + BLOCK]
            with _one_thread():
                cands, Xb, (sb, ss, si) = self._features_block(
                    st, part, want_sources=True, needed=self._needed_features(training=True)
                )
            tk = np.sort(np.array([b * n + j for b, u in enumerate(part) for j in truth[u]], dtype=np.int64))
            hit = np.isin(sb * n + si, tk)
            for k, c in zip(*np.unique(ss[hit], return_counts=True)):
                src_hits[SOURCES[int(k)]] += int(c)
            o = 0
            for u, cand in zip(part, cands):
                tr = truth[u]
                n_true += len(tr)
                X = Xb[o : o + len(cand)]
                o += len(cand)
                if len(cand):
                    Xs.append(X)
                    ys.append(np.fromiter((c in tr for c in cand), dtype=np.int8, count=len(cand)))
                    groups.append(len(cand))
                    self._last_window_truth.append(len(tr))
        return Xs, ys, groups, n_true, src_hits

    def fit(self, data: RecData):
        """Learn the ranker on past windows (the newest for early stopping), then recompute everything at the fit date."""
        self._prepare(data)
        rng = np.random.default_rng(self.seed)
        now = pd.Timestamp(data.now).normalize() + pd.Timedelta(days=1)
        self.taste_model = self._taste_cur = None
        if getattr(self, "use_taste", False) and self.V is not None and self.has_vec.any():
            # The training windows see a taste model that stands before the oldest of them (it never learned from
            # their labels); serving and the taste metrics get one fitted on the whole log.
            oldest = now - pd.Timedelta(days=self.label_days + (self.n_windows - 1) * self.window_step_days)
            self._taste_cur = _fit_taste(data, oldest, self.seed)
        sets = []
        # The default ranker needs only each bucket's rows and purchases: counted window by window, so that the
        # training rows of all windows are never in memory at once (6 windows x 50k customers x ~200 candidates).
        stream = self.ranker_kind == "buckets" and self.bucket_combine != "logistic"
        counts: dict = {}
        stats = {"windows": [], "sources": {s: {"hits": 0} for s in SOURCES}}
        n_true_all, rows, pos = 0, 0, 0
        auto_sizes = getattr(self, "source_sizes", "fixed") == "auto"
        if auto_sizes:  # the training windows see every source at its maximum (a refit starts from them again)
            for s, mx in self.max_sizes.items():
                setattr(self, f"n_{s}", mx)
        rank_rows = {s: np.zeros(0) for s in SOURCES}
        rank_hits = {s: np.zeros(0) for s in SOURCES}
        from tqdm.auto import tqdm

        # minutes at 1M customers: a bar (shown on a terminal only) over the training windows and the fit-date state
        bar = tqdm(total=self.n_windows + 1, desc="fit (hybrid)", unit="window", disable=None, leave=False)
        ts_log = data.coded()["ts"]  # in time order: the first event is the oldest
        first = pd.Timestamp(ts_log[0]) if len(ts_log) else None
        times = []
        for w in range(self.n_windows):
            t = now - pd.Timedelta(days=self.label_days + w * self.window_step_days)
            if t <= first if first is not None else True:
                break
            Xs, ys, groups, n_true, src_hits = self._window(data, t, rng)
            bar.update(1)
            if not Xs:
                continue
            times.append(t)
            if stream:  # no copy of the window's rows: counted block by block
                for Xb, yb in _blocks_of(Xs, ys):
                    _count_buckets(Xb, yb, counts)
                    if auto_sizes:
                        _count_ranks(Xb, yb, rank_rows, rank_hits)
                y = np.concatenate(ys)
            else:
                X, y = np.vstack(Xs), np.concatenate(ys)
                if auto_sizes:
                    _count_ranks(X, y, rank_rows, rank_hits)
                sets.append((X, y, np.array(groups), np.array(self._last_window_truth)))
            del Xs
            n_true_all += n_true
            rows += len(y)
            pos += int(y.sum())
            for s in SOURCES:
                stats["sources"][s]["hits"] += src_hits[s]
            stats["windows"].append(
                {
                    "start": str(t.date()),
                    "users": len(groups),
                    "rows": int(len(y)),
                    "positives": int(y.sum()),
                    "purchases": n_true,
                }
            )
        for s in SOURCES:
            stats["sources"][s]["recall"] = stats["sources"][s]["hits"] / max(1, n_true_all)
        stats.update(rows=rows, positives=pos, candidate_recall=pos / max(1, n_true_all))
        self.train_stats = stats
        log.info(
            "hybrid ranker training: %d rows, %d positives, candidate recall %.3f", rows, pos, stats["candidate_recall"]
        )
        if auto_sizes and pos:
            chosen = choose_source_sizes(rank_rows, rank_hits, self.max_sizes)
            for s in SOURCES:
                setattr(self, f"n_{s}", chosen[s]["size"])
            stats["source_sizes"] = chosen
            log.info(
                "hybrid source sizes (hit rate >= %.4f, the top-12 best sellers'): %s",
                chosen["_threshold"],
                ", ".join(f"{s} {chosen[s]['size']}/{chosen[s]['max']}" for s in SOURCES),
            )
            # The ranker learns from the candidates serving will have: ranks past a source's size are blanked and
            # rows left with no source dropped (windows come from the cache; a big log recomputes them).
            sizes = np.array([chosen[s]["size"] for s in SOURCES], dtype=float)
            if stream:
                counts, rows, pos = {}, 0, 0
                for t in times:
                    Xs, ys, *_ = self._window(data, t, rng)
                    for Xb, yb in _blocks_of(Xs, ys):
                        Xm, ym, _ = _cut_to_sizes(Xb, yb, sizes)
                        _count_buckets(Xm, ym, counts)
                        rows += len(ym)
                        pos += int(ym.sum())
            else:
                sets = [_cut_set(st_, sizes) for st_ in sets]
                rows, pos = sum(len(x[1]) for x in sets), sum(int(x[1].sum()) for x in sets)
            stats.update(rows_after_sizes=rows, positives_after_sizes=pos)
        self.booster, self.best_iteration = None, 0
        self.buckets = None
        if pos >= 5 and self.ranker_kind == "buckets":
            if stream:
                self.buckets = _buckets_from_counts(counts, rows, pos, combine=self.bucket_combine)
            else:
                X = np.vstack([x[0] for x in sets])
                y = np.concatenate([x[1] for x in sets])
                self.buckets = _fit_buckets(X, y, combine=self.bucket_combine)
            stats["buckets"] = {
                f"{name}[{lo},{hi})": round(p, 5) for name, lo, hi, p in _describe_buckets(self.buckets)
            }
        if pos >= 5 and rows - pos >= 5 and self.ranker_kind in {"binary", "lambdarank"}:
            import lightgbm as lgb

            params = {
                "objective": self.ranker_kind,
                "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves,
                "min_child_samples": self.min_child_samples,
                "feature_fraction": self.feature_fraction,
                "bagging_fraction": 0.8,
                "bagging_freq": 1,
                "lambda_l2": self.lambda_l2,
                "seed": self.seed,
                "verbose": -1,
                "num_threads": 1,
                "deterministic": True,
                "force_row_wise": True,
            }
            if self.ranker_kind == "lambdarank":
                params.update(eval_at=[12], lambdarank_truncation_level=20)
            params["metric"] = "None"
            n_iter = self.n_estimators
            if len(sets) >= 3 and sets[0][1].sum() >= 5:
                # The newest window validates: the number of trees is chosen by the real MAP@12 of that window
                # (every purchase counts, also those no source found; LightGBM's map@k scores such users 1).
                b = lgb.train(params, self._dataset(lgb, sets[1:]), num_boost_round=self.n_estimators)
                Xv, yv, gv, tv = sets[0]
                curve = {}
                for it in sorted({10, 25, 50, 100, 150, 200, 300, 400, 600, self.n_estimators}):
                    if it <= self.n_estimators:
                        curve[it] = _map_at_k(b.predict(Xv, num_iteration=it), yv, gv, tv, 12)
                n_iter = max(curve, key=lambda it: (round(curve[it], 6), -it))
                stats["valid_map@12_by_trees"] = {int(k): round(v, 5) for k, v in curve.items()}
            self.booster = lgb.train(params, self._dataset(lgb, sets), num_boost_round=n_iter)
            self.best_iteration = n_iter
            stats["trees"] = n_iter
        if self._taste_cur is not None:
            self.taste_model = self._taste_cur = _fit_taste(data, None, self.seed)
        self.state = self._state(data, now)
        bar.update(1)
        bar.close()
        return self

    @staticmethod
    def _dataset(lgb, sets, reference=None):
        X = np.vstack([s[0] for s in sets])
        y = np.concatenate([s[1] for s in sets])
        g = np.concatenate([s[2] for s in sets])
        return lgb.Dataset(X, y, group=g, feature_name=FEATURES, reference=reference, free_raw_data=False)

    # ------------------------------------------------------------------ scoring
    def _predict(self, X: np.ndarray) -> np.ndarray:
        if getattr(self, "buckets", None) is not None:
            s = _score_buckets(self.buckets, X)
        elif self.booster is None:
            s = self._fallback(X)
        else:
            with _one_thread():
                s = self.booster.predict(X, num_threads=1)
        if getattr(self, "own_first", False):  # the customer's own purchases first, in repurchase's order
            ow = np.nan_to_num(X[:, FEATURES.index("own_w")])
            od = np.nan_to_num(X[:, FEATURES.index("own_days")], nan=np.inf)
            ow = np.where(od <= getattr(self, "own_first_days", np.inf), ow, 0.0)
            pm = np.nan_to_num(X[:, FEATURES.index("pop_month")])
            top = self.state.pop_month.max() if getattr(self, "state", None) is not None else pm.max()
            s = s + (ow > 0) * (10.0 + ow + 0.5 * pm / (top + 1e-9))
        return s

    @staticmethod
    def _fallback(X: np.ndarray) -> np.ndarray:
        """A fixed order (ranker='heuristic', or too little data to learn one): own purchases (recent first), other
        colours of recently bought products (of products that sell now first), then what sells now."""
        f = {n: X[:, i] for i, n in enumerate(FEATURES)}
        z = lambda a, v=0.0: np.nan_to_num(a, nan=v)
        own = (z(f["n_own"]) > 0) * (2.0 + np.exp(-z(f["own_days"], 1e3) / 60.0))
        code = (
            ((z(f["n_code"]) > 0) & (z(f["n_own"]) == 0))
            * (1.0 + np.exp(-z(f["code_days"], 1e3) / 60.0))
            * np.where(z(f["code_pop_month"]) > 0, 1.0, 0.6)
        )
        pop = z(f["pop_month"]) / (z(f["pop_month"]).max() + 1e-9)
        return own + code + pop + 0.2 * z(f["vis_max"]) + 0.1 * z(f["trend"])

    def scores(self, hist_idx, hist_ts, user=None):
        st = self.state
        out = np.full(self.data.n_items, -np.inf)
        if user is not None and user in st.hist and len(hist_idx) == len(st.hist[user][0]):
            h, ts, pr = st.hist[user]
        else:
            h, ts, pr = np.asarray(hist_idx, dtype=np.int64), np.asarray(hist_ts).astype("datetime64[ns]"), None
        tv = self._taste_all(st, h, ts, user)
        cand, X, _ = self._features(st, h, ts, pr, user, tv)
        if tv is not None:  # every other item by taste, below every candidate (full rankings, `--items`)
            out[: len(tv)] = BEYOND + tv
        if len(cand):
            out[cand] = self._predict(X) + 1e-9 * st.pop_month[cand]  # popularity breaks ties deterministically
        return out

    def score_items(self, users, items) -> np.ndarray:
        """Scores of `items` for a block of customers: the ranker's for their candidates, the taste model's (below
        every candidate) for the rest; one feature pass for the whole block."""
        self._check_fitted()
        st, users = self.state, list(users)
        items = np.asarray(items, dtype=np.int64)
        out = np.full((len(users), len(items)), -np.inf)
        pos = {int(j): c for c, j in enumerate(items)}
        for b0 in range(0, len(users), BLOCK):
            part = users[b0 : b0 + BLOCK]
            with _one_thread():
                cands, X, _ = self._features_block(st, part, needed=self._needed_features())
            s = self._predict(X) if len(X) else np.zeros(0)
            o = 0
            for r, (u, cand) in enumerate(zip(part, cands)):
                sc = s[o : o + len(cand)] + 1e-9 * st.pop_month[cand]
                o += len(cand)
                h, ts, _ = self._history(st, u)
                tm = getattr(st, "taste", None)
                if tm is not None:  # the taste of the asked items only (a "new in" list is a fraction of the catalog)
                    inside = items < len(tm.F)
                    hh, tt = np.asarray(h, dtype=np.int64), np.asarray(ts).astype("datetime64[ns]")
                    out[b0 + r, inside] = BEYOND + tm.taste(hh, tt, items[inside], user=u)
                cols = np.array([pos.get(int(j), -1) for j in cand], dtype=np.int64)
                ok = cols >= 0
                out[b0 + r, cols[ok]] = sc[ok]
        return out

    def recommend_many(self, users, k: int = 12) -> dict[str, list[str]]:
        """Batch top-k: features for a block of customers, one ranker call per block."""
        self._check_fitted()
        users, out = list(users), {}
        for b in range(0, len(users), BLOCK):
            part = users[b : b + BLOCK]
            out.update(zip(part, self.recommend_block(part, k)))
        return out

    def _recommend_many_per_customer(self, users, k: int = 12) -> dict[str, list[str]]:
        """The reference the block path is tested against: candidates and features one customer at a time."""
        self._check_fitted()
        st, out, block = self.state, {}, 256
        users = list(users)
        for b in range(0, len(users), block):
            parts = []
            for u in users[b : b + block]:
                h, ts, pr = self._history(st, u)
                cand, X, _ = self._features(st, h, ts, pr, u)
                parts.append((cand, X))
            allX = np.vstack([p[1] for p in parts]) if parts else np.zeros((0, len(FEATURES)), np.float32)
            s = self._predict(allX) if len(allX) else np.zeros(0)
            out.update(zip(users[b : b + block], self._rank_block([p[0] for p in parts], s, k, users[b : b + block])))
        return out

    def _with_arrivals(self, cand: np.ndarray, sc: np.ndarray, k: int) -> np.ndarray:
        """Top k by score, with places kept for the best-scored items nobody has bought yet (a new arrival has no
        sales to compete with): the last `arrival_slots` of each page of 12 (proportionally fewer for k < 12), at
        the same positions whatever k is, so a longer list (the server precomputes 50) starts with the 12-list."""
        order = np.lexsort((cand, -sc))  # ties broken by item position, whatever order the candidates came in
        ranked = [int(c) for c in cand[order]]
        r = min(getattr(self, "arrival_slots", 0), k)
        if not r:
            return np.array(ranked[:k], dtype=np.int64)
        page = min(k, 12)
        n_slots = r if k >= 12 else max(1, round(r * page / 12))
        start = page - min(n_slots, page)
        head = ranked[:start]
        sold = self.state.sold
        taken = set(head)
        fresh = [c for c in ranked if c not in taken and (c >= len(sold) or not sold[c])][: page - start]
        taken |= set(fresh)
        top = head + fresh + [c for c in ranked if c not in taken]
        return np.array(top[:k], dtype=np.int64)

    def _top(self, s, k, hist_idx, hist_ts, exclude=None, explain=True):
        from fashionrec.recommend.base import Rec

        s = s.astype(np.float64, copy=True)
        if exclude:
            s[list(exclude)] = -np.inf
        cand = np.flatnonzero(np.isfinite(s))
        top = self._with_arrivals(cand, s[cand], k) if len(cand) else np.zeros(0, dtype=np.int64)
        return [
            Rec(self.data.item_ids[j], float(s[j]), self.because(j, hist_idx, hist_ts) if explain else []) for j in top
        ]

    def candidate_sources(self, users) -> dict[str, dict[str, set]]:
        """user -> source -> candidate item ids (for per-source recall tables)."""
        st, out = self.state, {}
        for u in users:
            h, ts, pr = self._history(st, u)
            src = self._candidates(st, h, ts, u)
            out[u] = {s: {self.data.item_ids[j] for j in v} for s, v in src.items()}
        return out

    # ------------------------------------------------------------------ the rest of the contract
    def similar_items(self, item: str, k: int = 12):
        """ "More like this": nearest photos (the whole catalog, sold or not)."""
        from fashionrec.errors import FashionrecError
        from fashionrec.recommend.base import Rec

        self._check_fitted()
        if item not in self.data.item_index:
            raise FashionrecError(f"unknown item '{item}'")
        j = self.data.item_index[item]
        if self.V is None or not self.has_vec[j]:
            return super().similar_items(item, k)
        s = np.where(self.has_vec, self.V @ self.V[j], -np.inf)
        s[j] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        return [Rec(self.data.item_ids[t], float(s[t]), [item]) for t in top if np.isfinite(s[t])]

    def because(self, item, hist_idx, hist_ts):
        if not len(hist_idx):
            return []
        if item in set(hist_idx.tolist()):
            return [self.data.item_ids[item]]
        st = self.state
        same = [j for j in hist_idx[::-1] if st.code_ids[j] >= 0 and st.code_ids[j] == st.code_ids[item]]
        if same:
            return [self.data.item_ids[same[0]]]
        if self.V is not None and self.has_vec[item]:
            h = hist_idx[self.has_vec[hist_idx]]
            if len(h):
                return [self.data.item_ids[h[np.argmax(self.V[h] @ self.V[item])]]]
        if st.pairs is not None:
            row = np.asarray(st.pairs[hist_idx][:, item].todense()).ravel()
            if row.max() > 0:
                return [self.data.item_ids[hist_idx[np.argmax(row)]]]
        return []

    def add_items(self, ids, vectors=None, metadata=None):
        n_before = self.data.n_items
        super().add_items(ids)
        n_new = self.data.n_items - n_before
        if n_new <= 0:
            return
        new_ids = list(self.data.item_ids[-n_new:])
        codes = product_codes(new_ids, metadata)
        self.codes = np.concatenate([self.codes, codes])
        dim = self.V.shape[1] if self.V is not None else (np.asarray(vectors).shape[1] if vectors is not None else 0)
        extra = np.zeros((n_new, dim), dtype=np.float32)
        has = np.zeros(n_new, dtype=bool)
        if vectors is not None:
            v = np.asarray(vectors, dtype=np.float32)[-n_new:]
            extra[-len(v) :] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            has[-len(v) :] = np.linalg.norm(v, axis=1) > 0
        if dim:
            self.V = extra if self.V is None else np.vstack([self.V, extra])
        self.has_vec = np.concatenate([self.has_vec, has])
        attrs = {}
        for c in SHARE_COLUMNS:  # the arrival's own attributes, coded like the fitted ones where known
            a = np.full(n_new, -1, dtype=np.int64)
            attrs[c] = a
        tm = getattr(self, "taste_model", None)
        if tm is not None:  # the arrival's taste vector, from its photo (state.taste is this same model)
            tm.add_items(new_ids, vectors=extra if dim and vectors is not None else None)
        self.state.add_items(n_new, codes, attrs, self.V, self.has_vec)
        self._nb_cache = {}
