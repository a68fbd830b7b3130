"""Sources of what sells now: the month's, the week's and the time-decayed best sellers (lists of `_State`), the
best sellers of the customer's age band and of the two departments they buy from most."""

from __future__ import annotations

import numpy as np

from fashionrec.recommend.hybrid.schema import AGE_BANDS, _top


def age_lists(idx, w, age, ev_age, n: int, size: int) -> dict:
    """Age band -> the band's best sellers of the last 28 days."""
    band = np.searchsorted(AGE_BANDS, ev_age, side="right") - 1
    out = {}
    recent = age <= 28
    for b in range(len(AGE_BANDS) - 1):
        m = recent & (band == b)
        if m.any():
            out[b] = _top(np.bincount(idx[m], w[m], minlength=n), size)
    return out


def dept_lists(st, size: int) -> dict:
    """Department code -> the department's best sellers of the month."""
    dep = st.attr.get("department_name")
    out = {}
    if dep is not None:
        m = dep >= 0
        for d in np.unique(dep[m]):
            out[int(d)] = _top(st.pop_month, size, dep == d)
    return out


def age_source(st, age: float, band: int) -> np.ndarray | None:
    """The best sellers of the customer's age band (None: no age, or nobody of the band bought)."""
    if np.isnan(age) or band not in st.age_lists:
        return None
    return st.age_lists[band]


def dept_source(st, h: np.ndarray) -> np.ndarray | None:
    """The best sellers of the two departments the customer buys from most, in that order, without repeats."""
    dep = st.attr.get("department_name")
    if dep is None or not len(h) or not st.dept_lists:
        return None
    d = dep[h]
    d = d[d >= 0]
    if not len(d):
        return None
    vals, cnt = np.unique(d, return_counts=True)
    lists = [st.dept_lists.get(int(v), np.zeros(0, dtype=np.int64)) for v in vals[np.argsort(-cnt)][:2]]
    return np.array(list(dict.fromkeys(np.concatenate(lists).tolist())), dtype=np.int64)
