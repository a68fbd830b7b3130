"""The hybrid's one feature path: candidates and their feature rows for a block of customers at once (one customer
is a block of one). Array operations over the whole block (newest-first histories, other colours, bought-together
sums as one sparse product, own/product/share features by sorted keys); only what is per customer by nature (small
argsorts with a fixed tie order, the new-arrival and visual dot products, the taste scores) runs in a loop."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fashionrec.recommend.base import DAY
from fashionrec.recommend.hybrid.arrivals import arrival_source, taste_all, taste_percentile, taste_source
from fashionrec.recommend.hybrid.pairs import pair_score, pair_source, pair_sums
from fashionrec.recommend.hybrid.popularity import age_source, dept_source
from fashionrec.recommend.hybrid.repurchase import OwnHistory, newest_first, own_columns, repurchase_source
from fashionrec.recommend.hybrid.same_product import same_product_block
from fashionrec.recommend.hybrid.schema import (
    AGE_BANDS,
    FEATURES,
    SHARE_COLUMNS,
    SOURCES,
    USER_FEATURES,
    _group_lookup,
)
from fashionrec.recommend.hybrid.visual import visual_source

EMPTY_HISTORY = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype="datetime64[ns]"), None)
SOURCE_NUM = {s: k for k, s in enumerate(SOURCES)}


def history(st, user):
    """(items, times, prices) of the customer's purchases before the state's date; empty for a new customer."""
    if user in st.hist:
        return st.hist[user]
    return EMPTY_HISTORY


def user_ages(st, users) -> np.ndarray:
    out = np.full(len(users), np.nan)
    if st.user_age is None:
        return out
    ua = st.user_age
    if ua.index.is_unique:
        ix = ua.index.get_indexer(pd.Index(list(users), dtype=object))
        vals = pd.to_numeric(ua, errors="coerce").to_numpy(dtype=np.float64)
        out[ix >= 0] = vals[ix[ix >= 0]]
        return out
    for r, u in enumerate(users):
        a = ua.get(u, np.nan)
        out[r] = float(a) if a == a else np.nan
    return out


@dataclass
class _Block:
    """The block's histories, flattened: customer position bh, item hh, time th, age in days hd of every event."""

    users: list
    hists: list
    lens: np.ndarray
    ages: np.ndarray
    bh: np.ndarray
    hh: np.ndarray
    th: np.ndarray
    hd: np.ndarray
    own: OwnHistory
    n: int
    parts: dict = field(default_factory=dict)


def _block(st, users: list, hists: list | None) -> _Block:
    B, n = len(users), len(st.pop_all)
    if hists is None:
        hists = [history(st, u) for u in users]
    lens = np.fromiter((len(x[0]) for x in hists), dtype=np.int64, count=B)
    bh = np.repeat(np.arange(B), lens)
    hh = np.concatenate([x[0] for x in hists]).astype(np.int64) if lens.sum() else np.zeros(0, dtype=np.int64)
    th = (
        np.concatenate([x[1] for x in hists]).astype("datetime64[ns]")
        if lens.sum()
        else np.zeros(0, dtype="datetime64[ns]")
    )
    hd = (np.datetime64(st.t, "ns") - th) / DAY
    own = newest_first(bh, hh, th, B, n)
    return _Block(users, hists, lens, user_ages(st, users), bh, hh, th, hd, own, n)


def _sources(model, st, blk: _Block, b: int, lists: dict, tv) -> dict[str, np.ndarray]:
    """Source name -> customer b's candidates, best first (the order of `SOURCES` where a customer has them)."""
    h = blk.hists[b][0]
    ru = blk.own.of(b)
    src: dict[str, np.ndarray] = {}
    if len(h):
        src["repurchase"] = repurchase_source(blk.own, b, model.n_repurchase)
        src["same_product"] = lists["same"][b]
        if lists["pair_rows"] is not None:
            src["pairs"] = pair_source(lists["pair_rows"], b, model.n_pairs)
        if model.V is not None and model.n_visual:
            src["visual"] = visual_source(model, ru[: model.recent_items][:5])
    src["pop_decay"] = st.list_decay
    src["pop_week"] = st.list_week
    src["pop_month"] = st.list_month
    src["new_colour"] = st.list_new_colour
    band = int(np.searchsorted(AGE_BANDS, blk.ages[b], side="right") - 1) if not np.isnan(blk.ages[b]) else -1
    for name, lst in (("age_pop", age_source(st, blk.ages[b], band)), ("dept_pop", dept_source(st, h))):
        if lst is not None:
            src[name] = lst
    if lists["pool"] is not None:
        src["new_arrival"] = arrival_source(model, st, lists["pool"], lists["Vpool"], tv, ru)
    if tv is not None and model.n_taste:
        src["taste"] = taste_source(tv, model.n_taste)
    return src


