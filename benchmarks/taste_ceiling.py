"""How far can the signals this log carries rank a customer's new arrivals and pick their colour?

    python benchmarks/taste_ceiling.py --data ../shared/data/hm [--adapted-features F.npz] [--windows 4]

The taste task of `fashionrec evaluate` (`fashionrec.evaluation.taste`: the same windows, pools, customers and
colour picks), answered by simple scorers, each one signal at a time, so that what the photos (and the rest of the
log) can give is seen apart from any model:

- the mean cosine between the item's image features and the customer's past purchases: the backbone the shop's
  features use, then variants (recency weighted, whitened PCA, the taste of the customer's purchase neighbours
  mixed in, an adapted folder's features from `fashionrec embed --backbone MODEL_DIR`, the catalog's attribute
  columns where a row exists);
- scorers that *read the test window*, which no model may: the pool's sales in the window (popularity known in
  advance) and a match of each item's price (median over the whole log, window included) to the customer's usual
  price. They bound what knowing each arrival's success or price beforehand could add;
- for the colour pick: sales before the window (all time, last 7 days), the newest colour variant, a LightGBM
  ranker trained on the colour picks of older windows (availability, recency, variant order and colour likeness to
  the customer's purchases; leak-free: only windows before every scored one), and the window's own sales (peeks).

Figures: mean AUC over customer-windows with a 95% bootstrap interval (new products and new colours apart), and
colour pick top-1 over the picks. Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import numpy as np
import pandas as pd


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


class Window:
    """One window's task with what every scorer needs: histories (item positions) and the items to score."""

    def __init__(self, split, task, index):
        self.split, self.task = split, task
        tr = split.train
        self.end = tr["timestamp"].max()
        last = tr.groupby(["user", "item"])["timestamp"].max().reset_index()
        last["pos"] = last["item"].map(index)
        last["age"] = (self.end - last["timestamp"]).dt.days
        self.hist, self.age = {}, {}
        for u, d in last.groupby("user"):
            self.hist[u] = d["pos"].to_numpy(np.int64)
            self.age[u] = d["age"].to_numpy(float)
        self.users = sorted(set(task.users) | {u for u, _, _ in task.picks})
        self.cols = np.unique(np.concatenate([task.pool] + [c for _, _, c in task.picks])).astype(np.int64)


def cosine_scorer(F: np.ndarray, half_life: float | None = None, neighbours: float = 0.0):
    """Mean cosine of each item to the customer's purchases; `half_life` (days) weights recent purchases more;
    `neighbours`: weight of the mean profile of the 50 customers who share most products with this one."""

    def score(w: Window, index, items) -> dict:
        prof = {}
        for u, h in w.hist.items():
            if half_life:
                wt = 0.5 ** (w.age[u] / half_life)
                prof[u] = (wt[:, None] * F[h]).sum(0) / wt.sum()
            else:
                prof[u] = F[h].mean(0)
        if neighbours:
            import scipy.sparse as sp

            from fashionrec.data.products import product_code_of

            us = list(w.hist)
            row = {u: r for r, u in enumerate(us)}
            codes = pd.factorize(pd.Series([product_code_of(i) for i in items]))[0]
            r_, c_ = zip(*[(row[u], codes[j]) for u, h in w.hist.items() for j in h])
            M = sp.csr_matrix((np.ones(len(r_)), (r_, c_)))
            M.data[:] = 1
            M = sp.diags(1 / np.sqrt(np.asarray(M.sum(1)).ravel())) @ M
            P = np.vstack([prof[u] for u in us])
        out = {}
        for u in w.users:
            q = prof[u]
            if neighbours:
                s = np.asarray((M @ M[row[u]].T).todense()).ravel()
                s[row[u]] = -1
                nb = np.argsort(-s)[:50]
                wt = np.maximum(s[nb], 0)
                q = q + neighbours * (wt[:, None] * P[nb]).sum(0) / max(wt.sum(), 1e-9)
            full = np.zeros(len(items), np.float32)
            full[w.cols] = F[w.cols] @ q
            out[u] = full
        return out

    return score


