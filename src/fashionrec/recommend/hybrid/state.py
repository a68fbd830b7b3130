"""`_State`: every statistic the sources and features read, computed from the events before a day boundary."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashionrec.recommend.attributes import UNKNOWN
from fashionrec.recommend.base import DAY, RecData
from fashionrec.recommend.hybrid.pairs import co_purchases
from fashionrec.recommend.hybrid.popularity import age_lists, dept_lists
from fashionrec.recommend.hybrid.same_product import new_colour_list
from fashionrec.recommend.hybrid.schema import SHARE_COLUMNS, _top
from fashionrec.recommend.hybrid.visual import sells_now


class _State:
    """Everything the features need, computed from the events before `t` (a day boundary)."""

    def __init__(self, data: RecData, t: pd.Timestamp, cfg, vectors: np.ndarray | None, has_vec, codes: np.ndarray):
        self.t = pd.Timestamp(t)
        # the events before t: a prefix of the integer-coded log (no copy of the log, no string ids mapped again)
        lg, p = data.coded(), data.before(self.t)
        n = data.n_items
        idx, ucode, ev_ts = lg["item"][:p], lg["user"][:p], lg["ts"][:p]
        age = (np.datetime64(self.t, "ns") - ev_ts) / DAY
        w = lg["weight"][:p]
        self._item_stats(idx, age, w, n)
        self._product_stats(codes)
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
        ev_age = self._customer_stats(data, idx, ucode, lg["price"][:p], n)
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
        self.list_new_colour = new_colour_list(self, cfg.n_new_colour)
        self.age_lists = age_lists(idx, w, age, ev_age, n, cfg.n_age_pop)
        self.dept_lists = dept_lists(self, cfg.n_dept_pop)
        # bought together: items bought by the same customer within `pair_days` of each other (sparse counts)
        self.pairs = None
        if len(idx) and cfg.n_pairs:
            self.pairs = co_purchases(ucode, idx, ev_ts, n, cfg.pair_days)
        # what sells now, in pictures: popularity-weighted mean of the month's best sellers' image vectors
        self.trend = np.zeros(n)
        self.arrival_pool = np.zeros(0, dtype=np.int64)
        self.V = vectors
        self.has_vec = has_vec
        if vectors is not None:
            prof = sells_now(self.pop_month, vectors, has_vec)
            if prof is not None:
                self.trend = np.where(has_vec, vectors @ prof, 0.0)
            self.arrival_pool = _top(self.trend + 1.0, cfg.arrival_pool, ~self.sold & has_vec)
        # ALS factors (collaborative signal as a feature)
        self.als_user, self.als_items = {}, None
        if cfg._needs_als() and len(idx) >= 50:
            self._fit_als(ucode, data.user_ids, idx, n, cfg.seed)

    def _item_stats(self, idx, age, w, n) -> None:
        """Sales of the last week / month / all time, days since the first and the last sale."""
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

    def _product_stats(self, codes: np.ndarray) -> None:
        """The same at product level (all colours of a product_code), and each product's items."""
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

    def _customer_stats(self, data: RecData, idx, ucode, price, n) -> np.ndarray:
        """Customers' ages; buyers' mean age and price per item. Returns the age of the buyer of every event."""
        ages = None
        if data.users is not None and "age" in data.users.columns:
            ages = data.users["age"]
        self.user_age = ages
        ev_age = np.full(len(idx), np.nan)
        if ages is not None:  # age per event through the user codes (ages.reindex = Series.map's look-up)
            uniq = ages[~ages.index.duplicated(keep="first")]
            ev_age = uniq.reindex(pd.Index(data.user_ids, dtype=object)).to_numpy(dtype=np.float64)[ucode]
        ok = ~np.isnan(ev_age)
        s_age = np.bincount(idx[ok], ev_age[ok], minlength=n)
        c_age = np.bincount(idx[ok], minlength=n)
        self.buyer_age = np.where(c_age > 0, s_age / np.maximum(c_age, 1), np.nan)
        okp = ~np.isnan(price)
        s_p = np.bincount(idx[okp], price[okp], minlength=n)
        c_p = np.bincount(idx[okp], minlength=n)
        self.item_price = np.where(c_p > 0, s_p / np.maximum(c_p, 1), np.nan)
        return ev_age

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
            prof = sells_now(self.pop_month, vectors, has_vec)
            if prof is not None:
                new_trend = np.where(has_vec[-n_new:], vectors[-n_new:] @ prof, 0.0)
            self.trend = np.concatenate([self.trend, new_trend])
            new_idx = np.arange(len(self.trend) - n_new, len(self.trend))[has_vec[-n_new:]]
            self.arrival_pool = np.concatenate([new_idx, self.arrival_pool])
        else:
            self.trend = np.concatenate([self.trend, z])
