"""Sources of other colours: colours of the products a customer bought (`same_product`), and never-sold colours
of the products that sell now (`new_colour`)."""

from __future__ import annotations

import numpy as np

from fashionrec.recommend.hybrid.schema import _top


def new_colour_list(st, size: int) -> np.ndarray:
    """Never-sold items of products that sold this month, the best-selling products first."""
    has_code = st.code_ids >= 0
    return _top(st.code_pop_month + 1e-3 * st.code_pop_week, size, ~st.sold & has_code)


def same_product_block(st, B: int, n: int, ru_b, ru_i, own_sorted, size: int) -> list:
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
        out[b] = items[s0[b] : min(s1[b], s0[b] + size)]
    return out
