"""Non-visual baselines: time-decayed popularity, repurchase, and collaborative filtering through `implicit`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashionrec.recommend.base import DAY, RecData, Recommender, recency_weights, register_recommender


def decayed_popularity(data: RecData, half_life_days: float, window_days: float | None = None) -> np.ndarray:
    ev = data.events
    age = (np.datetime64(pd.Timestamp(data.now), "ns") - ev["timestamp"].to_numpy()) / DAY
    w = ev["weight"].to_numpy() * np.power(0.5, np.maximum(age, 0) / half_life_days)
    if window_days is not None:
        w = np.where(age <= window_days, w, 0.0)
    pop = np.zeros(data.n_items)
    np.add.at(pop, ev["item"].map(data.item_index).to_numpy(), w)
    return pop


@register_recommender("popularity")
class Popularity(Recommender):
    """What sells now: purchases weighted by 0.5 ** (age / half_life_days). Same list for everyone."""

    light = True

    def __init__(self, half_life_days: float = 7.0, window_days: float | None = 28.0):
        super().__init__()
        if half_life_days <= 0:
            raise ValueError("half_life_days must be positive")
        self.half_life_days, self.window_days = half_life_days, window_days

    def fit(self, data):
        self.data = data
        self.pop = decayed_popularity(data, self.half_life_days, self.window_days)
        return self

    def scores(self, hist_idx, hist_ts, user=None):
        s = np.zeros(self.data.n_items)
        s[: len(self.pop)] = self.pop
        return s

    def add_items(self, ids, vectors=None, metadata=None):
        super().add_items(ids)


@register_recommender("repurchase")
class Repurchase(Popularity):
    """Own recent purchases first (recency-weighted counts), then popularity: strong in fashion retail."""

    def __init__(
        self, half_life_days: float = 7.0, window_days: float | None = 28.0, history_half_life_days: float = 30.0
    ):
        super().__init__(half_life_days, window_days)
        self.history_half_life_days = history_half_life_days

    def scores(self, hist_idx, hist_ts, user=None):
        s = super().scores(hist_idx, hist_ts)
        s = s / (s.max() + 1e-12)  # popularity in [0, 1]
        if len(hist_idx):
            w = recency_weights(hist_ts, self.data.now, self.history_half_life_days)
            own = np.zeros_like(s)
            np.add.at(own, hist_idx, w)
            s = s + np.where(own > 0, 1.0 + own, 0.0)
        return s


class _Implicit(Recommender):
    """Shared plumbing for implicit's models; items never bought have zero columns and are scored 0 or -inf."""

    def _model(self):
        raise NotImplementedError

    def fit(self, data):
        self.data = data
        self.model = self._model()
        x = data.matrix.copy().astype(np.float32)
        x.data = 1.0 + np.log1p(x.data)  # dampen quantities
        self.user_items = x.tocsr()
        import warnings

        with warnings.catch_warnings():
            # implicit's own all_pairs_knn converts internally and warns about it; nothing for users to act on
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            self.model.fit(self.user_items, show_progress=False)
        if hasattr(self.model, "to_cpu"):  # fitted on the GPU: the factors come back as numpy arrays
            self.model = self.model.to_cpu()
        self.bought = np.asarray(x.sum(0)).ravel() > 0
        return self

    def _history_row(self, hist_idx, hist_ts):
        row = np.zeros(self.user_items.shape[1], dtype=np.float32)
        if len(hist_idx):
            np.add.at(row, hist_idx[hist_idx < len(row)], 1.0)
            row[row > 0] = 1.0 + np.log1p(row[row > 0] - 1.0)
        return sp.csr_matrix(row)

    def scores(self, hist_idx, hist_ts, user=None):
        n_fit = self.user_items.shape[1]
        out = np.full(self.data.n_items, -np.inf)
        if len(hist_idx) == 0:
            return out
        row = self._history_row(hist_idx, hist_ts)
        ids, sc = self._recommend(row, n_fit, user)
        out[ids] = sc
        out[:n_fit][~self.bought] = -np.inf  # CF cannot score items nobody bought
        return out


