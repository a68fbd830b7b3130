"""The hybrid's training windows: past windows of the log whose purchases label the candidates built at their
start (the same feature path as serving), cached per data object, and the ranker fitted on them."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fashionrec.recommend.base import RecData
from fashionrec.recommend.hybrid.block import features_block
from fashionrec.recommend.hybrid.rankers import (
    _blocks_of,
    _buckets_from_counts,
    _count_buckets,
    _count_ranks,
    _cut_set,
    _cut_to_sizes,
    _describe_buckets,
    _fit_buckets,
    choose_source_sizes,
    fit_lightgbm,
)
from fashionrec.recommend.hybrid.schema import BLOCK, SOURCES, WINDOW_CACHE_ROWS, _one_thread

log = logging.getLogger(__name__)
_WINDOW_CACHE: dict = {}


def candidate_key(model) -> tuple:
    return (
        model.label_days,
        model.n_repurchase,
        model.n_same_product,
        model.n_pairs,
        model.n_pop_decay,
        model.n_pop_week,
        model.n_pop_month,
        model.n_age_pop,
        model.n_dept_pop,
        model.n_new_colour,
        model.n_visual,
        model.n_new_arrival,
        model.arrival_pool,
        model.pair_days,
        model.recent_items,
        model._needs_als(),
        model._needed_features(training=True),
        model.max_train_users,
        model.seed,
        getattr(model, "use_taste", False),
        getattr(model, "n_taste", 0),
        getattr(model, "taste_feature", False),
    )


def window(model, data: RecData, t: pd.Timestamp, rng):
    """Training examples of one past window; cached per data object, so that rankers compared on the same
    windows (evaluation, tuning) pay for candidates and features once."""
    key = (id(data), str(t), candidate_key(model))
    if _WINDOW_CACHE.get("data") is not data:
        _WINDOW_CACHE.clear()
        _WINDOW_CACHE["data"] = data
    if key not in _WINDOW_CACHE:
        res = window_uncached(model, data, t, rng)
        n_rows = sum(len(y) for y in res[1])
        used = sum(sum(len(y) for y in v[1]) for k_, v in _WINDOW_CACHE.items() if k_ != "data")
        if used + n_rows > WINDOW_CACHE_ROWS:  # a big log: memory first, windows are rebuilt when asked again
            return res
        _WINDOW_CACHE[key] = res + (list(model._last_window_truth),)
    *res, truth = _WINDOW_CACHE[key]
    model._last_window_truth = truth
    return tuple(res)


def window_uncached(model, data: RecData, t: pd.Timestamp, rng):
    st = model._state(data, t)
    c = data.coded()  # the label window [t, t + label_days): a slice of the time-ordered coded log
    p0, p1 = data.before(t), data.before(t + pd.Timedelta(days=model.label_days))
    truth: dict = {}
    ids = data.user_ids
    for u, j in zip(c["user"][p0:p1].tolist(), c["item"][p0:p1].tolist()):
        truth.setdefault(ids[u], set()).add(j)
    users = sorted(truth)
    if len(users) > model.max_train_users:
        users = list(rng.choice(users, model.max_train_users, replace=False))
    Xs, ys, groups, n_true, src_hits = [], [], [], 0, {s: 0 for s in SOURCES}
    model._last_window_truth = []
    n = data.n_items
    for b0 in range(0, len(users), BLOCK):  # the feature path of serving, a block of customers at a time
        part = users[b0 : b0 + BLOCK]
        with _one_thread():
            cands, Xb, (sb, ss, si) = features_block(
                model, st, part, want_sources=True, needed=model._needed_features(training=True)
            )
        tk = np.sort(np.array([b * n + j for b, u in enumerate(part) for j in truth[u]], dtype=np.int64))
        hit = np.isin(sb * n + si, tk)
        for k, c in zip(*np.unique(ss[hit], return_counts=True)):
            src_hits[SOURCES[int(k)]] += int(c)
        o = 0
        for u, cand in zip(part, cands):
            tr = truth[u]
            n_true += len(tr)
            X = Xb[o : o + len(cand)]
            o += len(cand)
            if len(cand):
                Xs.append(X)
                ys.append(np.fromiter((c in tr for c in cand), dtype=np.int8, count=len(cand)))
                groups.append(len(cand))
                model._last_window_truth.append(len(tr))
    return Xs, ys, groups, n_true, src_hits


def window_times(model, data: RecData, now: pd.Timestamp) -> list[pd.Timestamp]:
    """Starts of the training windows, newest first: `n_windows` windows (None: as many as the log holds)
    `window_step_days` apart, each labelled by the `label_days` after it, none starting at or before the first event
    of the log."""
    ts_log = data.coded()["ts"]  # in time order: the first event is the oldest
    if not len(ts_log):
        return []
    first = pd.Timestamp(ts_log[0])
    out = []
    n = model.n_windows if model.n_windows is not None else 1 + int((now - first).days // model.window_step_days)
    for w in range(n):
        t = now - pd.Timedelta(days=model.label_days + w * model.window_step_days)
        if t <= first:
            break
        out.append(t)
    return out


def _collect(model, data: RecData, starts: list, rng, stream: bool, auto_sizes: bool, bar) -> dict:
    """Read every training window once: bucket counts (streamed) or whole sets (LightGBM, logistic buckets), rank
    counts for `source_sizes='auto'`, and the statistics of `train_stats`."""
    acc = {"sets": [], "counts": {}, "rows": 0, "pos": 0, "times": []}
    acc["rank_rows"] = {s: np.zeros(0) for s in SOURCES}
    acc["rank_hits"] = {s: np.zeros(0) for s in SOURCES}
    stats = {"windows": [], "sources": {s: {"hits": 0} for s in SOURCES}}
    n_true_all = 0
    for t in starts:
        Xs, ys, groups, n_true, src_hits = window(model, data, t, rng)
        bar.update(1)
        if not Xs:
            continue
        acc["times"].append(t)
        if stream:  # no copy of the window's rows: counted block by block
            for Xb, yb in _blocks_of(Xs, ys):
                _count_buckets(Xb, yb, acc["counts"])
                if auto_sizes:
                    _count_ranks(Xb, yb, acc["rank_rows"], acc["rank_hits"])
            y = np.concatenate(ys)
        else:
            X, y = np.vstack(Xs), np.concatenate(ys)
            if auto_sizes:
                _count_ranks(X, y, acc["rank_rows"], acc["rank_hits"])
            acc["sets"].append((X, y, np.array(groups), np.array(model._last_window_truth)))
        del Xs
        n_true_all += n_true
        acc["rows"] += len(y)
        acc["pos"] += int(y.sum())
        for s in SOURCES:
            stats["sources"][s]["hits"] += src_hits[s]
        stats["windows"].append(
            {"start": str(t.date()), "users": len(groups), "rows": int(len(y)), "positives": int(y.sum())}
            | {"purchases": n_true}
        )
    for s in SOURCES:
        stats["sources"][s]["recall"] = stats["sources"][s]["hits"] / max(1, n_true_all)
    stats.update(rows=acc["rows"], positives=acc["pos"], candidate_recall=acc["pos"] / max(1, n_true_all))
    acc["stats"] = stats
    return acc


def _choose_sizes(model, data: RecData, acc: dict, rng, stream: bool) -> None:
    """`source_sizes='auto'`: each source cut to the size its hit rates earn, for the ranker and for serving. The
    ranker learns from the candidates serving will have: ranks past a source's size are blanked and rows left with
    no source dropped (windows come from the cache; a big log recomputes them)."""
    stats = acc["stats"]
    chosen = choose_source_sizes(acc["rank_rows"], acc["rank_hits"], model.max_sizes)
    for s in SOURCES:
        setattr(model, f"n_{s}", chosen[s]["size"])
    stats["source_sizes"] = chosen
    log.info(
        "hybrid source sizes (hit rate >= %.4f, the top-12 best sellers'): %s",
        chosen["_threshold"],
        ", ".join(f"{s} {chosen[s]['size']}/{chosen[s]['max']}" for s in SOURCES),
    )
    sizes = np.array([chosen[s]["size"] for s in SOURCES], dtype=float)
    if stream:
        acc["counts"], acc["rows"], acc["pos"] = {}, 0, 0
        for t in acc["times"]:
            Xs, ys, *_ = window(model, data, t, rng)
            for Xb, yb in _blocks_of(Xs, ys):
                Xm, ym, _ = _cut_to_sizes(Xb, yb, sizes)
                _count_buckets(Xm, ym, acc["counts"])
                acc["rows"] += len(ym)
                acc["pos"] += int(ym.sum())
    else:
        acc["sets"] = [_cut_set(st_, sizes) for st_ in acc["sets"]]
        acc["rows"] = sum(len(x[1]) for x in acc["sets"])
        acc["pos"] = sum(int(x[1].sum()) for x in acc["sets"])
    stats.update(rows_after_sizes=acc["rows"], positives_after_sizes=acc["pos"])


def fit_ranker(model, data: RecData, starts: list, rng, bar) -> None:
    """Learn the ranker on the training windows starting at `starts` (newest first): sets `model.buckets` or
    `model.booster`, and `train_stats`."""
    # The default ranker needs only each bucket's rows and purchases: counted window by window, so that the
    # training rows of all windows are never in memory at once (6 windows x 50k customers x ~200 candidates).
    stream = model.ranker_kind == "buckets" and model.bucket_combine != "logistic"
    auto_sizes = getattr(model, "source_sizes", "fixed") == "auto"
    if auto_sizes:  # the training windows see every source at its maximum (a refit starts from them again)
        for s, mx in model.max_sizes.items():
            setattr(model, f"n_{s}", mx)
    acc = _collect(model, data, starts, rng, stream, auto_sizes, bar)
    stats = model.train_stats = acc["stats"]
    log.info(
        "hybrid ranker training: %d rows, %d positives, candidate recall %.3f",
        acc["rows"],
        acc["pos"],
        stats["candidate_recall"],
    )
    if auto_sizes and acc["pos"]:
        _choose_sizes(model, data, acc, rng, stream)
    rows, pos, sets = acc["rows"], acc["pos"], acc["sets"]
    model.booster, model.best_iteration = None, 0
    model.buckets = None
    if pos >= 5 and model.ranker_kind == "buckets":
        if stream:
            model.buckets = _buckets_from_counts(acc["counts"], rows, pos, combine=model.bucket_combine)
        else:
            X = np.vstack([x[0] for x in sets])
            y = np.concatenate([x[1] for x in sets])
            model.buckets = _fit_buckets(X, y, combine=model.bucket_combine)
        stats["buckets"] = {f"{name}[{lo},{hi})": round(p, 5) for name, lo, hi, p in _describe_buckets(model.buckets)}
    if pos >= 5 and rows - pos >= 5 and model.ranker_kind in {"binary", "lambdarank"}:
        model.booster, model.best_iteration = fit_lightgbm(model, sets, stats)