def attribute_scorer(meta: pd.DataFrame, columns: list[str]):
    """Naive Bayes over catalog attribute columns: log P(value | customer's purchases) / P(value | pool)."""
    codes = {c: pd.Categorical(meta[c]).codes + 1 for c in columns if c in meta.columns}

    def score(w: Window, index, items) -> dict:
        out = {u: np.zeros(len(items)) for u in w.users}
        for k in codes.values():
            K = int(k.max()) + 1
            prior = np.bincount(k[w.task.pool], minlength=K) + 1.0
            prior /= prior.sum()
            for u in w.users:
                cnt = np.bincount(k[w.hist[u]], minlength=K)
                out[u] += np.log(((cnt + K * prior) / (len(w.hist[u]) + K)) / prior)[k]
        return out

    return score


def window_sales_scorer(w: Window, index, items) -> dict:
    """Peeks: every item's sales in the test window."""
    s = np.zeros(len(items))
    for i, c in w.split.test["item"].value_counts().items():
        if i in index:
            s[index[i]] = c
    return {u: s for u in w.users}


def sum_scorer(*parts):
    """The sum of several scorers' scores, each times its weight: (weight, scorer, transform)."""

    def score(w: Window, index, items) -> dict:
        out = {}
        for weight, sc, f in parts:
            for u, s in sc(w, index, items).items():
                out[u] = out.get(u, 0) + weight * f(s)
        return out

    return score


def price_scorer(events: pd.DataFrame):
    """Peeks: the item's median price over the whole log against the customer's mean log price before the window."""

    def score(w: Window, index, items) -> dict:
        lp = np.full(len(items), np.nan)
        for i, p in events.groupby("item")["price"].median().items():
            if i in index:
                lp[index[i]] = np.log(p)
        tr = w.split.train
        st = tr.assign(lp=np.log(tr["price"])).groupby("user")["lp"].agg(["mean", "std"])
        out = {}
        for u in w.users:
            m, sd = st.loc[u, "mean"], st.loc[u, "std"]
            sd = np.sqrt((0.0 if not np.isfinite(sd) else sd) ** 2 + 0.3**2)
            out[u] = np.nan_to_num(-(((lp - m) / sd) ** 2), nan=-1e9)
        return out

    return score


class _Scored:
    """One window's scores of a scorer, asked for like a model's (`Recommender.score_items`), so that
    `evaluation.taste.score_task` scores them exactly as `fashionrec evaluate` scores a model."""

    def __init__(self, scores: dict):
        self.scores = scores

    def score_items(self, users, items) -> np.ndarray:
        return np.vstack([self.scores[u][items] for u in users]) if len(users) else np.zeros((0, len(items)))


def taste_figures(windows: list[Window], scorer, index, items) -> dict:
    from fashionrec.evaluation.metrics import bootstrap_ci
    from fashionrec.evaluation.taste import nanmean, score_task

    auc, newp, newc, pick = [], [], [], []
    for w in windows:
        r = score_task(_Scored(scorer(w, index, items)), w.task)
        auc += r.auc
        newp += r.auc_new_product
        newc += r.auc_new_colour
        pick += r.pick
    a = np.array(auc)
    lo, hi = bootstrap_ci(a[~np.isnan(a)])
    return {
        "auc": nanmean(a),
        "ci": (lo, hi),
        "new_product": nanmean(newp),
        "new_colour": nanmean(newc),
        "pick": nanmean(pick),
    }


