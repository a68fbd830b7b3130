"""Source: items bought together with the customer's recent purchases (item-kNN on co-purchases within
`pair_days`), summed over a block of customers with one sparse product."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashionrec.recommend.hybrid.schema import _top_sparse


def co_purchases(users, idx, ts, n, days, max_rows: int = 2_000_000):
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


def pair_sums(st, B: int, n: int, ru_b, ru_i, ru_rank, bh, hh, recent_items: int, n_pairs: int, whole: bool):
    """Per customer of a block: the sum of the pair rows of the `recent_items` newest distinct items (the source),
    and, when `whole`, of every purchase of the history (the `pair_score` feature): (CSR or None, CSR or None)."""
    import scipy.sparse as sp

    pair_rows = pair_hist = None
    if st.pairs is None or not len(hh):
        return pair_rows, pair_hist
    pairs = st.pairs.tocsr()
    rec = ru_rank < recent_items
    if n_pairs:
        R = sp.csr_matrix((np.ones(int(rec.sum()), dtype=pairs.dtype), (ru_b[rec], ru_i[rec])), shape=(B, n))
        pair_rows = R @ pairs
        pair_rows.sort_indices()
    if whole:  # the whole history's sums: the costliest product of the block
        Hc = sp.csr_matrix((np.ones(len(hh), dtype=pairs.dtype), (bh, hh)), shape=(B, n))
        Hc.sum_duplicates()
        pair_hist = (Hc @ pairs).tocsr()
        pair_hist.sort_indices()
    return pair_rows, pair_hist


def pair_source(pair_rows, b: int, n_pairs: int) -> np.ndarray:
    """Customer b's bought-together candidates, best first (`_top` of the summed row)."""
    a, z = pair_rows.indptr[b], pair_rows.indptr[b + 1]
    idx, val = pair_rows.indices[a:z], pair_rows.data[a:z]
    keep = val > 0
    return _top_sparse(idx[keep].astype(np.int64), val[keep], n_pairs)


def pair_score(pair_hist, B: int, n: int, ck: np.ndarray, has_history: np.ndarray) -> np.ndarray:
    """The `pair_score` feature of every (customer, candidate) key `ck` = customer * n + item."""
    pair = np.zeros(len(ck))
    if pair_hist is None or not len(ck):
        return pair
    pk = np.repeat(np.arange(B), np.diff(pair_hist.indptr)) * n + pair_hist.indices
    q = np.clip(np.searchsorted(pk, ck), 0, max(len(pk) - 1, 0))
    if len(pk):
        hit = (pk[q] == ck) & has_history
        pair[hit] = pair_hist.data[q[hit]]
    return pair
