"""Hybrid: a ranker learned on purchases over candidates from every signal, image features included.

Two stages, as in most production recommenders (and the H&M Kaggle winners):
1. candidates per user: own past purchases, other colours of the same product, visually similar items
   (reaching items nobody has bought), item-kNN neighbours, and what is popular now;
2. a gradient-boosted ranker scores each (user, candidate) from features: popularity, own recency and count,
   visual similarity, item-kNN score, same-product flag, metadata similarity, never-bought flag, history length.
The ranker is trained on the last `val_days` of the training log (features from before, labels from within),
then every component is refitted on the whole log for serving.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from fashionrec.recommend.base import DAY, RecData, Recommender, recency_weights, register_recommender

log = logging.getLogger(__name__)

FEATURES = ["pop", "pop_rank", "own_w", "own_n", "days_since_own", "visual", "visual_rank", "knn", "same_product",
            "days_since_product", "content", "never_bought", "hist_len", "days_since_last", "code_pop", "trend"]


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


def _one_thread():
    """threadpoolctl limit to one thread; the controller (a scan of loaded libraries) is built once."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


def _squash(X: np.ndarray) -> np.ndarray:
    """log1p on count/day features so a linear ranker sees them on a sane scale."""
    return np.sign(X) * np.log1p(np.abs(X))


class _Components:
    def __init__(self, data: RecData, use_content: bool):
        from fashionrec.recommend.baselines import ItemKNN, Popularity
        from fashionrec.recommend.content import MetadataContent, Visual

        self.data = data
        self.pop = Popularity(half_life_days=7, window_days=28).fit(data)
        self.pop_s = self.pop.pop / (self.pop.pop.max() + 1e-12)
        self.pop_rank = np.empty(data.n_items)
        self.pop_rank[np.argsort(-self.pop.pop, kind="stable")] = np.arange(data.n_items)
        self.visual = Visual(history_half_life_days=60, max_history=20, profile_weight=0.0).fit(data) if data.image_features is not None else None
        self.knn = ItemKNN(K=50).fit(data) if data.matrix.nnz else None
        self.content = None
        if use_content and data.metadata is not None and not data.metadata.empty:
            try:
                self.content = MetadataContent(profile_weight=0.0).fit(data)
            except Exception as e:  # metadata too thin: the ranker simply has no content feature
                log.warning("hybrid: no content feature (%s)", e)
        self.set_codes(product_codes(data.item_ids, data.metadata))
        self.bought = np.asarray(data.matrix.sum(0)).ravel() > 0
        self.top_pop = np.argsort(-self.pop.pop)[:64]
        self._trend()

    def _trend(self) -> None:
        """Item-level context known without the user: how popular the item's product (any colour) is, and how much
        it looks like what sells now (cosine to the 50 most popular items). Both reach never-bought items."""
        pop = self.pop.pop
        code_pop = np.zeros(self.n_codes)
        has = self.code_ids >= 0
        np.add.at(code_pop, self.code_ids[has], pop[has])
        self.code_pop = np.where(has, code_pop[np.maximum(self.code_ids, 0)], 0.0) / (pop.max() + 1e-12)
        self.top_code_pop = np.argsort(-(self.code_pop * (~self.bought)))[:64]  # new colours of hit products
        self.trend = np.zeros(self.data.n_items)
        if self.visual is not None:
            top = [j for j in np.argsort(-pop)[:50] if self.visual.has[j] and pop[j] > 0]
            if top:
                self.trend = np.where(self.visual.has, (self.visual.V @ self.visual.V[top].T).max(1), 0.0)

    def set_codes(self, codes: np.ndarray) -> None:
        """Product codes as small integers (-1 = none) for vectorised same-product lookups."""
        self.codes = codes
        uniq = {c: j for j, c in enumerate(sorted({c for c in codes if c}))}
        self.code_ids = np.array([uniq.get(c, -1) for c in codes], dtype=np.int64)
        self.n_codes = max(1, len(uniq))


