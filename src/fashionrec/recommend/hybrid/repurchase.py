"""Source: the customer's own purchases, newest first (repurchase), from the newest-first distinct history of every
customer of a block, which the other personal sources (other colours, bought together, visual) start from too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OwnHistory:
    """Newest-first distinct purchases of a block's customers: customer position `b` and item `i` per entry, each
    customer's slice [start[b], end[b]), the entry's place in it (`rank`), and the sorted keys b * n + i."""

    b: np.ndarray
    i: np.ndarray
    start: np.ndarray
    end: np.ndarray
    rank: np.ndarray
    keys_sorted: np.ndarray

    def of(self, b: int) -> np.ndarray:
        return self.i[self.start[b] : self.end[b]]


def newest_first(bh: np.ndarray, hh: np.ndarray, th: np.ndarray, B: int, n: int) -> OwnHistory:
    """The distinct items of every history, newest first (argsort(ts, stable)[::-1], then first occurrences):
    bh, hh, th are the customer position, item and time of every event of the block."""
    pos = np.arange(len(hh))
    o = np.lexsort((-pos, -th.astype(np.int64), bh))
    keys = bh[o] * n + hh[o]
    _, first = np.unique(keys, return_index=True)
    first = np.sort(first)
    ru_b, ru_i = bh[o][first], hh[o][first]
    start = np.searchsorted(ru_b, np.arange(B))
    end = np.searchsorted(ru_b, np.arange(B), side="right")
    rank = np.arange(len(ru_b)) - start[ru_b]
    return OwnHistory(ru_b, ru_i, start, end, rank, np.sort(ru_b * n + ru_i))


def repurchase_source(own: OwnHistory, b: int, size: int) -> np.ndarray:
    """Customer b's own distinct purchases, newest first."""
    return own.of(b)[:size]


def own_columns(bh, hh, hd, ck_sorted, ck_order, M: int, n: int):
    """n_own, own_w (repurchase's recency weights, half-life 30 days) and own_days of every (customer, candidate)
    row, by the sorted keys ck = customer * n + item."""
    n_own, own_w, own_days = np.zeros(M), np.zeros(M), np.full(M, np.nan)
    if not len(hh) or not M:
        return n_own, own_w, own_days
    p_ = np.clip(np.searchsorted(ck_sorted, bh * n + hh), 0, M - 1)
    ok = ck_sorted[p_] == bh * n + hh
    hi = ck_order[p_[ok]]
    np.add.at(n_own, hi, 1.0)
    np.add.at(own_w, hi, np.power(0.5, np.maximum(hd[ok], 0) / 30.0))
    od = np.full(M, np.inf)
    np.minimum.at(od, hi, hd[ok])
    own_days = np.where(np.isfinite(od), od, np.nan)
    return n_own, own_w, own_days
