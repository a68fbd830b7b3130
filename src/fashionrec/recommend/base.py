"""The Recommender contract (after implicit's RecommenderBase), the data it is fitted on, and the registry.

Every recommender scores the whole candidate catalog from a *history* (item indices with timestamps), so the same
code serves a known user (history from the log), a new or anonymous user (history given at query time), and new
arrivals (items added after fitting).

The registry imports nothing: `@register_recommender("name")` fills the table when a plug-in module is imported,
and the package `fashionrec.recommend` imports the built-in plug-ins (baselines, content, hybrid), as timm's
`register_model` / `timm.models.__init__` do. `save` / `load` write data, never pickle (fashionrec.artifacts).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashionrec.artifacts import decode_state, encode_state, load_artifact, save_artifact
from fashionrec.errors import FashionrecError
from fashionrec.recommend.attributes import describe_items

_REGISTRY: dict[str, type] = {}
DAY = np.timedelta64(1, "D")


def register_recommender(name: str):
    def wrap(cls):
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def list_recommenders() -> list[str]:
    return sorted(_REGISTRY)


def recommender_class(name: str) -> type:
    """The registered class of `name` (its capabilities are class attributes: `needs_images`, ...)."""
    if name not in _REGISTRY:
        raise FashionrecError(f"unknown recommender '{name}'; choose from {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def names(where: Callable[[type], bool] | None = None, **capabilities) -> list[str]:
    """Registered recommenders, in registration order, whose class has every given capability value and passes
    `where(cls)`: `names(needs_images=True)`, `names(light=True)`, `names(lambda c: c.needs_images or
    c.uses_image_tags)`."""
    return [
        n
        for n, c in _REGISTRY.items()
        if all(getattr(c, k) == v for k, v in capabilities.items()) and (where is None or where(c))
    ]


def create_recommender(name: str, **params) -> Recommender:
    return recommender_class(name)(**params)


ARTIFACT_KIND = "recommender"


def state_classes() -> dict[str, type]:
    """The classes a saved recommender may contain, by table name: every registered recommender, the data classes
    of this module, the classes defined in the modules of registered recommenders (their helper state) and those a
    recommender lists in its `STATE_CLASSES` (name -> class)."""
    table: dict[str, type] = {f"recommender:{n}": c for n, c in _REGISTRY.items()}
    for cls in (RecData, ItemFeatures, Rec, Histories):
        table[f"{cls.__module__}.{cls.__qualname__}"] = cls
    for mod in {c.__module__ for c in _REGISTRY.values()}:
        for obj in vars(sys.modules[mod]).values():
            if isinstance(obj, type) and obj.__module__ == mod:
                table.setdefault(f"{mod}.{obj.__qualname__}", obj)
    for cls in _REGISTRY.values():  # helper classes a recommender names itself (kept stable when modules move)
        table.update(getattr(cls, "STATE_CLASSES", {}))
    return table


def load_recommender(path: str | Path) -> Recommender:
    """Rebuild a recommender saved by `Recommender.save`. A pickle from an older fashionrec, a foreign file or
    another format version is a FashionrecError naming the file ("old format, refit")."""
    cfg, arrays, _, _ = load_artifact(path, kind=ARTIFACT_KIND)
    name = cfg.get("recommender")
    if name not in _REGISTRY:
        raise FashionrecError(f"{path}: saved recommender '{name}' is not registered; choose from {sorted(_REGISTRY)}")
    model = decode_state(cfg["state"], arrays, state_classes())
    if not isinstance(model, _REGISTRY[name]):
        raise FashionrecError(f"{path}: saved state is not a '{name}' recommender")
    return model


@dataclass
class Rec:
    item: str
    score: float
    because: list[str] = field(default_factory=list)  # history items that led to it ([] = popular now)


@dataclass
class ItemFeatures:
    """Per-item vectors (image embeddings or text), L2-normalised; items without a vector get zeros."""

    ids: list[str]
    vectors: np.ndarray

    def aligned(self, item_ids: Sequence[str], normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(matrix aligned to item_ids, has_vector mask); rows L2-normalised unless `normalize` is False."""
        pos = {i: r for r, i in enumerate(self.ids)}
        out = np.zeros((len(item_ids), self.vectors.shape[1]), dtype=np.float32)
        has = np.zeros(len(item_ids), dtype=bool)
        for j, i in enumerate(item_ids):
            r = pos.get(i)
            if r is not None:
                out[j], has[j] = self.vectors[r], True
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out, has


