"""Sources of never-sold items: the new-arrival pool (every never-sold photo) ordered by the customer's taste
(`recommend.taste`; without a taste model, by what sells now in pictures plus the customer's photo profile), and the
customer's best-liked photos of the whole catalog (`taste`)."""

from __future__ import annotations

import numpy as np

from fashionrec.recommend.base import RecData
from fashionrec.recommend.hybrid.schema import _top

_TASTE_CACHE: dict = {}


def fit_taste(data: RecData, until, seed: int):
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


def taste_all(st, h, ts, user=None) -> np.ndarray | None:
    """The customer's taste score of every item (-inf: no photo), or None without a taste model."""
    tm = getattr(st, "taste", None)
    if tm is None:
        return None
    return tm.taste(np.asarray(h, dtype=np.int64), np.asarray(ts).astype("datetime64[ns]"), user=user)


def taste_percentile(tv: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Share of the items with a photo that this customer likes less than each candidate."""
    fin = np.sort(tv[np.isfinite(tv)])
    if not len(fin):
        return np.full(len(cand), np.nan)
    v = tv[cand]
    return np.where(np.isfinite(v), np.searchsorted(fin, v, side="left") / len(fin), np.nan)


def profile_from(model, ru: np.ndarray):
    """The mean photo of the customer's `recent_items` newest distinct purchases (newest-first unique history)."""
    if model.V is None or not len(ru):
        return None
    recent = ru[: model.recent_items]
    recent = recent[model.has_vec[recent]]
    if not len(recent):
        return None
    p = model.V[recent].mean(0)
    return p / max(np.linalg.norm(p), 1e-12)


def arrival_source(model, st, pool: np.ndarray, Vpool, tv, ru: np.ndarray) -> np.ndarray:
    """The `n_new_arrival` best of the never-sold pool for this customer: by taste, else by trend + photo profile."""
    if tv is not None:
        s = tv[pool]
    else:
        s = st.trend[pool].copy()
        prof = profile_from(model, ru)
        if prof is not None:
            s = s + Vpool @ prof
    return pool[np.argsort(-s, kind="stable")[: model.n_new_arrival]]


def taste_source(tv: np.ndarray, size: int) -> np.ndarray:
    """The customer's best-liked photos of the whole catalog."""
    return _top(tv, size, np.isfinite(tv))