@register_recommender("itemknn")
class ItemKNN(_Implicit):
    """Item-based CF: cosine similarity between item purchase vectors (implicit's CosineRecommender)."""

    def __init__(self, K: int = 100):
        super().__init__()
        if K < 1:
            raise ValueError("K must be a positive integer")
        self.K = K

    def _model(self):
        from implicit.nearest_neighbours import CosineRecommender

        return CosineRecommender(K=self.K)

    def _recommend(self, row, n, user):
        ids, sc = self.model.recommend(0, row, N=n, filter_already_liked_items=False)
        return ids, sc

    def because(self, item, hist_idx, hist_ts):
        if item >= self.user_items.shape[1] or not len(hist_idx):
            return super().because(item, hist_idx, hist_ts)
        sim = self.model.similarity[item].toarray().ravel()
        h = hist_idx[hist_idx < len(sim)]
        if not len(h) or sim[h].max() <= 0:
            return super().because(item, hist_idx, hist_ts)
        return [self.data.item_ids[h[np.argmax(sim[h])]]]


def als_on_gpu(device: str | None = "auto") -> bool:
    """Whether ALS fits on the GPU: `device` 'auto' when implicit has CUDA (`implicit.gpu.HAS_CUDA`: its CUDA build
    and a GPU), 'cuda' (an error naming what is missing without it), 'cpu' never."""
    import implicit.gpu

    spec = (device or "auto").strip().lower()
    if spec == "cpu":
        return False
    if spec == "auto":
        return bool(implicit.gpu.HAS_CUDA)
    if spec == "cuda" or spec.startswith("cuda:"):
        if not implicit.gpu.HAS_CUDA:
            raise ValueError(
                f"device {spec}: implicit has no CUDA support here (implicit.gpu.HAS_CUDA is False: it needs "
                "implicit's CUDA build and a GPU); use device cpu or auto"
            )
        return True
    raise ValueError(f"device {spec!r}: expected one of auto, cpu, cuda")


@register_recommender("als")
class ALS(_Implicit):
    """Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) via implicit; new users are folded in.
    `device`: where it fits (`als_on_gpu`: auto = implicit's GPU code where it has CUDA); the fitted factors are
    numpy arrays either way, and recommending runs on the CPU."""

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 20,
        alpha: float = 10.0,
        random_state: int = 0,
        device: str = "auto",
    ):
        super().__init__()
        if factors < 1 or iterations < 1:
            raise ValueError("factors and iterations must be positive integers")
        als_on_gpu(device)  # an unknown name, or CUDA asked for and absent: said now
        self.device = device
        self.params = dict(
            factors=factors,
            regularization=regularization,
            iterations=iterations,
            alpha=alpha,
            random_state=random_state,
        )

    def _model(self):
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(**self.params, use_gpu=als_on_gpu(getattr(self, "device", "cpu")))

    def _recommend(self, row, n, user):
        return self.model.recommend(0, row, N=n, filter_already_liked_items=False, recalculate_user=True)

    def because(self, item, hist_idx, hist_ts):
        f = self.model.item_factors
        h = hist_idx[hist_idx < len(f)]
        if item >= len(f) or not len(h):
            return super().because(item, hist_idx, hist_ts)
        return [self.data.item_ids[h[np.argmax(f[h] @ f[item])]]]


@register_recommender("bpr")
class BPR(ALS):
    """Bayesian Personalised Ranking via implicit. BPR cannot recompute a user, so a history is folded in as
    the mean of its items' factors."""

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int = 0,
    ):
        Recommender.__init__(self)
        self.device = "cpu"
        self.params = dict(
            factors=factors,
            learning_rate=learning_rate,
            regularization=regularization,
            iterations=iterations,
            random_state=random_state,
        )

    def _model(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(**self.params)

    def _recommend(self, row, n, user):
        f = self.model.item_factors
        u = f[row.indices].mean(0)
        sc = f @ u
        return np.arange(len(sc)), sc