class Histories:
    """Each user's events (in the order of the arrays given: time order in RecData), as views into per-event arrays
    sorted by user (stable): a read-only mapping user id -> tuple of arrays, for the users with at least one event.
    One set of arrays for the whole log instead of a dict of small arrays per user (at 1M customers that dict took
    GBs, seconds to build, and one file member per array when saved).

    user_ids: the ids, position = code; codes: each event's user code (-1: no user); columns: per-event arrays
    (None stays None in every tuple); index: an optional id -> code dict to share (rebuilt from user_ids if absent)."""

    def __init__(self, user_ids, codes: np.ndarray, columns: tuple, index: dict | None = None):
        codes = np.asarray(codes, dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        sc = codes[order]
        U = np.arange(len(user_ids))
        self.user_ids = user_ids
        self.start = np.searchsorted(sc, U, side="left").astype(np.int64)
        self.end = np.searchsorted(sc, U, side="right").astype(np.int64)
        self.columns = tuple(None if c is None else np.asarray(c)[order] for c in columns)
        self._index = index

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_index"] = None  # rebuilt from user_ids on first use
        return state

    def upto(self, counts: np.ndarray) -> Histories:
        """The first `counts[j]` events of every user j (their events before a time t, when each user's events are
        in time order): a view sharing these arrays, not a copy."""
        h = Histories.__new__(Histories)
        h.__dict__.update(self.__dict__)
        h.end = self.start + np.minimum(np.asarray(counts, dtype=np.int64), self.end - self.start)
        return h

    def _code(self, user) -> int:
        if getattr(self, "_index", None) is None:
            self._index = {u: j for j, u in enumerate(self.user_ids)}
        j = self._index.get(user)
        return -1 if j is None or j >= len(self.start) or self.end[j] == self.start[j] else int(j)

    def __contains__(self, user) -> bool:
        return self._code(user) >= 0

    def __getitem__(self, user) -> tuple:
        j = self._code(user)
        if j < 0:
            raise KeyError(user)
        a, b = self.start[j], self.end[j]
        return tuple(None if c is None else c[a:b] for c in self.columns)

    def get(self, user, default=None):
        return self[user] if user in self else default

    def __len__(self) -> int:
        return int(np.count_nonzero(self.end > self.start))

    def __iter__(self):
        return (self.user_ids[j] for j in np.flatnonzero(self.end > self.start))


class RecData:
    """Training view of the log: candidate items, users, the user x item matrix and the raw events."""

    def __init__(
        self,
        events: pd.DataFrame,
        item_ids: Sequence[str],
        *,
        image_features: ItemFeatures | None = None,
        metadata: pd.DataFrame | None = None,
        now: pd.Timestamp | None = None,
        predicted: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
        colour_features: ItemFeatures | None = None,
    ):
        self.item_ids = list(item_ids)
        self.item_index = {i: j for j, i in enumerate(self.item_ids)}
        items = pd.Index(self.item_ids, dtype=object)
        if items.is_unique:  # ids -> positions in C (a dict look-up per row took seconds per 10M rows)
            i = items.get_indexer(events["item"])
        else:
            i = events["item"].map(self.item_index).fillna(-1).to_numpy(dtype=np.int64)
        keep = i >= 0
        ev = events if keep.all() else events[keep]  # no copy of the log when every row is kept
        i = np.asarray(i[keep], dtype=np.int64)
        self.events = ev.reset_index(drop=True)
        # users coded in sorted-id order (= sorted(unique ids)), in one pass
        u, uniq = pd.factorize(ev["user"], sort=True)
        self.user_ids = uniq.tolist()
        self.user_index = {u_: j for j, u_ in enumerate(self.user_ids)}
        self.now = (
            pd.Timestamp(now) if now is not None else (ev["timestamp"].max() if len(ev) else pd.Timestamp("1970-01-01"))
        )
        self.image_features = image_features
        # A colour descriptor of the garment in each photo (training.colour), raw (not normalised); optional.
        self.colour_features = colour_features
        self.metadata = metadata if metadata is not None else pd.DataFrame()
        # Tags predicted from photos for every item (fashionrec.recommend.attributes), and per-customer facts
        # (index customer id; column `age`). Both optional.
        self.predicted = predicted
        self.users = users
        u = np.asarray(u, dtype=np.int64)
        self.matrix = sp.csr_matrix(
            (ev["weight"].to_numpy(np.float32), (u, i)), shape=(len(self.user_ids), len(self.item_ids))
        )
        self.matrix.sum_duplicates()
        # Map ids once for the whole log (Series.map per user rebuilds the dict each time: 20 s on H&M), then keep the
        # log as integer-coded arrays in time order and the histories as slices of them sorted by user (not a dict of
        # arrays per user: at 1M customers that took GBs and seconds to build, and a file member per array when saved).
        ts = ev["timestamp"].to_numpy().astype("datetime64[ns]")
        order = np.argsort(ts, kind="stable")
        take = (lambda a: a) if (order == np.arange(len(order))).all() else (lambda a: a[order])
        price = ev["price"].to_numpy(dtype=np.float64) if "price" in ev.columns else np.full(len(ev), np.nan)
        self._coded = {
            "item": take(np.asarray(i, dtype=np.int64)),
            "user": take(np.asarray(u, dtype=np.int64)),
            "ts": take(ts),
            "weight": take(ev["weight"].to_numpy(dtype=np.float64)),
            "price": take(price),
        }
        c = self._coded
        self._hist = Histories(self.user_ids, c["user"], (c["item"], c["ts"], c["price"]), index=self.user_index)

    def coded(self) -> dict:
        """The log as integer-coded arrays in time order (stable): `item` (index into item_ids), `user` (index into
        user_ids, which are sorted, so code order is id order), `ts` (datetime64[ns]), `weight`, `price` (NaN where
        the log has none). The events before a time t are the prefix `[: before(t)]`: the rows of
        `events[events.timestamp < t]`, in time order, without copying the log or mapping string ids again."""
        return self._coded

    def before(self, t) -> int:
        """Number of events strictly before `t`: the prefix of `coded()` a model standing at `t` may see."""
        return int(
            np.searchsorted(self.coded()["ts"], np.datetime64(pd.Timestamp(t).to_datetime64(), "ns"), side="left")
        )

    def bought_before(self, t=None) -> np.ndarray:
        """Mask over item_ids: bought by someone before `t` (default: anywhere in the log)."""
        c = self.coded()
        mask = np.zeros(self.n_items, dtype=bool)
        mask[c["item"] if t is None else c["item"][: self.before(t)]] = True
        return mask

    def describe(self, t=None, columns: list[str] | None = None) -> pd.DataFrame:
        """Attributes of every item as a model standing at time `t` may know them: the catalog row of items bought
        before `t`, tags predicted from the photo for all others (leak-free; see recommend/attributes.py)."""
        return describe_items(self.item_ids, self.metadata, self.predicted, self.bought_before(t), columns)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def history(self, user: str) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, timestamps) in time order; empty for an unknown user."""
        h = self._hist.get(user)
        return (np.zeros(0, dtype=np.int64), np.zeros(0, dtype="datetime64[ns]")) if h is None else h[:2]

    def history_from_ids(
        self, items: Sequence[str], timestamps: Sequence | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        unknown = [i for i in items if i not in self.item_index]
        if unknown:
            raise FashionrecError(f"unknown item id(s) in history: {unknown[:5]}")
        idx = np.array([self.item_index[i] for i in items], dtype=np.int64)
        if timestamps is None:  # assume the given order is oldest -> newest, one day apart, ending now
            ts = self.now - pd.to_timedelta(np.arange(len(items))[::-1], unit="D")
            ts = ts.to_numpy()
        else:
            ts = pd.to_datetime(pd.Series(list(timestamps))).to_numpy()
        return idx, ts

    def add_items(self, ids: Sequence[str]) -> None:
        """New arrivals: extend the candidate catalog (matrix gains zero columns)."""
        new = [i for i in ids if i not in self.item_index]
        for i in new:
            self.item_index[i] = len(self.item_ids)
            self.item_ids.append(i)
        if new:
            self.matrix = sp.hstack(
                [self.matrix, sp.csr_matrix((self.matrix.shape[0], len(new)), dtype=np.float32)]
            ).tocsr()


class Recommender(ABC):
    """fit(data) -> self; scores(history) -> one score per candidate item; the rest is shared.

    Subclasses implement `fit` and `scores`, and may override `because` (explanations), `similar_items` and
    `add_items`. Hyperparameters are constructor keyword arguments, checked at once.
    """

    name = "base"
    #: Capabilities, read through the registry (`names(needs_images=True)`) by the CLI, the evaluation and the server.
    needs_images = False  # cannot be fitted without image features (load_shop(..., with_images=True))
    uses_image_tags = False  # reads the tags predicted from photos (items without a catalog row): the evaluation
    # embeds the photos for it
    light = False  # cheap enough to fit at server start

    def __init__(self):
        self.data: RecData | None = None

    @abstractmethod
    def fit(self, data: RecData) -> Recommender: ...

    @abstractmethod
    def scores(self, hist_idx: np.ndarray, hist_ts: np.ndarray, user: str | None = None) -> np.ndarray:
        """A score per candidate item (higher is better); -inf = never recommend."""

    def because(self, item: int, hist_idx: np.ndarray, hist_ts: np.ndarray) -> list[str]:
        """History items that explain recommending `item` (default: the item itself if bought, else none)."""
        return [self.data.item_ids[item]] if item in set(hist_idx.tolist()) else []

    def _check_fitted(self):
        if self.data is None:
            raise FashionrecError(f"recommender '{self.name}' is not fitted")

    def _top(
        self, s: np.ndarray, k: int, hist_idx, hist_ts, exclude: set[int] | None = None, explain: bool = True
    ) -> list[Rec]:
        s = s.astype(np.float64, copy=True)
        if exclude:
            s[list(exclude)] = -np.inf
        k = min(k, len(s))
        top = np.argpartition(-s, k - 1)[:k] if k else np.zeros(0, dtype=int)
        top = top[np.argsort(-s[top], kind="stable")]
        return [
            Rec(self.data.item_ids[j], float(s[j]), self.because(j, hist_idx, hist_ts) if explain else [])
            for j in top
            if np.isfinite(s[j])
        ]

    def recommend(
        self, user: str, k: int = 12, *, exclude_bought: bool = False, explain: bool = True, items=None
    ) -> list[Rec]:
        """Top-k for a known customer (an unknown one gets what the model gives an empty history). `items`: rank
        only these item ids (a "new in" list)."""
        self._check_fitted()
        h, t = self.data.history(user)
        s = self._only(self.scores(h, t, user), items)
        return self._top(s, k, h, t, set(h.tolist()) if exclude_bought else None, explain)

    def item_indices(self, items: Sequence[str]) -> np.ndarray:
        """Catalog positions of item ids (duplicates dropped, order kept); unknown ids are a FashionrecError naming
        them."""
        self._check_fitted()
        index = self.data.item_index
        items = list(dict.fromkeys(str(i) for i in items))
        unknown = [i for i in items if i not in index]
        if unknown:
            raise FashionrecError(
                f"{len(unknown)} of {len(items)} item ids are not in the catalog (no photo and no catalog row): "
                f"{', '.join(unknown[:5])}"
            )
        return np.array([index[i] for i in items], dtype=np.int64)

    def _only(self, s: np.ndarray, items) -> np.ndarray:
        """Scores with every item outside `items` (ids) set to -inf; unknown ids are a FashionrecError."""
        if items is None:
            return s
        keep = np.zeros(len(s), dtype=bool)
        keep[self.item_indices(items)] = True
        return np.where(keep, s, -np.inf)

    def recommend_from_history(
        self,
        items: Sequence[str],
        k: int = 12,
        timestamps: Sequence | None = None,
        *,
        exclude_bought: bool = False,
        explain: bool = True,
        only: Sequence[str] | None = None,
    ) -> list[Rec]:
        """A new or anonymous user: the history is given at query time; nothing is refitted. `only`: rank only
        these item ids."""
        self._check_fitted()
        h, t = self.data.history_from_ids(items, timestamps)
        s = self._only(self.scores(h, t, None), only)
        return self._top(s, k, h, t, set(h.tolist()) if exclude_bought else None, explain)

    def recommend_many(self, users: Sequence[str], k: int = 12) -> dict[str, list[str]]:
        """Top-k item ids for many users at once (batch jobs, evaluation); models may vectorise it."""
        self._check_fitted()
        return {u: [r.item for r in self.recommend(u, k, explain=False)] for u in users}

    def score_items(self, users: Sequence[str], items: np.ndarray) -> np.ndarray:
        """(len(users), len(items)) scores of the given item indices for each user (higher is better; -inf: never).
        Every item is scored, not only a model's candidates: the taste metrics and `--items` rank a whole pool."""
        self._check_fitted()
        items = np.asarray(items, dtype=np.int64)
        out = np.empty((len(users), len(items)))
        for r, u in enumerate(users):
            h, t = self.data.history(u)
            out[r] = self.scores(h, t, u)[items]
        return out

    def recommend_block(self, users: Sequence[str], k: int = 12, *, items: np.ndarray | None = None) -> list[list[str]]:
        """Top-k item ids of each customer of a block (the batch job's unit). `items`: rank only these item indices
        (a "new in" list), every one of them by the model's own score, best first; ties by catalog position."""
        self._check_fitted()
        users = list(users)
        if items is None:
            recs = self.recommend_many(users, k)
            return [list(recs.get(u, [])) for u in users]
        return top_of_scores(self.score_items(users, items), items, self.data.item_ids, k)

    def batch_copy(self) -> Recommender:
        """What a batch worker needs of the fitted model (models with a large training log ship a slim copy)."""
        return self

    def similar_items(self, item: str, k: int = 12) -> list[Rec]:
        self._check_fitted()
        if item not in self.data.item_index:
            raise FashionrecError(f"unknown item '{item}'")
        j = self.data.item_index[item]
        h = np.array([j])
        t = np.array([np.datetime64(self.data.now, "ns")])
        return self._top(self.scores(h, t, None), k, h, t, {j})

    def add_items(
        self, ids: Sequence[str], vectors: np.ndarray | None = None, metadata: pd.DataFrame | None = None
    ) -> None:
        """New arrivals become candidates at once (content models also take their vectors/metadata)."""
        self._check_fitted()
        self.data.add_items(ids)

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as data (arrays in .npz + a JSON tree; fashionrec.artifacts), atomically. An
        attribute that cannot be stored as data is refused, naming its path (e.g. `hybrid.state.x`)."""
        tree, arrays = encode_state(self, state_classes(), root=self.name)
        return save_artifact(path, {"recommender": self.name, "state": tree}, arrays, kind=ARTIFACT_KIND)

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        model = load_recommender(path)
        if not isinstance(model, cls):
            raise FashionrecError(f"{path}: holds a '{model.name}' recommender, not a {cls.__name__}")
        return model


def top_of_scores(S: np.ndarray, items: np.ndarray, item_ids: Sequence[str], k: int) -> list[list[str]]:
    """Per row of S (scores of `items`), the k best item ids (finite scores only), ties broken by item position."""
    items = np.asarray(items, dtype=np.int64)
    out = []
    for s in np.asarray(S, dtype=np.float64):
        order = np.lexsort((items, -s))
        order = order[np.isfinite(s[order])][:k]
        out.append([item_ids[j] for j in items[order]])
    return out


def recency_weights(hist_ts: np.ndarray, now, half_life_days: float) -> np.ndarray:
    if len(hist_ts) == 0:
        return np.zeros(0)
    age = (np.datetime64(pd.Timestamp(now), "ns") - hist_ts.astype("datetime64[ns]")) / DAY
    return np.power(0.5, np.maximum(age, 0) / half_life_days)
