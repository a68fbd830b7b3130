"""The batch job (fashionrec.recommend.batch) and the hybrid's one feature path (a block of customers; one customer
is a block of one): known answers and independence of the block size, on a synthetic log built to produce ties
(duplicate photos, equal pair counts, equal sales)."""

import numpy as np
import pandas as pd
import pytest

from fashionrec.recommend.base import ItemFeatures, RecData


def _log(seed=0, n_users=160, n_products=70):
    """H&M-like: 10-digit ids, 1-4 colours per product, two taste groups, repeats and other colours, some
    customers without age, some photos duplicated (equal similarities), unsold items with photos."""
    rng = np.random.default_rng(seed)
    items, vecs, meta = [], [], []
    centres = rng.standard_normal((2, 16))
    for p in range(n_products):
        g = p % 2
        base = centres[g] + 0.6 * rng.standard_normal(16)
        for c in range(1 + p % 4):
            iid = f"0{100000 + p:06d}{c + 1:03d}"
            v = base + 0.2 * rng.standard_normal(16)
            if p % 9 == 0 and c == 1:
                v = vecs[-1].copy()  # a duplicate photo
            items.append(iid)
            vecs.append(v)
            meta.append(
                {
                    "article_id": iid,
                    "product_code": str(100000 + p),
                    "product_type_name": ["Dress", "Shoe", "Top"][p % 3],
                    "product_group_name": ["Garment", "Shoes"][g],
                    "colour_group_name": ["Black", "White", "Red", "Blue"][c],
                    "department_name": f"dept{p % 5}",
                    "index_group_name": ["Ladies", "Men"][g],
                    "garment_group_name": ["Jersey", "Knit"][p % 2],
                    "graphical_appearance_name": "Solid",
                }
            )
    meta = pd.DataFrame(meta).set_index("article_id")
    t0 = pd.Timestamp("2020-01-01")
    rows = []
    sold = [i for j, i in enumerate(items) if j % 7 != 3]  # every 7th item is never sold
    for u in range(n_users):
        g = u % 2
        pool = [i for i in sold if int(i[1:7]) % 2 == g]
        n = int(rng.integers(1, 14))
        bought = []
        for _ in range(n):
            day = int(rng.integers(0, 120))
            if bought and rng.random() < 0.2:
                it = bought[int(rng.integers(len(bought)))]
            else:
                it = (
                    pool[int(min(len(pool) - 1, rng.zipf(1.3) - 1))]
                    if rng.random() < 0.6
                    else pool[int(rng.integers(len(pool)))]
                )
            bought.append(it)
            rows.append((f"c{u:04d}", it, t0 + pd.Timedelta(days=day), 1.0, float(rng.choice([0.01, 0.02, 0.03]))))
    ev = pd.DataFrame(rows, columns=["user", "item", "timestamp", "weight", "price"]).sort_values(
        "timestamp", kind="stable"
    )
    ages = pd.DataFrame(
        {"age": [np.nan if u % 11 == 0 else float(20 + (u * 7) % 45) for u in range(n_users)]},
        index=pd.Index([f"c{u:04d}" for u in range(n_users)], name="customer_id"),
    )
    feats = ItemFeatures(items, np.asarray(vecs, dtype=np.float32))
    bought_meta = meta[meta.index.isin(set(ev["item"]))]
    pred = meta.drop(columns=["product_code"])
    return RecData(
        ev.reset_index(drop=True), items, image_features=feats, metadata=bought_meta, predicted=pred, users=ages
    )


@pytest.fixture(scope="module")
def hybrid():
    from fashionrec.recommend import create_recommender

    return create_recommender("hybrid").fit(_log())  # default settings: the ones the identity is promised for


def _users(model):
    return list(model.data.user_ids) + ["never-seen", "c0011"]


def _rows_of(hybrid, st, users, **kw):
    cands, X, src = hybrid._features_block(st, users, **kw)
    o, out = 0, []
    for c in cands:
        out.append((c, X[o : o + len(c)]))
        o += len(c)
    assert o == len(X)
    return out, src


def _same(a, b):
    return a.shape == b.shape and ((a == b) | (np.isnan(a) & np.isnan(b))).all()


