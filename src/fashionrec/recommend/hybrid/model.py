"""`Hybrid`: the recommender that puts the sources, the feature path, the ranker and the list policy together."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashionrec.data.products import product_code_of
from fashionrec.recommend.base import RecData, Recommender, register_recommender
from fashionrec.recommend.hybrid.arrivals import fit_taste, taste_all
from fashionrec.recommend.hybrid.block import features_block, history, sources_of
from fashionrec.recommend.hybrid.policy import rank_block, with_arrivals
from fashionrec.recommend.hybrid.rankers import predict
from fashionrec.recommend.hybrid.schema import (
    BEYOND,
    BLOCK,
    BUCKET_FEATURES,
    RANKERS,
    SHARE_COLUMNS,
    SOURCES,
    _one_thread,
)
from fashionrec.recommend.hybrid.state import _State
from fashionrec.recommend.hybrid.training import fit_ranker, window_times
from fashionrec.recommend.hybrid.visual import all_neighbours, neighbours, visual_source

# Each source's size (`n_<source>` of the constructor) and the size of the never-sold pool.
SIZE_PARAMS = tuple(f"n_{s}" for s in SOURCES if s != "taste") + ("arrival_pool",)


def product_codes(item_ids) -> np.ndarray:
    """Product (style) code per item (`fashionrec.data.products.product_code_of`)."""
    return np.array([product_code_of(i) for i in item_ids], dtype=object)


@register_recommender("hybrid")
class Hybrid(Recommender):
    """Candidate sources + a ranker learned on past windows of the purchase log (see the package doc)."""

    needs_images = True

    def __init__(
        self,
        label_days: int = 28,
        n_windows: int | None = 6,
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
        params = {k: v for k, v in locals().items() if k not in {"self", "__class__", "val_days", "ranker", "taste"}}
        self._check(params, ranker)
        for k, v in params.items():
            setattr(self, k, v)
        self.ranker_kind = ranker
        self._nb_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # The learned taste model (`recommend.taste`): a candidate source (the customer's best-liked photos in the
        # whole catalog), the order of the never-sold pool before it is cut, a feature of every candidate, and the
        # score of every item beyond the candidates (full rankings, `--items`, the taste metrics).
        self.use_taste, self.taste_feature = bool(taste), bool(taste_feature)
        # The n_* above are each source's size; with source_sizes="auto" they are maxima: the training windows use
        # them, and `fit` cuts each source to the size its hit rates earn (`choose_source_sizes`), for the ranker and
        # for serving. Not the default: on the leak-free protocol it scored MAP@12 0.0090 against 0.0097 (README).
        self.max_sizes = {s: getattr(self, f"n_{s}", 0) for s in SOURCES}

    @staticmethod
    def _check(p: dict, ranker: str) -> None:
        if p["label_days"] < 1 or (p["n_windows"] is not None and p["n_windows"] < 1) or p["window_step_days"] < 1:
            raise ValueError("label_days, n_windows (or None) and window_step_days must be positive integers")
        if ranker not in RANKERS:
            raise ValueError(f"ranker must be one of {sorted(RANKERS)}")
        for name in SIZE_PARAMS:
            if p[name] < 0:
                raise ValueError(f"{name} must be >= 0")
        if p["arrival_slots"] < 0:
            raise ValueError("arrival_slots must be >= 0")
        if p["bucket_combine"] not in {"logistic", "max", "noisy_or"}:
            raise ValueError("bucket_combine must be 'logistic', 'max' or 'noisy_or'")
        if p["source_sizes"] not in {"auto", "fixed"}:
            raise ValueError("source_sizes must be 'auto' (chosen on the training windows) or 'fixed'")
        if p["n_taste"] < 0:
            raise ValueError("n_taste must be >= 0")

    # ------------------------------------------------------------------ shared item facts
    def _prepare(self, data: RecData):
        self.data = data
        self.codes = product_codes(data.item_ids)
        self.V, self.has_vec = (None, np.zeros(data.n_items, dtype=bool))
        if data.image_features is not None:
            self.V, self.has_vec = data.image_features.aligned(data.item_ids)
        self._nb_cache = {}
        all_neighbours(self)

    def _state(self, data: RecData, t) -> _State:
        st = _State(data, t, self, self.V, self.has_vec, self.codes)
        st._codes = self.codes
        st.taste = getattr(self, "_taste_cur", None)
        if st.taste is not None:  # the whole never-sold pool: personalised by taste before it is cut
            n = len(st.sold)
            st.arrival_pool = np.flatnonzero(~st.sold & self.has_vec[:n] & st.taste.has[:n])
        return st

    def _taste_feature(self) -> bool:
        return getattr(self, "taste_feature", False)

    def _neighbours(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Visual neighbours of item j (time-independent, cached)."""
        return neighbours(self, j)

    def _visual_source(self, recent5: np.ndarray) -> np.ndarray:
        return visual_source(self, recent5)

    @staticmethod
    def _history(st: _State, user):
        return history(st, user)

    def _features_block(self, st: _State, users, want_sources: bool = False, needed=None, hists=None):
        """Candidates and feature rows of a block of customers (`block.features_block`)."""
        return features_block(self, st, users, want_sources=want_sources, needed=needed, hists=hists)

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

    # ------------------------------------------------------------------ training
    def fit(self, data: RecData):
        """Learn the ranker on past windows, then recompute everything at the fit date."""
        from tqdm.auto import tqdm

        self._prepare(data)
        rng = np.random.default_rng(self.seed)
        now = pd.Timestamp(data.now).normalize() + pd.Timedelta(days=1)
        starts = window_times(self, data, now)
        self.taste_model = self._taste_cur = None
        if getattr(self, "use_taste", False) and self.V is not None and self.has_vec.any():
            # The training windows see a taste model that stands before the oldest of them (it never learned from
            # their labels); serving and the taste metrics get one fitted on the whole log.
            oldest = starts[-1] if starts else now - pd.Timedelta(days=self.label_days)
            self._taste_cur = fit_taste(data, oldest, self.seed)
        # minutes at 1M customers: a bar (shown on a terminal only) over the training windows and the fit-date state
        bar = tqdm(total=len(starts) + 1, desc="fit (hybrid)", unit="window", disable=None, leave=False)
        fit_ranker(self, data, starts, rng, bar)
        if self._taste_cur is not None:
            self.taste_model = self._taste_cur = fit_taste(data, None, self.seed)
        self.state = self._state(data, now)
        bar.update(1)
        bar.close()
        return self

    # ------------------------------------------------------------------ scoring
    def _predict(self, X: np.ndarray) -> np.ndarray:
        return predict(self, X)

    def _block_scores(self, users, hists=None):
        """(candidates per customer, the ranker's score of every row) for a block of customers."""
        with _one_thread():  # small dot products: BLAS threads cost more than they give (results are the same)
            cands, X, _ = features_block(self, self.state, users, needed=self._needed_features(), hists=hists)
        return cands, (self._predict(X) if len(X) else np.zeros(0))

    def scores(self, hist_idx, hist_ts, user=None):
        """Every item's score for one customer: the ranker's for the candidates (a block of one), the taste model's
        below every candidate for the rest (full rankings, `--items`)."""
        st = self.state
        out = np.full(self.data.n_items, -np.inf)
        if user is not None and user in st.hist and len(hist_idx) == len(st.hist[user][0]):
            h, ts, pr = st.hist[user]
        else:
            h, ts, pr = np.asarray(hist_idx, dtype=np.int64), np.asarray(hist_ts).astype("datetime64[ns]"), None
        tv = taste_all(st, h, ts, user)
        (cand,), s = self._block_scores([user], hists=[(h, ts, pr)])
        if tv is not None:
            out[: len(tv)] = BEYOND + tv
        if len(cand):
            out[cand] = s + 1e-9 * st.pop_month[cand]  # popularity breaks ties deterministically
        return out

    def score_items(self, users, items) -> np.ndarray:
        """Scores of `items` for a block of customers: the ranker's for their candidates, the taste model's (below
        every candidate) for the rest; one feature pass for the whole block."""
        self._check_fitted()
        st, users = self.state, list(users)
        items = np.asarray(items, dtype=np.int64)
        out = np.full((len(users), len(items)), -np.inf)
        pos = {int(j): c for c, j in enumerate(items)}
        tm = getattr(st, "taste", None)
        for b0 in range(0, len(users), BLOCK):
            part = users[b0 : b0 + BLOCK]
            cands, s = self._block_scores(part)
            o = 0
            for r, (u, cand) in enumerate(zip(part, cands)):
                sc = s[o : o + len(cand)] + 1e-9 * st.pop_month[cand]
                o += len(cand)
                if tm is not None:  # the taste of the asked items only (a "new in" list is a fraction of the catalog)
                    h, ts, _ = history(st, u)
                    inside = items < len(tm.F)
                    hh, tt = np.asarray(h, dtype=np.int64), np.asarray(ts).astype("datetime64[ns]")
                    out[b0 + r, inside] = BEYOND + tm.taste(hh, tt, items[inside], user=u)
                cols = np.array([pos.get(int(j), -1) for j in cand], dtype=np.int64)
                ok = cols >= 0
                out[b0 + r, cols[ok]] = sc[ok]
        return out

    def recommend_block(self, users, k: int = 12, timings: dict | None = None, *, items=None) -> list[list[str]]:
        """Top-k item ids for a block of customers (the batch job's unit): the lists `recommend(u, k)` gives each
        (lists longer than the candidates continue in taste order; without a taste model they are filled from the
        month's and week's best sellers). items: rank only these item indices (`Recommender.recommend_block`).
        timings: if a dict, seconds in candidates (+features) and ranking are added to it."""
        import time

        if items is not None:
            return super().recommend_block(users, k, items=items)
        self._check_fitted()
        users = list(users)
        t0 = time.perf_counter()
        with _one_thread():
            cands, X, _ = features_block(self, self.state, users, needed=self._needed_features())
        t1 = time.perf_counter()
        s = self._predict(X) if len(X) else np.zeros(0)
        out = rank_block(self, cands, s, k, users)
        if timings is not None:
            timings["candidates"] = timings.get("candidates", 0.0) + t1 - t0
            timings["ranking"] = timings.get("ranking", 0.0) + time.perf_counter() - t1
        return out

    def recommend_many(self, users, k: int = 12) -> dict[str, list[str]]:
        """Batch top-k: features for a block of customers, one ranker call per block."""
        self._check_fitted()
        users, out = list(users), {}
        for b in range(0, len(users), BLOCK):
            part = users[b : b + BLOCK]
            out.update(zip(part, self.recommend_block(part, k)))
        return out

    def _top(self, s, k, hist_idx, hist_ts, exclude=None, explain=True):
        from fashionrec.recommend.base import Rec

        s = s.astype(np.float64, copy=True)
        if exclude:
            s[list(exclude)] = -np.inf
        cand = np.flatnonzero(np.isfinite(s))
        top = with_arrivals(self, cand, s[cand], k) if len(cand) else np.zeros(0, dtype=np.int64)
        return [
            Rec(self.data.item_ids[j], float(s[j]), self.because(j, hist_idx, hist_ts) if explain else []) for j in top
        ]

    def candidate_sources(self, users) -> dict[str, dict[str, set]]:
        """user -> source -> candidate item ids (for per-source recall tables)."""
        users, out, ids = list(users), {}, self.data.item_ids
        for b0 in range(0, len(users), BLOCK):
            part = users[b0 : b0 + BLOCK]
            with _one_thread():
                _, _, triple = features_block(self, self.state, part, want_sources=True, needed=frozenset())
            for u, src in zip(part, sources_of(triple, len(part))):
                out[u] = {s: {ids[j] for j in v} for s, v in src.items()}
        return out

    # ------------------------------------------------------------------ the rest of the contract
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
        codes = product_codes(new_ids)
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
        attrs = {c: np.full(n_new, -1, dtype=np.int64) for c in SHARE_COLUMNS}  # the arrival's attributes: unknown
        tm = getattr(self, "taste_model", None)
        if tm is not None:  # the arrival's taste vector, from its photo (state.taste is this same model)
            tm.add_items(new_ids, vectors=extra if dim and vectors is not None else None)
        self.state.add_items(n_new, codes, attrs, self.V, self.has_vec)
        self._nb_cache = {}


# The classes a saved model holds, under the names its artifacts have always used (`base.state_classes`).
Hybrid.STATE_CLASSES = {"fashionrec.recommend.hybrid.Hybrid": Hybrid, "fashionrec.recommend.hybrid._State": _State}