@register_recommender("hybrid")
class Hybrid(Recommender):
    """Learned blend of repurchase, same-product, visual, item-kNN, content and popularity signals."""

    def __init__(self, val_days: int = 28, n_windows: int = 4, n_visual: int = 60, n_knn: int = 30, n_pop: int = 30,
                 use_content: bool = True, ranker: str = "gbm", max_train_users: int = 20000, seed: int = 0):
        super().__init__()
        if val_days < 1 or n_windows < 1:
            raise ValueError("val_days and n_windows must be positive integers")
        if ranker not in {"gbm", "logistic"}:
            raise ValueError("ranker must be 'gbm' or 'logistic'")
        self.val_days, self.n_windows, self.n_visual, self.n_knn, self.n_pop = val_days, n_windows, n_visual, n_knn, n_pop
        self.use_content, self.ranker_kind, self.max_train_users, self.seed = use_content, ranker, max_train_users, seed

    # ---------------------------------------------------------------- features
    def _candidates_and_features(self, c: _Components, hist_idx, hist_ts) -> tuple[np.ndarray, np.ndarray]:
        n = c.data.n_items
        now = np.datetime64(pd.Timestamp(c.data.now), "ns")
        cand = set(c.top_pop[: self.n_pop].tolist()) | set(c.top_code_pop[: self.n_pop].tolist())
        own_w = np.zeros(n)
        own_n = np.zeros(n)
        last_own = np.full(n, 9999.0)
        same_prod = np.zeros(n)
        last_prod = np.full(n, 9999.0)
        vis = np.zeros(n)
        vis_rank = np.full(n, 9999.0)
        knn = np.zeros(n)
        content = np.zeros(n)
        days_since_last = 9999.0
        if len(hist_idx):
            age = (now - hist_ts.astype("datetime64[ns]")) / DAY
            days_since_last = float(age.min())
            np.add.at(own_w, hist_idx, recency_weights(hist_ts, c.data.now, 30.0))
            np.add.at(own_n, hist_idx, 1.0)
            for j, a in zip(hist_idx, age):
                last_own[j] = min(last_own[j], a)
            cand.update(hist_idx.tolist())
            hc = c.code_ids[hist_idx]
            if (hc >= 0).any():
                # days since the user last bought any colour of each product code
                code_age = np.full(c.n_codes, np.inf)
                np.minimum.at(code_age, hc[hc >= 0], age[hc >= 0])
                ca = np.where(c.code_ids >= 0, code_age[np.maximum(c.code_ids, 0)], np.inf)
                m = np.isfinite(ca)
                same_prod[m] = 1.0
                last_prod[m] = ca[m]
                cand.update(np.flatnonzero(m).tolist())
            if c.visual is not None:
                s, _ = c.visual.similarity_to_history(hist_idx, hist_ts)
                s = np.where(c.visual.has, s, 0.0)
                nv = min(self.n_visual, n - 1)
                top = np.argpartition(-s, nv)[:nv]
                vis = s
                vis_rank[top[np.argsort(-s[top])]] = np.arange(len(top))
                cand.update(top.tolist())
            if c.knn is not None:
                ks = c.knn.scores(hist_idx, hist_ts)
                ks = np.where(np.isfinite(ks), ks, 0.0)
                knn = ks
                nk = min(self.n_knn, n - 1)
                top = np.argpartition(-ks, nk)[:nk]
                cand.update(top[ks[top] > 0].tolist())
            if c.content is not None:
                content = np.where(c.content.has, c.content.similarity_to_history(hist_idx, hist_ts)[0], 0.0)
        cand = np.fromiter(cand, dtype=np.int64)
        X = np.column_stack([c.pop_s[cand], c.pop_rank[cand], own_w[cand], own_n[cand], last_own[cand], vis[cand],
                             vis_rank[cand], knn[cand], same_prod[cand], last_prod[cand], content[cand],
                             (~c.bought[cand]).astype(float), np.full(len(cand), np.log1p(len(hist_idx))),
                             np.full(len(cand), days_since_last), c.code_pop[cand], c.trend[cand]])
        return cand, X

    # ---------------------------------------------------------------- training
    def _window_examples(self, data: RecData, t_val: pd.Timestamp, budget: int, rng) -> tuple[list, list, int]:
        """Features from events before t_val, labels = purchases in [t_val, t_val + val_days)."""
        past = data.events[data.events["timestamp"] < t_val]
        window = data.events[(data.events["timestamp"] >= t_val) & (data.events["timestamp"] < t_val + pd.Timedelta(days=self.val_days))]
        if past.empty or window.empty:
            return [], [], 0
        early = RecData(past, data.item_ids, image_features=data.image_features, metadata=data.metadata, now=t_val)
        comp = _Components(early, self.use_content)
        truth = window.groupby("user")["item"].apply(lambda s: {data.item_index[i] for i in s})
        users = list(truth.index)
        if len(users) > budget:
            users = list(rng.choice(users, budget, replace=False))
        Xs, ys, n_true = [], [], 0
        for u in users:
            h, t = early.history(u)
            cand, X = self._candidates_and_features(comp, h, t)
            Xs.append(X)
            ys.append(np.isin(cand, list(truth[u])).astype(int))
            n_true += len(truth[u])
        return Xs, ys, n_true

    def fit(self, data: RecData):
        """Learn the blend on several past windows (more positives than one window gives), then refit on all."""
        rng = np.random.default_rng(self.seed)
        Xs, ys, n_true = [], [], 0
        for w in range(self.n_windows):
            t_val = pd.Timestamp(data.now).normalize() - pd.Timedelta(days=self.val_days * (w + 1) - 1)
            x, y, nt = self._window_examples(data, t_val, self.max_train_users, rng)
            Xs += x
            ys += y
            n_true += nt
        X = np.vstack(Xs) if Xs else np.zeros((0, len(FEATURES)))
        y = np.concatenate(ys) if ys else np.zeros(0)
        self.train_stats = {"windows": self.n_windows, "user_windows": len(Xs), "rows": int(len(y)),
                            "positives": int(y.sum()), "candidate_recall": float(y.sum() / max(1, n_true))}
        log.info("hybrid ranker training: %s", self.train_stats)
        self.ranker = None  # too little data to learn a blend: a fixed, sensible order (_fallback)
        if y.sum() >= 5 and (1 - y).sum() >= 5:
            if self.ranker_kind == "gbm":
                from sklearn.ensemble import HistGradientBoostingClassifier

                self.ranker = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05, max_leaf_nodes=8,
                                                             min_samples_leaf=40, l2_regularization=1.0,
                                                             random_state=self.seed).fit(X, y)
            else:
                from sklearn.linear_model import LogisticRegression
                from sklearn.pipeline import make_pipeline
                from sklearn.preprocessing import StandardScaler

                self.ranker = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(_squash(X), y)
        self.data = data
        self.comp = _Components(data, self.use_content)
        return self

    def _fallback(self, X: np.ndarray) -> np.ndarray:
        f = {n: X[:, i] for i, n in enumerate(FEATURES)}
        return 2.0 * (f["own_w"] > 0) + f["own_w"] + 0.5 * f["same_product"] + f["visual"] * 0.5 + f["pop"]

    def scores(self, hist_idx, hist_ts, user=None):
        out = np.full(self.data.n_items, -np.inf)
        cand, X = self._candidates_and_features(self.comp, hist_idx, hist_ts)
        if self.ranker is not None:
            # A few hundred rows per query: OpenMP start-up per tree costs 20x the work, so predict on one thread.
            with _one_thread():
                s = self.ranker.predict_proba(X if self.ranker_kind == "gbm" else _squash(X))[:, 1]
        else:
            s = self._fallback(X)
        out[cand] = s + 1e-6 * X[:, 0]  # popularity breaks ties deterministically
        return out

    def similar_items(self, item: str, k: int = 12):
        """"More like this" is visual similarity (item-kNN where there are no images)."""
        c = self.comp
        if c.visual is not None:
            return c.visual.similar_items(item, k)
        if c.knn is not None:
            return c.knn.similar_items(item, k)
        return super().similar_items(item, k)

    def because(self, item, hist_idx, hist_ts):
        c = self.comp
        if not len(hist_idx):
            return []
        if item in set(hist_idx.tolist()):
            return [self.data.item_ids[item]]
        same = [j for j in hist_idx[::-1] if c.codes[j] and c.codes[j] == c.codes[item]]
        if same:
            return [self.data.item_ids[same[0]]]
        if c.visual is not None and c.visual.has[item]:
            return c.visual.because(item, hist_idx, hist_ts)
        if c.knn is not None:
            return c.knn.because(item, hist_idx, hist_ts)
        return []

    def add_items(self, ids, vectors=None, metadata=None):
        super().add_items(ids)
        c = self.comp
        n_new = self.data.n_items - len(c.pop_s)
        if n_new <= 0:
            return
        c.pop_s = np.concatenate([c.pop_s, np.zeros(n_new)])
        c.pop_rank = np.concatenate([c.pop_rank, np.full(n_new, float(len(c.pop_rank)))])
        c.bought = np.concatenate([c.bought, np.zeros(n_new, dtype=bool)])
        c.set_codes(np.concatenate([c.codes, product_codes(list(self.data.item_ids[-n_new:]), metadata)]))
        c.code_pop = np.concatenate([c.code_pop, np.zeros(n_new)])
        c.trend = np.concatenate([c.trend, np.zeros(n_new)])
        c.pop.add_items(ids)
        if c.visual is not None:
            c.visual.add_items(ids, vectors)
        if c.content is not None:
            c.content.add_items(ids, metadata=metadata)
        if c.knn is not None:
            c.knn.add_items(ids)