def test_a_customer_is_a_block_of_one(hybrid):
    """The rows of a customer do not depend on the block it is built in (one customer, a few, all of them)."""
    st = hybrid.state
    users = _users(hybrid)
    whole, _ = _rows_of(hybrid, st, users)
    for bs in (1, 7):
        for b in range(0, len(users), bs):
            part, _ = _rows_of(hybrid, st, users[b : b + bs])
            for (c, X), (cw, Xw) in zip(part, whole[b : b + bs]):
                assert np.array_equal(c, cw) and _same(X, Xw)


def test_block_rows_known_answers(hybrid):
    """Own-purchase, product and share columns against values computed here from the raw log: repurchase ranks are
    the newest-first distinct purchases, n_own / own_days the count of and days since the customer's purchases of
    the item, n_code / code_days the same over the item's product (first 7 digits of the id), share_* the share of
    the customer's purchases with the item's department."""
    from fashionrec.recommend.hybrid import FEATURES

    st, data = hybrid.state, hybrid.data
    col = {f: j for j, f in enumerate(FEATURES)}
    t = np.datetime64(st.t, "ns")
    desc = data.describe(st.t, ["department_name"])["department_name"].to_numpy()
    users = _users(hybrid)
    rows, _ = _rows_of(hybrid, st, users)
    checked = 0
    for u, (cand, X) in zip(users, rows):
        ev = data.events[(data.events["user"] == u) & (data.events["timestamp"] < st.t)]
        items = [data.item_index[i] for i in ev["item"]]
        days = [(t - np.datetime64(x, "ns")) / np.timedelta64(1, "D") for x in ev["timestamp"]]
        newest = []
        for i, _ in sorted(zip(items, range(len(items))), key=lambda p: (days[p[1]], -p[1])):
            if i not in newest:
                newest.append(i)
        got = {
            int(c): X[r, col["rank_repurchase"]]
            for r, c in enumerate(cand)
            if not np.isnan(X[r, col["rank_repurchase"]])
        }
        assert got == {i: float(r) for r, i in enumerate(newest[: hybrid.n_repurchase])}, u
        for r, c in enumerate(cand.tolist()):
            own = [d for i, d in zip(items, days) if i == c]
            assert X[r, col["n_own"]] == len(own)
            assert (np.isnan(X[r, col["own_days"]]) and not own) or np.isclose(X[r, col["own_days"]], min(own))
            prod = [d for i, d in zip(items, days) if data.item_ids[i][:7] == data.item_ids[c][:7]]
            assert X[r, col["n_code"]] == len(prod)
            assert (np.isnan(X[r, col["code_days"]]) and not prod) or np.isclose(X[r, col["code_days"]], min(prod))
            checked += bool(own) + bool(prod)
    assert checked > 100
    full, _ = _rows_of(hybrid, st, users[:40], needed=None)
    for u, (cand, X) in zip(users[:40], full):
        ev = data.events[(data.events["user"] == u) & (data.events["timestamp"] < st.t)]
        deps = [desc[data.item_index[i]] for i in ev["item"]]
        want = [np.mean([d == desc[c] for d in deps]) if deps and desc[c] != "unknown" else 0.0 for c in cand]
        assert np.allclose(X[:, col["share_department_name"]], want, atol=1e-6), u


def test_block_lists_known_order(hybrid):
    """Lists do not depend on the block size, the single query gives the same list, and the customer's purchases of
    the last 90 days come first (own_first)."""
    users = _users(hybrid)
    ref = hybrid.recommend_many(users, 12)
    st, data = hybrid.state, hybrid.data
    for bs in (1, 7, 500):
        got = [lst for b in range(0, len(users), bs) for lst in hybrid.recommend_block(users[b : b + bs], 12)]
        assert got == [ref[u] for u in users]
    n_own_first = 0
    for u in users:  # and the single query the server answers
        one = [r.item for r in hybrid.recommend(u, 12, explain=False)]
        assert ref[u][: len(one)] == one
        ev = data.events[(data.events["user"] == u) & (data.events["timestamp"] < st.t)]
        recent = set(ev.loc[ev["timestamp"] >= st.t - pd.Timedelta(days=90), "item"])
        if 0 < len(recent) <= 12 - hybrid.arrival_slots:  # the places before those kept for never-sold items
            assert set(ref[u][: len(recent)]) == recent, u
            n_own_first += 1
    assert n_own_first > 50