def _customer_rows(model, st, blk: _Block, b: int, src: dict, tv, offset: int, want) -> np.ndarray:
    """Customer b's distinct candidates (first occurrence in source order) and the per-customer parts of their rows,
    appended to blk.parts."""
    P = blk.parts
    names = list(src)
    parts = [np.asarray(src[s_], dtype=np.int64) for s_ in names]
    concat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    uq, fi, inv = np.unique(concat, return_index=True, return_inverse=True)
    oo = np.argsort(fi, kind="stable")
    cand = uq[oo]
    where = np.empty(len(uq), dtype=np.int64)
    where[oo] = np.arange(len(uq))
    m = len(cand)
    P["rows"].append(offset + where[inv.ravel()])
    P["src"].append(np.repeat([SOURCE_NUM[s_] for s_ in names], [len(p) for p in parts]).astype(np.int64))
    P["rank"].append(np.concatenate([np.arange(len(p)) for p in parts]) if parts else np.zeros(0, dtype=np.int64))
    h, ts, pr = blk.hists[b]
    ru = blk.own.of(b)
    if not any(want(f) for f in USER_FEATURES + ["price_ratio"]):
        P["user"].append((blk.ages[b], np.nan, np.nan, np.nan, np.nan))
    elif len(h):
        up = np.nanmean(pr) if pr is not None and np.isfinite(pr).any() else np.nan
        days = float(((np.datetime64(st.t, "ns") - ts.astype("datetime64[ns]")) / DAY).min())
        P["user"].append((blk.ages[b], len(h), len(ru), days, up))
    else:
        P["user"].append((blk.ages[b], 0, 0, np.nan, np.nan))
    vm, vp = np.zeros(m), np.zeros(m)
    if len(h) and model.V is not None:
        recent = ru[: model.recent_items]
        recent = recent[model.has_vec[recent]]
        if len(recent):
            Vc = model.V[cand]
            vm = (Vc @ model.V[recent].T).max(1)
            if want("vis_profile"):
                p = model.V[recent].mean(0)
                vp = Vc @ (p / max(np.linalg.norm(p), 1e-12))
    P["vis_max"].append(vm)
    P["vis_profile"].append(vp)
    use_pct = tv is not None and model._taste_feature()
    P["taste_pct"].append(taste_percentile(tv, cand) if use_pct else np.full(m, np.nan))
    u = blk.users[b]
    if want("als") and st.als_items is not None and u in st.als_user:
        P["als"].append(st.als_items[cand] @ st.als_user[u])
    else:
        P["als"].append(np.full(m, np.nan))
    return cand


def _candidates(model, st, blk: _Block, want) -> tuple[list, dict]:
    """Every customer's candidates (list of index arrays) and the bought-together sums of the block."""
    B, n = len(blk.users), blk.n
    own = blk.own
    lists = {"same": same_product_block(st, B, n, own.b, own.i, own.keys_sorted, model.n_same_product)}
    lists["pair_rows"], lists["pair_hist"] = pair_sums(
        st, B, n, own.b, own.i, own.rank, blk.bh, blk.hh, model.recent_items, model.n_pairs, want("pair_score")
    )
    pool = st.arrival_pool[st.arrival_pool < n] if len(st.arrival_pool) and model.n_new_arrival else None
    lists["pool"] = pool
    lists["Vpool"] = model.V[pool] if pool is not None and model.V is not None else None
    blk.parts = {k: [] for k in ("rows", "src", "rank", "user", "vis_max", "vis_profile", "taste_pct", "als")}
    cands, offset = [], 0
    for b in range(B):
        h, ts, _ = blk.hists[b]
        tv = taste_all(st, h, ts, blk.users[b])
        src = _sources(model, st, blk, b, lists, tv)
        cand = _customer_rows(model, st, blk, b, src, tv, offset, want)
        cands.append(cand)
        offset += len(cand)
    return cands, lists


def _share_columns(st, blk: _Block, cb, cand_all, want) -> dict:
    """The customer's share of purchases in each candidate's type, group, department, colour..."""
    shares = {c: np.zeros(len(cand_all)) for c in SHARE_COLUMNS}
    if not len(blk.hh) or not len(cand_all):
        return shares
    n_users_h = blk.lens[cb]
    for c in SHARE_COLUMNS:
        if not want(f"share_{c}"):
            continue
        a = st.attr[c]
        ah = a[blk.hh]
        oka = ah >= 0
        if oka.any():
            NA = int(a.max(initial=0)) + 2
            cnt, _ = _group_lookup(
                blk.bh[oka] * NA + ah[oka],
                np.zeros(int(oka.sum())),
                np.where(a[cand_all] >= 0, cb * NA + a[cand_all], -1),
            )
            shares[c] = np.where(n_users_h > 0, cnt / np.maximum(n_users_h, 1), 0.0)
    return shares


