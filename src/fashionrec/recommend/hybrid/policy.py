"""The hybrid's list policy: how ranked candidates become a list. Places kept for never-sold items
(`arrival_slots` of each page of 12), then, for lists longer than the candidates, every other photo in taste order,
the month's and the week's best sellers, and (a full ranking) the items without a photo last, by sales."""

from __future__ import annotations

import numpy as np

from fashionrec.recommend.hybrid.arrivals import taste_all
from fashionrec.recommend.hybrid.block import history


def with_arrivals(model, cand: np.ndarray, sc: np.ndarray, k: int) -> np.ndarray:
    """Top k by score, with places kept for the best-scored items nobody has bought yet (a new arrival has no
    sales to compete with): the last `arrival_slots` of each page of 12 (proportionally fewer for k < 12), at
    the same positions whatever k is, so a longer list (the server precomputes 50) starts with the 12-list."""
    order = np.lexsort((cand, -sc))  # ties broken by item position, whatever order the candidates came in
    ranked = [int(c) for c in cand[order]]
    r = min(getattr(model, "arrival_slots", 0), k)
    if not r:
        return np.array(ranked[:k], dtype=np.int64)
    page = min(k, 12)
    n_slots = r if k >= 12 else max(1, round(r * page / 12))
    start = page - min(n_slots, page)
    head = ranked[:start]
    sold = model.state.sold
    taken = set(head)
    fresh = [c for c in ranked if c not in taken and (c >= len(sold) or not sold[c])][: page - start]
    taken |= set(fresh)
    top = head + fresh + [c for c in ranked if c not in taken]
    return np.array(top[:k], dtype=np.int64)


def rank_block(model, cands, s, k, users=None, hists=None) -> list[list[str]]:
    """Each customer's list of k item ids from the ranker's scores `s` of the block's candidates (rows in order)."""
    st, ids = model.state, model.data.item_ids
    fill = [ids[j] for j in st.list_month] + [ids[j] for j in st.list_week]
    out, o = [], 0
    for b, cand in enumerate(cands):
        sc = s[o : o + len(cand)] + 1e-9 * st.pop_month[cand]  # popularity breaks ties deterministically
        o += len(cand)
        items = [ids[j] for j in with_arrivals(model, cand, sc, k)]
        if len(items) < k and users is not None and getattr(st, "taste", None) is not None:
            h, ts, _ = hists[b] if hists is not None else history(st, users[b])
            tv = taste_all(st, h, ts, users[b])  # beyond the candidates: every other item by taste
            seen = set(cand.tolist())
            order = np.lexsort((np.arange(len(tv)), -tv))
            more = [j for j in order[: k + len(cand)].tolist() if j not in seen and np.isfinite(tv[j])]
            items += [ids[j] for j in more[: k - len(items)]]
        if len(items) < k:
            seen = set(items)
            items += [i for i in fill if i not in seen and not seen.add(i)][: k - len(items)]
        if len(items) < k and users is not None:  # a full ranking: the items without a photo last, by sales
            seen = set(items)
            rest = np.lexsort((np.arange(len(st.pop_all)), -st.pop_all))
            items += [ids[j] for j in rest.tolist() if ids[j] not in seen][: k - len(items)]
        out.append(items)
    return out