def test_training_windows_are_block_rows_with_their_labels(hybrid):
    """The ranker learns from the rows the feature path gives the window's buyers at the window's start (the
    columns the bucket ranker does not read are NaN), labelled by their purchases in the window; the source hits
    are the purchases each source holds."""
    from fashionrec.recommend import hybrid as H
    from fashionrec.recommend.hybrid.block import sources_of

    data = hybrid.data
    t = pd.Timestamp(data.now).normalize() + pd.Timedelta(days=1) - pd.Timedelta(days=hybrid.label_days)
    Xs, ys, groups, n_true, hits = H.training.window_uncached(hybrid, data, t, np.random.default_rng(0))
    st = hybrid._state(data, t)
    lab = data.events[
        (data.events["timestamp"] >= t) & (data.events["timestamp"] < t + pd.Timedelta(days=hybrid.label_days))
    ]
    truth = {}
    for u, j in zip(lab["user"], lab["item"].map(data.item_index)):
        truth.setdefault(u, set()).add(int(j))
    buyers = sorted(truth)
    needed = hybrid._needed_features(training=True)
    rows, triple = _rows_of(hybrid, st, buyers, want_sources=True, needed=needed)
    ref_hits = {s: 0 for s in H.SOURCES}
    for u, src in zip(buyers, sources_of(triple, len(buyers))):
        for s, v in src.items():
            ref_hits[s] += len(truth[u] & set(v.tolist()))
    kept = [(u, c, X) for u, (c, X) in zip(buyers, rows) if len(c)]
    assert len(Xs) == len(kept) == len(groups) and n_true == sum(len(v) for v in truth.values())
    for (u, c, X), Xw, yw in zip(kept, Xs, ys):
        assert _same(X, Xw) and yw.tolist() == [int(j in truth[u]) for j in c.tolist()]
    cols = [j for j, f in enumerate(H.FEATURES) if f in needed]
    rest = [j for j in range(len(H.FEATURES)) if j not in cols]
    assert np.isnan(np.vstack(Xs)[:, rest]).all() and not np.isnan(np.vstack(Xs)[:, cols]).all()
    assert hits == ref_hits and sum(hits.values()) > 0
    assert sum(int(y.sum()) for y in ys) == sum(len(truth[u] & set(c.tolist())) for u, c, _ in kept)


def test_visual_source_keeps_pandas_tie_order(hybrid):
    """Equal similarities (duplicate photos) come out in the order pandas' sort_values gives."""
    for j in range(hybrid.data.n_items):
        recent = np.array([j, (j + 3) % hybrid.data.n_items, (j + 8) % hybrid.data.n_items])
        nb = [hybrid._neighbours(int(x)) for x in recent]
        ids = np.concatenate([x[0] for x in nb])
        sims = np.concatenate([x[1] for x in nb])
        ref = pd.Series(sims).groupby(ids).max().sort_values(ascending=False).index.to_numpy()[: hybrid.n_visual]
        assert np.array_equal(hybrid._visual_source(recent), ref)


def _read(path):
    return pd.read_csv(path, dtype=str)


def test_recommend_all_writes_every_customer_in_order(hybrid, tmp_path):
    from fashionrec.recommend.batch import popular_fill, recommend_all

    users = _users(hybrid)
    out = tmp_path / "recs.csv"
    timings = {}
    recommend_all(hybrid, users, 12, out, block_size=13, progress=False, timings=timings)
    df = _read(out)
    assert df["customer_id"].tolist() == users
    ref = {u: hybrid.recommend_block([u], 12)[0] for u in users}  # each customer a block of one
    fill = popular_fill(hybrid, 12)
    for u, pred in zip(df["customer_id"], df["prediction"]):
        items = pred.split()
        assert len(items) == 12 == len(set(items))
        short = ref[u]
        assert items[: len(short)] == short[:12]
        assert all(i in fill for i in items[len(short) :])
    assert set(timings) >= {"candidates", "ranking", "write"}
    assert [p.name for p in tmp_path.iterdir()] == ["recs.csv"]  # no temporary file left
    out2 = tmp_path / "recs2.csv"
    recommend_all(hybrid, users, 12, out2, block_size=1000, progress=False)
    assert out.read_bytes() == out2.read_bytes()