def pick_features(w: Window, picks, index, items, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per (pick, candidate colour): availability and recency of sales, variant order, colour likeness."""
    from fashionrec.data.products import product_code_of

    tr = w.split.train
    g = tr.groupby("item")["timestamp"].agg(["min", "max", "size"])
    r7 = tr[tr["timestamp"] > w.end - pd.Timedelta(days=7)]["item"].value_counts()
    r28 = tr[tr["timestamp"] > w.end - pd.Timedelta(days=28)]["item"].value_counts()
    variant = np.array([int(i[-3:]) if i[-3:].isdigit() else 0 for i in items])
    rows, y, grp = [], [], []
    for u, item, cand in picks:
        h = w.hist[u]
        hc = C[h].mean(0)
        own = [j for j in h if product_code_of(items[j]) == product_code_of(items[item])]
        oc = C[own].mean(0) if own else hc
        vr = np.argsort(np.argsort(variant[cand])) / max(len(cand) - 1, 1)
        for k, j in enumerate(cand):
            it = items[j]
            sold = it in g.index
            rows.append(
                [
                    sold,
                    np.log1p(g.at[it, "size"]) if sold else 0.0,
                    np.log1p(r7.get(it, 0)),
                    np.log1p(r28.get(it, 0)),
                    (w.end - g.at[it, "max"]).days if sold else -1,
                    (w.end - g.at[it, "min"]).days if sold else -1,
                    vr[k],
                    float(C[j] @ hc),
                    float(C[j] @ oc),
                ]
            )
            y.append(int(j == item))
        grp.append(len(cand))
    return np.array(rows, float).reshape(-1, 9), np.array(y), np.array(grp, dtype=np.int64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--train-windows", type=int, default=16, help="older windows whose colour picks train the ranker")
    ap.add_argument("--adapted-features", default=None, help="an .npz from `fashionrec embed --backbone MODEL_DIR`")
    args = ap.parse_args(argv)
    import lightgbm as lgb

    from fashionrec.evaluation.protocol import window_splits
    from fashionrec.evaluation.taste import taste_task, top1_share
    from fashionrec.workflows.shop import Shop, rec_data

    t0 = time.time()
    shop = Shop.open(args.data, with_images=True, workspace=args.workspace, progress=False)
    items = list(shop.candidates)
    index = {i: j for j, i in enumerate(items)}
    events = shop.interactions.events
    V, has = shop.image_features.aligned(items)
    V = _norm(V.astype(np.float32))
    C, _ = shop.colour_features.aligned(items, normalize=False)
    C = _norm(C.astype(np.float32))
    splits = window_splits(events, args.windows + args.train_windows, 28)
    windows, older = [], []
    for n, split in enumerate(splits):
        if n < args.windows:
            task = taste_task(rec_data(shop, split.train), split.train, split.test, has)
        else:  # older windows: only their colour picks are used (to train the ranker)
            lite = types.SimpleNamespace(item_index=index, n_items=len(items), item_ids=items)
            task = taste_task(lite, split.train, split.test, has)
        (windows if n < args.windows else older).append(Window(split, task, index))
    n_cw = sum(len(w.task.users) for w in windows)
    n_picks = sum(len(w.task.picks) for w in windows)
    print(f"{n_cw} customer-windows, {n_picks} colour picks over {args.windows} windows ({time.time() - t0:.0f}s)")

    mu = V[has].mean(0)
    _, sv, vt = np.linalg.svd((V[has] - mu)[:: max(1, int(has.sum()) // 8000)], full_matrices=False)
    W64 = _norm(((V - mu) @ vt[:64].T) / sv[:64])
    scorers = {
        "image features, mean cosine to the customer's purchases": cosine_scorer(V),
        "  recency weighted (half-life 180 days)": cosine_scorer(V, half_life=180),
        "  whitened PCA, 64 dimensions": cosine_scorer(W64),
        "  + the customer's 50 purchase neighbours (weight 0.3)": cosine_scorer(V, neighbours=0.3),
        "garment colour descriptor, mean cosine": cosine_scorer(C),
    }
    if args.adapted_features:
        z = np.load(args.adapted_features, allow_pickle=True)
        pos = {i: k for k, i in enumerate(z["ids"].tolist())}
        A = np.zeros((len(items), z["features"].shape[1]), np.float32)
        for j, i in enumerate(items):
            if i in pos:
                A[j] = z["features"][pos[i]]
        scorers["adapted folder's features, mean cosine"] = cosine_scorer(_norm(A))
    attrs = [
        "index_group_name",
        "department_name",
        "section_name",
        "product_type_name",
        "garment_group_name",
        "colour_group_name",
        "perceived_colour_master_name",
        "graphical_appearance_name",
    ]
    meta = shop.catalog.metadata.reindex(pd.Index(items, dtype=object))
    covered = float(meta.iloc[np.concatenate([w.task.pool for w in windows])][attrs[0]].notna().mean())
    scorers[f"catalog attributes, naive Bayes (rows for {covered:.0%} of the pool)"] = attribute_scorer(meta, attrs)
    scorers["PEEKS: the item's sales in the window"] = window_sales_scorer
    scorers["PEEKS: image features (x10) + log(1 + the item's sales in the window)"] = sum_scorer(
        (10.0, cosine_scorer(V), lambda s: s), (1.0, window_sales_scorer, np.log1p)
    )
    scorers["PEEKS: price match (item's median price, window included)"] = price_scorer(events)
    print("| scorer | taste AUC [95% CI] | new products | new colours | colour pick |")
    print("|---|---|---|---|---|")
    for name, sc in scorers.items():
        t1 = time.time()
        f = taste_figures(windows, sc, index, items)
        print(
            f"| {name} | {f['auc']:.3f} [{f['ci'][0]:.3f}, {f['ci'][1]:.3f}] | {f['new_product']:.3f} | "
            f"{f['new_colour']:.3f} | {f['pick']:.3f} |  ({time.time() - t1:.0f}s)",
            flush=True,
        )

    # colour pick: simple orders and a ranker trained on older windows' picks
    chance = np.mean([1 / len(c) for w in windows for _, _, c in w.task.picks])
    data = [pick_features(w, w.task.picks, index, items, C) for w in windows]
    X, y, g = (np.concatenate(a) for a in zip(*data))
    tr = [pick_features(w, w.task.picks, index, items, C) for w in older if w.task.picks]
    Xt, yt, gt = (np.concatenate(a) for a in zip(*tr))
    ranker = lgb.LGBMRanker(
        objective="lambdarank", n_estimators=100, learning_rate=0.05, num_leaves=7, min_child_samples=20, verbose=-1
    ).fit(Xt, yt, group=gt)

    def top1(s: np.ndarray) -> float:
        out, o = [], 0
        for n in g:
            out.append(top1_share(s[o : o + n], int(np.flatnonzero(y[o : o + n])[0])))
            o += n
        return float(np.mean(out))

    peek = np.concatenate(
        [[w.split.test["item"].eq(items[j]).sum() for _, _, c in w.task.picks for j in c] for w in windows]
    ).astype(float)
    print(f"\ncolour pick top-1 over {len(g)} picks (chance {chance:.3f}):")
    for name, s in (
        ("sales before the window", X[:, 1]),
        ("sales in the last 7 days", X[:, 2]),
        ("newest colour variant", X[:, 6]),
        ("colour most like the customer's purchases", X[:, 7]),
        (f"LightGBM ranker on 9 features, trained on {len(gt)} picks of {len(tr)} older windows", ranker.predict(X)),
        ("PEEKS: sales in the window", peek),
    ):
        print(f"  {name}: {top1(s):.3f}")
    never_bought_recall(windows, V, has, index, items)
    print(f"({time.time() - t0:.0f}s)")
    return 0


def never_bought_recall(windows: list[Window], V: np.ndarray, has: np.ndarray, index, items, ks=(4, 8, 12, 20)):
    """Recall of the purchases of items never sold before the window (by every customer of the window; those
    without a history count as misses) in the k never-sold photos most like each customer's purchases."""
    hits, total = dict.fromkeys(ks, 0), 0
    for w in windows:
        tr, te = w.split.train, w.split.test
        sold = set(tr["item"].unique())
        pool = np.array([j for j in np.flatnonzero(has) if items[j] not in sold], dtype=np.int64)
        for u, bought in te.groupby("user")["item"].agg(set).items():
            new = {index[i] for i in bought if i not in sold and i in index}
            total += len([i for i in bought if i not in sold])
            if not new or u not in w.hist:
                continue
            order = pool[np.argsort(-(V[pool] @ V[w.hist[u]].mean(0)))]
            for k in ks:
                hits[k] += len(new & set(order[:k].tolist()))
    print(f"\nnever-bought recall of the k never-sold photos most like each customer's purchases ({total} purchases):")
    print("  " + ", ".join(f"k={k}: {hits[k] / max(total, 1):.4f}" for k in ks))


if __name__ == "__main__":
    sys.exit(main())