def _matrix(st, blk: _Block, cands: list, lists: dict, want) -> np.ndarray:
    """The float64 feature matrix of the block's rows, columns in `FEATURES` order."""
    B, n, P = len(blk.users), blk.n, blk.parts
    M = sum(len(c) for c in cands)
    counts = np.fromiter((len(c) for c in cands), dtype=np.int64, count=B)
    cand_all = np.concatenate(cands) if M else np.zeros(0, dtype=np.int64)
    cb = np.repeat(np.arange(B), counts)
    X = np.empty((M, len(FEATURES)), dtype=np.float64)
    ranks = np.full((M, len(SOURCES)), np.nan)
    if M:
        np.fmin.at(
            ranks, (np.concatenate(P["rows"]), np.concatenate(P["src"])), np.concatenate(P["rank"]).astype(float)
        )
    X[:, : len(SOURCES)] = ranks
    item_cols = (st.pop_week, st.pop_month, st.pop_all, st.first_days, st.last_days, st.code_pop_week)
    item_cols += (st.code_pop_month, st.code_first, st.code_last, (~st.sold).astype(float), st.trend)
    item_cols += (st.buyer_age, st.item_price)
    cols = [v[cand_all] for v in item_cols]
    uc = np.array(P["user"], dtype=float).reshape(B, 5)
    cols += [uc[cb, j] for j in range(5)]
    # customer x item, by sorted keys over the whole block
    ck = cb * n + cand_all
    ck_order = np.argsort(ck, kind="stable")
    cols += own_columns(blk.bh, blk.hh, blk.hd, ck[ck_order], ck_order, M, n)
    n_code, code_days = np.zeros(M), np.full(M, np.nan)
    if len(blk.hh) and M:
        hc, cc = st.code_ids[blk.hh], st.code_ids[cand_all]
        NC = int(max(st.code_ids.max(initial=0), 0)) + 2
        okc = hc >= 0
        n_code, code_days = _group_lookup(blk.bh[okc] * NC + hc[okc], blk.hd[okc], np.where(cc >= 0, cb * NC + cc, -1))
    up_rows = uc[cb, 4]
    age_diff = blk.ages[cb] - st.buyer_age[cand_all]
    with np.errstate(divide="ignore", invalid="ignore"):
        price_ratio = np.where((up_rows == up_rows) & (up_rows != 0), st.item_price[cand_all] / up_rows, np.nan)
    pair = pair_score(lists["pair_hist"], B, n, ck, blk.lens[cb] > 0)
    cat = lambda k: np.concatenate(P[k]) if M else np.zeros(0)  # noqa: E731
    cols += [n_code, code_days, cat("vis_max"), cat("vis_profile"), age_diff, price_ratio, cat("als"), pair]
    shares = _share_columns(st, blk, cb, cand_all, want)
    cols += [shares[c] for c in SHARE_COLUMNS] + [cat("taste_pct")]
    for j, v in enumerate(cols):
        X[:, len(SOURCES) + j] = v
    return X


def features_block(model, st, users, want_sources: bool = False, needed: frozenset | None = None, hists=None):
    """Candidates and features of many customers at once.

    Returns (cands: list of index arrays, X: (sum of lengths, len(FEATURES)) float32, sources) where sources is
    (customer position, source number, item) of every source entry when `want_sources`, else None.
    needed: the feature names to compute (None: all); the others are NaN (`Hybrid._needed_features`).
    hists: each customer's (items, times, prices), when not the state's histories (a history given at query time)."""
    want = (lambda name: True) if needed is None else needed.__contains__
    users = list(users)
    blk = _block(st, users, hists)
    cands, lists = _candidates(model, st, blk, want)
    X = _matrix(st, blk, cands, lists, want)
    if needed is not None:
        X[:, [j for j, f in enumerate(FEATURES) if f not in needed]] = np.nan
    sources = None
    if want_sources:
        M = len(X)
        counts = np.fromiter((len(c) for c in cands), dtype=np.int64, count=len(users))
        cb = np.repeat(np.arange(len(users)), counts)
        cand_all = np.concatenate(cands) if M else np.zeros(0, dtype=np.int64)
        rows = np.concatenate(blk.parts["rows"]) if M else np.zeros(0, dtype=np.int64)
        sources = (cb[rows], np.concatenate(blk.parts["src"]) if M else rows, cand_all[rows])
    return cands, X.astype(np.float32), sources


def sources_of(cands_sources, n_users: int) -> list[dict[str, np.ndarray]]:
    """Per customer: source name -> candidates in the source's order, from `features_block`'s sources triple."""
    sb, ss, si = cands_sources
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n_users)]
    for b, s, i in zip(sb.tolist(), ss.tolist(), si.tolist()):
        out[b].setdefault(SOURCES[s], []).append(i)
    return [{k: np.asarray(v, dtype=np.int64) for k, v in d.items()} for d in out]