def test_recommend_all_on_a_model_with_the_default_block_api(hybrid, tmp_path):
    """A model that only implements `scores` gets the contract's `recommend_block` (per-customer lists)."""
    from fashionrec.recommend import create_recommender
    from fashionrec.recommend.base import Recommender
    from fashionrec.recommend.batch import recommend_all

    rep = create_recommender("repurchase").fit(hybrid.data)
    assert type(rep).recommend_block is Recommender.recommend_block
    users = _users(hybrid)[:20]
    recommend_all(rep, users, 5, tmp_path / "r.csv", block_size=6, progress=False)
    df = _read(tmp_path / "r.csv")
    assert [p.split() for p in df["prediction"]] == [
        [r.item for r in rep.recommend(u, 5, explain=False)] for u in users
    ]


def test_a_failed_job_leaves_no_output(hybrid, tmp_path):
    from fashionrec.recommend.batch import recommend_all

    class Broken:
        name = "broken"
        data = hybrid.data

        def recommend_block(self, users, k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        recommend_all(Broken(), ["a", "b"], 3, tmp_path / "x.csv", fill=["i"], progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        recommend_all(hybrid, ["a"], 0, tmp_path / "x.csv")


@pytest.mark.parametrize("name", ["visual", "content"])
def test_vector_models_block_path(name, hybrid, tmp_path):
    """Below the exact-index size the block path is the per-customer one; the ANN path (forced) finds nearly the
    same top-12 from a shortlist of nearest items, never an item without a vector, never for a customer with none."""
    from fashionrec.recommend import create_recommender
    from fashionrec.recommend.batch import recommend_all

    model = create_recommender(name).fit(hybrid.data)
    users = _users(hybrid)
    dense = [[r.item for r in model.recommend(u, 12, explain=False)] for u in users]
    assert model.recommend_block(users, 12) == dense
    ann = model.recommend_block(users, 12, ann=True)
    overlap = [len(set(a) & set(d)) / len(d) for a, d in zip(ann, dense) if d]
    assert np.mean(overlap) >= 0.9
    assert [bool(a) for a in ann] == [bool(d) for d in dense]
    has = dict(zip(model.data.item_ids, model.has))
    assert all(has[i] for a in ann for i in a)
    recommend_all(model, users, 12, tmp_path / "v.csv", block_size=9, progress=False)
    assert _read(tmp_path / "v.csv")["prediction"].str.split().str.len().eq(12).all()


def test_streamed_bucket_counts_give_the_same_ranker(hybrid):
    """The default ranker learned window by window from counts equals the one learned from all rows at once."""
    from fashionrec.recommend import hybrid as H
    from fashionrec.recommend.hybrid.rankers import _buckets_from_counts, _count_buckets, _fit_buckets

    rng = np.random.default_rng(1)
    X = np.full((400, len(H.FEATURES)), np.nan, dtype=np.float32)
    X[:, H.FEATURES.index("own_days")] = rng.choice([np.nan, 3, 20, 100], 400)
    X[:, H.FEATURES.index("n_own")] = np.where(np.isnan(X[:, H.FEATURES.index("own_days")]), 0, 1)
    X[:, H.FEATURES.index("rank_pop_week")] = rng.integers(0, 30, 400)
    X[:, H.FEATURES.index("vis_max")] = rng.random(400)
    y = (rng.random(400) < 0.1).astype(np.int8)
    counts = {}
    _count_buckets(X[:150], y[:150], counts)
    _count_buckets(X[150:], y[150:], counts)
    assert _buckets_from_counts(counts, 400, int(y.sum())) == _fit_buckets(X, y, combine="noisy_or")
    assert hybrid.buckets is not None and "_lr" not in hybrid.buckets


def test_als_is_fitted_only_for_the_rankers_that_read_it(hybrid):
    from fashionrec.recommend import create_recommender

    assert not hybrid._needs_als() and hybrid.state.als_items is None  # buckets: the feature is never read
    assert create_recommender("hybrid", ranker="binary")._needs_als()
    assert not create_recommender("hybrid", ranker="binary", use_als=False)._needs_als()


def test_bought_together_band_join_equals_the_self_merge():
    """The co-purchase counts equal those of the plain self-merge on the customer (the reference), ties and repeats
    included."""
    import scipy.sparse as sp

    from fashionrec.recommend.hybrid import _co_purchases

    rng = np.random.default_rng(5)
    n, rows = 40, 3000
    users = rng.choice([f"u{j}" for j in range(60)], rows)
    idx = rng.integers(0, n, rows)
    ts = (np.datetime64("2020-01-01") + rng.integers(0, 90, rows).astype("timedelta64[D]")).astype("datetime64[ns]")
    got = _co_purchases(users, idx, ts, n, 14)
    df = pd.DataFrame({"u": users, "i": idx, "d": ts.astype("datetime64[D]").astype(np.int64)}).drop_duplicates()
    m = df.merge(df, on="u")
    m = m[(m["i_x"] != m["i_y"]) & ((m["d_x"] - m["d_y"]).abs() <= 14)]
    ref = sp.csr_matrix((np.ones(len(m), dtype=np.float32), (m["i_x"].to_numpy(), m["i_y"].to_numpy())), shape=(n, n))
    assert ref.nnz > 0 and (got != ref).nnz == 0 and got.dtype == ref.dtype


def test_window_blocks_are_read_without_copies(hybrid):
    from fashionrec.recommend.hybrid import _blocks_of

    cands, X, _ = hybrid._features_block(hybrid.state, _users(hybrid)[:30])
    views, o = [], 0
    for c in cands:
        views.append(X[o : o + len(c)])
        o += len(c)
    ys = [np.arange(len(v)) % 2 for v in views]
    ((Xb, yb),) = list(_blocks_of(views, ys))
    assert Xb is X and np.array_equal(yb, np.concatenate(ys))
    parts = list(_blocks_of(views[:5] + [np.ones((3, X.shape[1]), np.float32)], ys[:5] + [np.zeros(3)]))
    assert [len(p[0]) for p in parts] == [sum(len(v) for v in views[:5]), 3]


def test_coded_log_prefix_is_the_events_before_t():
    """`RecData.coded()` + `before(t)`: the integer-coded log in time order; its prefix before t holds exactly the
    events of `events[timestamp < t]` (an unsorted log too), and `Histories` gives each user's events in time order."""
    from fashionrec.recommend.base import Histories, RecData

    rng = np.random.default_rng(3)
    n = 400
    ev = pd.DataFrame(
        {
            "user": rng.choice([f"u{j:02d}" for j in range(30)], n),
            "item": rng.choice([f"i{j:02d}" for j in range(50)], n),
            "timestamp": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 90, n), unit="D"),
            "weight": rng.integers(1, 4, n).astype(float),
        }
    )  # not in time order
    data = RecData(ev, [f"i{j:02d}" for j in range(50)])
    c = data.coded()
    assert (np.diff(c["ts"].astype(np.int64)) >= 0).all()
    for t in ["2019-12-01", "2020-01-01", "2020-02-10", "2020-03-30", "2021-01-01"]:
        p = data.before(t)
        ref = ev[ev["timestamp"] < pd.Timestamp(t)]
        got = pd.DataFrame(
            {
                "user": np.asarray(data.user_ids, dtype=object)[c["user"][:p]],
                "item": np.asarray(data.item_ids, dtype=object)[c["item"][:p]],
                "timestamp": c["ts"][:p],
                "weight": c["weight"][:p],
            }
        )
        key = ["user", "item", "timestamp", "weight"]
        pd.testing.assert_frame_equal(
            got.sort_values(key).reset_index(drop=True),
            ref[key].sort_values(key).reset_index(drop=True),
            check_dtype=False,
        )
        assert data.bought_before(t).sum() == ref["item"].nunique()
    # histories: every user with events, each in time order; unknown users and users without events are absent
    h = data._hist
    assert len(h) == ev["user"].nunique() and sorted(h) == sorted(ev["user"].unique())
    for u, g in ev.groupby("user", sort=False):  # in time order (log order among equal times), as history() says
        g = g.sort_values("timestamp", kind="stable")
        items, ts = data.history(u)
        assert items.tolist() == [data.item_index[i] for i in g["item"]] and (ts == g["timestamp"].to_numpy()).all()
        assert len(h[u]) == 3 and np.isnan(h[u][2]).all()  # (items, times, prices): this log has no price column
        t = pd.Timestamp("2020-02-15")  # a state's histories: each user's first events, up to t, sharing the arrays
        hu = h.upto(np.bincount(c["user"][: data.before(t)], minlength=len(data.user_ids)))
        before = g[g["timestamp"] < t]
        assert (u in hu) == (len(before) > 0)
        if len(before):
            assert hu[u][0].tolist() == [data.item_index[i] for i in before["item"]]
            assert np.shares_memory(hu[u][0], h[u][0])
    assert "nobody" not in h and h.get("nobody") is None
    codes = np.array([0, 2, 2, 0])
    h2 = Histories(["a", "b", "c"], codes, (np.arange(4), None))
    assert "b" not in h2 and h2["a"][0].tolist() == [0, 3] and h2["c"][1] is None and list(h2) == ["a", "c"]


def test_co_purchases_read_from_the_newest_days_equal_the_whole_log():
    """On a log in time order, the bought-together counts built from the newest days only (read back until they
    hold `max_rows` distinct rows) equal those of the whole log de-duplicated and cut to its newest `max_rows` rows,
    boundary-day ties included; a log out of time order takes the whole-log path and gives the same counts."""
    from fashionrec.recommend.hybrid import _co_purchases

    rng = np.random.default_rng(5)
    m = 5000
    d = np.sort(rng.integers(0, 120, m))
    ts = (np.datetime64("2020-01-01", "D") + d).astype("datetime64[ns]")
    users, idx = rng.integers(0, 300, m), rng.integers(0, 80, m)
    users[-50:], idx[-50:] = users[-100:-50], idx[-100:-50]  # duplicates near the end
    full = pd.DataFrame({"u": users, "i": idx, "d": d}).drop_duplicates()
    for max_rows in (300, 700, 1500, 4000, 10_000):
        keep = np.zeros(m, dtype=bool)
        keep[full.nlargest(max_rows, "d").index.to_numpy()] = True
        ref = _co_purchases(users[keep], idx[keep], ts[keep], 80, 14, max_rows=10**9)
        fast = _co_purchases(users, idx, ts, 80, 14, max_rows=max_rows)
        assert fast.shape == ref.shape and fast.nnz > 0 and (fast != ref).nnz == 0, max_rows
    shuffled = rng.permutation(m)
    ref = _co_purchases(users[shuffled], idx[shuffled], ts[shuffled], 80, 14, max_rows=10**9)
    assert (_co_purchases(users, idx, ts, 80, 14, max_rows=10**9) != ref).nnz == 0


def test_workers_auto_uses_every_core_only_for_big_shops(monkeypatch):
    import argparse
    import os

    from fashionrec.cli.recommend import _workers
    from fashionrec.recommend.batch import AUTO_WORKERS_FROM, resolve_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)  # 3 cores may be used
    assert resolve_workers("auto", AUTO_WORKERS_FROM - 1) == 1
    assert resolve_workers("auto", AUTO_WORKERS_FROM) == 3
    assert resolve_workers("auto", 10 * AUTO_WORKERS_FROM) == 3
    assert resolve_workers(3, 10) == 3 and resolve_workers("2", 10) == 2
    for bad in (0, -1, "x", None):
        with pytest.raises(ValueError, match="positive integer or 'auto'"):
            resolve_workers(bad, 10)
    assert _workers("auto") == "auto" and _workers("4") == 4
    with pytest.raises(argparse.ArgumentTypeError):
        _workers("0")
