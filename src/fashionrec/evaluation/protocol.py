"""Temporal evaluation of recommenders on a purchase log, leak-free and over several windows.

Each window: fit on events before its start, test on purchases in [start, start + test_days). Customers scored:
those who buy in the window (new customers included: they get an empty history). Results are pooled over all
(customer, window) pairs, with bootstrap intervals and a paired bootstrap against a baseline; breakdowns by warm
items, items never bought before the window, and new products.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.data.products import product_code_of
from fashionrec.evaluation.metrics import bootstrap_ci, per_user_scores


@dataclass
class TemporalSplit:
    train: pd.DataFrame
    test: pd.DataFrame
    split_date: pd.Timestamp

    @property
    def truth(self) -> dict[str, set]:
        return self.test.groupby("user")["item"].apply(set).to_dict()


def temporal_split(events: pd.DataFrame, split_date=None, test_days: int = 28) -> TemporalSplit:
    """Train before `split_date` (default: `test_days` before the last event), test the `test_days` after."""
    last = events["timestamp"].max()
    split = (
        pd.Timestamp(split_date) if split_date is not None else (last - pd.Timedelta(days=test_days - 1)).normalize()
    )
    end = split + pd.Timedelta(days=test_days)
    train = events[events["timestamp"] < split]
    test = events[(events["timestamp"] >= split) & (events["timestamp"] < end)]
    if train.empty or test.empty:
        raise ValueError(f"split at {split.date()} leaves an empty train ({len(train)}) or test ({len(test)}) set")
    return TemporalSplit(train, test, split)


# ---------------------------------------------------------------------------------------------------------------------
# Leak-free evaluation over several consecutive windows, pooled, with paired comparisons against a baseline.
# ---------------------------------------------------------------------------------------------------------------------
def window_splits(events: pd.DataFrame, n_windows: int = 4, test_days: int = 28, last=None) -> list[TemporalSplit]:
    """`n_windows` consecutive test windows of `test_days` ending at the last day of the log (newest first); each
    window's training log is everything before it."""
    if n_windows < 1 or test_days < 1:
        raise ValueError("n_windows and test_days must be positive integers")
    end = (pd.Timestamp(last) if last is not None else events["timestamp"].max()).normalize() + pd.Timedelta(days=1)
    out = []
    for w in range(n_windows):
        split = end - pd.Timedelta(days=test_days * (w + 1))
        out.append(temporal_split(events, split, test_days))
    return out


def evaluate_windows(
    make_data,
    factories: dict,
    events: pd.DataFrame,
    *,
    n_windows: int = 4,
    test_days: int = 28,
    k: int = 12,
    baseline: str | None = "repurchase",
    n_boot: int = 2000,
    progress: bool = True,
    on_window=None,
    taste: bool = True,
    taste_reference: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Fit every model on each window's training log and score the window; pool all (customer, window) pairs.

    make_data(train_events) -> RecData: the leak-free view (rows only for items bought in train_events).
    factories: name -> callable returning an unfitted recommender.
    Returns (table, details): one row per model with MAP@k [95% CI], Recall@k, HitRate@k, recall on warm items,
    on items never bought before the split (cold) and on new products (no colour of the product sold before),
    the MAP of each window, and the paired bootstrap interval of MAP(model) - MAP(baseline) over the same pairs.
    details: per-model per-pair AP arrays, per-source candidate tables, window facts.

    taste: also the taste metrics of `evaluation.taste` (new-item taste AUC overall, on new products and on new
    colours of known products; colour pick top-1 with chance and popularity), each with a bootstrap interval and a
    paired interval against `taste_reference` (default: `visual` when evaluated, else the baseline).
    """
    splits = window_splits(events, n_windows, test_days)
    per = {m: _new_tally() for m in factories}
    picks = {"chance": [], "popularity": []}
    totals = {"warm": 0, "cold": 0, "newprod": 0, "pairs": 0, "purchases": 0}
    windows, sources = [], {}
    for w, split in enumerate(splits):
        data = make_data(split.train)
        win = _window_facts(split, totals)
        windows.append(win.pop("facts"))
        task = _taste_task(data, split, picks, windows[-1]) if taste else None
        for name, make in factories.items():
            t0 = time.time()
            model = make().fit(data)
            _score_model(model, per[name], win, task, k, t0)
            if hasattr(model, "candidate_sources"):
                _count_sources(model, sources.setdefault(name, {}), win, k)
            if progress:
                print(
                    f"window {split.split_date.date()}: {name} MAP@{k} {per[name]['window_map'][-1]:.4f} "
                    f"({time.time() - t0:.1f}s)",
                    flush=True,
                )
            if on_window is not None:
                on_window(w, name, model)
    if taste_reference is None:
        taste_reference = "visual" if "visual" in per else baseline
    base_ap = np.array(per[baseline]["ap"]) if baseline in per else None
    rows = [
        _model_row(
            name, p, k, totals, baseline, base_ap, n_boot, len(splits), per.get(taste_reference) if taste else False
        )
        for name, p in per.items()
    ]
    df = pd.DataFrame(rows).set_index("model")
    df.attrs.update(
        k=k,
        windows=windows,
        pairs=totals["pairs"],
        purchases=totals["purchases"],
        cold_share=totals["cold"] / max(1, totals["purchases"]),
        newprod_share=totals["newprod"] / max(1, totals["purchases"]),
        baseline=baseline,
        test_days=test_days,
        taste=taste,
        taste_reference=taste_reference if taste else None,
        pick_chance=float(np.mean(picks["chance"])) if picks["chance"] else float("nan"),
        pick_popularity=float(np.mean(picks["popularity"])) if picks["popularity"] else float("nan"),
        colour_picks=len(picks["chance"]),
    )
    return df, {
        "ap": {m: list(map(float, p["ap"])) for m, p in per.items()},
        "taste_auc": {m: list(map(float, p["auc"])) for m, p in per.items()},
        "colour_pick": {m: list(map(float, p["pick"])) for m, p in per.items()},
        "sources": _source_tables(sources, totals),
        "windows": windows,
    }


def _new_tally() -> dict:
    """One model's figures, pooled over the windows."""
    lists = ("ap", "recall", "hit", "window_map", "auc", "auc_new_product", "auc_new_colour", "pick")
    return {n: [] for n in lists} | {"hits_warm": 0, "hits_cold": 0, "hits_newprod": 0, "secs": 0.0, "items": set()}


def _window_facts(split: TemporalSplit, totals: dict) -> dict:
    """The window's truth: customers (sorted), their purchases, those of items never bought before the window
    (cold) and of products never sold before (newprod); the counts are added to `totals`."""
    truth = split.truth
    users = sorted(truth)
    bought = set(split.train["item"].unique())
    codes_before = {product_code_of(i) for i in bought}
    cold = {u: {i for i in s if i not in bought} for u, s in truth.items()}
    newprod = {u: {i for i in s if product_code_of(i) not in codes_before} for u, s in truth.items()}
    n_p = sum(len(s) for s in truth.values())
    n_cold = sum(len(s) for s in cold.values())
    totals["pairs"] += len(users)
    totals["purchases"] += n_p
    totals["cold"] += n_cold
    totals["newprod"] += sum(len(s) for s in newprod.values())
    totals["warm"] += n_p - n_cold
    facts = {
        "split": str(split.split_date.date()),
        "customers": len(users),
        "purchases": n_p,
        "cold_share": n_cold / max(1, n_p),
    }
    return {"truth": truth, "users": users, "cold": cold, "newprod": newprod, "facts": facts}


def _taste_task(data, split: TemporalSplit, picks: dict, facts: dict):
    """The window's taste task (`evaluation.taste`); the colour picks' chance and popularity go to `picks`."""
    from fashionrec.evaluation.taste import pick_baselines, taste_task

    has_photo = None
    if data.image_features is not None:
        has_photo = data.image_features.aligned(data.item_ids)[1]
    task = taste_task(data, split.train, split.test, has_photo)
    ch, pp = pick_baselines(task, np.asarray(data.matrix.sum(0)).ravel())
    picks["chance"] += ch
    picks["popularity"] += pp
    facts.update(taste_pool=len(task.pool), taste_customers=len(task.users), colour_picks=len(task.picks))
    return task


def _score_model(model, p: dict, win: dict, task, k: int, t0: float) -> None:
    """Score a fitted model's top-k on the window (and the taste task) into its tally `p`."""
    from fashionrec.evaluation.taste import score_task

    users, truth, cold, newprod = win["users"], win["truth"], win["cold"], win["newprod"]
    recs = model.recommend_many(users, k)
    if task is not None:
        ts_ = score_task(model, task)
        for key in ("auc", "auc_new_product", "auc_new_colour", "pick"):
            p[key] += getattr(ts_, key)
    p["secs"] += time.time() - t0
    ordered = {u: truth[u] for u in users}  # the same order for every model: differences are paired
    aps = per_user_scores(recs, ordered, k, "map")
    p["ap"] += aps.tolist()
    p["window_map"].append(float(aps.mean()) if len(aps) else 0.0)
    p["recall"] += per_user_scores(recs, ordered, k, "recall").tolist()
    p["hit"] += per_user_scores(recs, ordered, k, "hitrate").tolist()
    for u in users:
        top = set(recs.get(u, [])[:k])
        p["items"] |= top
        hits = top & truth[u]
        p["hits_cold"] += len(hits & cold[u])
        p["hits_newprod"] += len(hits & newprod[u])
        p["hits_warm"] += len(hits - cold[u])
    win["recs"] = recs


def _count_sources(model, tab: dict, win: dict, k: int) -> None:
    """Per candidate source of the model: its size, the purchases it holds, and its share of the top-k hits."""
    users, truth, cold, recs = win["users"], win["truth"], win["cold"], win["recs"]
    src = model.candidate_sources(users)
    for u in users:
        top = set(recs.get(u, [])[:k]) & truth[u]
        for s, items in src[u].items():
            r = tab.setdefault(s, {"size": 0, "hits": 0, "top_hits": 0, "cold_hits": 0})
            r["size"] += len(items)
            r["hits"] += len(items & truth[u])
            r["cold_hits"] += len(items & cold[u])
            r["top_hits"] += len(top & items)
    tab.setdefault("_total_top_hits", 0)
    tab["_total_top_hits"] += sum(len(set(recs.get(u, [])[:k]) & truth[u]) for u in users)


def _model_row(name, p, k, totals, baseline, base_ap, n_boot, n_splits, taste_ref) -> dict:
    """One model's row of the table; `taste_ref`: the reference model's tally, None (no reference) or False (the
    taste metrics are off)."""
    ap = np.array(p["ap"])
    lo, hi = bootstrap_ci(ap, n_boot=n_boot)
    row = {
        "model": name,
        f"map@{k}": ap.mean(),
        f"map@{k}_ci": (lo, hi),
        f"recall@{k}": np.mean(p["recall"]),
        f"hitrate@{k}": np.mean(p["hit"]),
        "recall_warm": p["hits_warm"] / max(1, totals["warm"]),
        "recall_cold": p["hits_cold"] / max(1, totals["cold"]),
        "recall_new_product": p["hits_newprod"] / max(1, totals["newprod"]),
        "window_map": p["window_map"],
        "coverage_items": len(p["items"]),
        "secs_per_window": p["secs"] / n_splits,
    }
    if base_ap is not None:
        d = ap - base_ap
        dlo, dhi = bootstrap_ci(d, n_boot=n_boot)  # paired: the same pairs are resampled for both
        row.update(
            {
                f"diff_vs_{baseline}": d.mean(),
                "diff_ci": (dlo, dhi),
                "ratio_vs_baseline": ap.mean() / base_ap.mean() if base_ap.mean() > 0 else float("nan"),
            }
        )
    if taste_ref is not False:
        row.update(_taste_row(p, taste_ref, n_boot))
    return row


def _source_tables(sources: dict, totals: dict) -> dict:
    out = {}
    for name, tab in sources.items():
        tot = max(1, tab.pop("_total_top_hits", 0))
        out[name] = {
            s: {
                "mean_size": r["size"] / max(1, totals["pairs"]),
                "recall": r["hits"] / max(1, totals["purchases"]),
                "cold_recall": r["cold_hits"] / max(1, totals["cold"]),
                "share_of_hits": r["top_hits"] / tot,
            }
            for s, r in tab.items()
        }
    return out


def _taste_row(p: dict, ref: dict | None, n_boot: int) -> dict:
    """The taste columns of one model's row: means, bootstrap intervals and paired intervals against `ref` (the
    same customer-windows and picks, in the same order, for every model)."""
    out = {}
    for key in ("auc", "auc_new_product", "auc_new_colour", "pick"):
        a = np.asarray(p[key], dtype=np.float64)
        ok = ~np.isnan(a)
        out[f"taste_{key}"] = float(a[ok].mean()) if ok.any() else float("nan")
        out[f"taste_{key}_ci"] = bootstrap_ci(a[ok], n_boot=n_boot)
        if ref is not None and len(ref[key]) == len(a):
            b = np.asarray(ref[key], dtype=np.float64)
            both = ok & ~np.isnan(b)
            d = a[both] - b[both]
            out[f"taste_{key}_diff"] = float(d.mean()) if len(d) else float("nan")
            out[f"taste_{key}_diff_ci"] = bootstrap_ci(d, n_boot=n_boot)
    out["taste_n"] = int((~np.isnan(np.asarray(p["auc"], dtype=np.float64))).sum())
    return out


def format_windows_table(df: pd.DataFrame, sources: dict | None = None) -> str:
    k = df.attrs.get("k", 12)
    base = df.attrs.get("baseline")
    ws = df.attrs.get("windows", [])
    head = (
        f"leak-free evaluation: {len(ws)} windows of {df.attrs.get('test_days')} days "
        f"({', '.join(w['split'] for w in ws)}), {df.attrs.get('pairs')} (customer, window) pairs, "
        f"{df.attrs.get('purchases')} purchases; {df.attrs.get('cold_share', 0):.0%} of them of items never bought "
        f"before the window, {df.attrs.get('newprod_share', 0):.0%} of products never sold before\n\n"
    )
    cols = [
        f"MAP@{k} [95% CI]",
        f"vs {base}: diff [paired 95% CI]",
        "ratio",
        f"Recall@{k}",
        f"HitRate@{k}",
        "recall warm",
        "recall cold",
        "recall new product",
        "MAP per window (newest first)",
        "s/window",
    ]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in df.iterrows():
        lo, hi = r[f"map@{k}_ci"]
        if base and "diff_ci" in r and isinstance(r["diff_ci"], tuple):
            dlo, dhi = r["diff_ci"]
            diff = f"{r[f'diff_vs_{base}']:+.4f} [{dlo:+.4f}, {dhi:+.4f}]"
            ratio = f"{r['ratio_vs_baseline']:.2f}x"
        else:
            diff, ratio = "-", "-"
        lines.append(
            f"| {name} | {r[f'map@{k}']:.4f} [{lo:.4f}, {hi:.4f}] | {diff} | {ratio} | {r[f'recall@{k}']:.4f} | "
            f"{r[f'hitrate@{k}']:.3f} | {r['recall_warm']:.4f} | {r['recall_cold']:.4f} | "
            f"{r['recall_new_product']:.4f} | {' / '.join(f'{x:.4f}' for x in r['window_map'])} | "
            f"{r['secs_per_window']:.1f} |"
        )
    out = head + "\n".join(lines) + "\n"
    if df.attrs.get("taste"):
        out += "\n" + format_taste_table(df)
    for name, tab in (sources or {}).items():
        out += (
            f"\ncandidate sources of `{name}` (test windows; sizes per customer; recall = share of all purchases "
            f"the source contains; share of hits = share of the top-{k} hits the source contained; sources overlap)\n\n"
            "| source | mean size | recall | recall on never-bought items | share of hits |\n|---|---|---|---|---|\n"
        )
        for s, r in sorted(tab.items(), key=lambda kv: -kv[1]["recall"]):
            out += f"| {s} | {r['mean_size']:.1f} | {r['recall']:.4f} | {r['cold_recall']:.4f} | {r['share_of_hits']:.3f} |\n"
    return out


def format_taste_table(df: pd.DataFrame) -> str:
    """The taste metrics (evaluation.taste) of every model, with intervals and paired differences."""
    ref = df.attrs.get("taste_reference")
    k = df.attrs.get("k", 12)
    ws = df.attrs.get("windows", [])
    pool = sum(w.get("taste_pool", 0) for w in ws)
    out = (
        f"taste: {int(df['taste_n'].max()) if 'taste_n' in df else 0} customer-windows with a history that buy items "
        f"first sold in the window (pools of {' / '.join(str(w.get('taste_pool', 0)) for w in ws)} such items, "
        f"{pool} in all); {df.attrs.get('colour_picks', 0)} colour picks (chance {df.attrs.get('pick_chance', 0):.3f}, "
        f"popularity {df.attrs.get('pick_popularity', 0):.3f}); paired intervals against `{ref}`\n\n"
        "| model | new-item taste AUC [95% CI] | vs ref [paired 95% CI] | AUC new products | AUC new colours | "
        f"colour pick top-1 [95% CI] | vs ref [paired] | recall@{k} never-bought |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )

    def iv(r, key, fmt="{:.3f}"):
        v, ci = r.get(f"taste_{key}"), r.get(f"taste_{key}_ci")
        if v is None or v != v:
            return "-"
        return f"{fmt.format(v)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"

    def dv(r, key):
        v, ci = r.get(f"taste_{key}_diff"), r.get(f"taste_{key}_diff_ci")
        if v is None or v != v or not isinstance(ci, tuple):
            return "-"
        return f"{v:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"

    for name, r in df.iterrows():
        r = r.to_dict()
        out += (
            f"| {name} | {iv(r, 'auc')} | {dv(r, 'auc')} | {iv(r, 'auc_new_product')} | {iv(r, 'auc_new_colour')} | "
            f"{iv(r, 'pick')} | {dv(r, 'pick')} | {r['recall_cold']:.4f} |\n"
        )
    return out


def plot_windows(df: pd.DataFrame, path: str | Path) -> Path:
    from fashionrec.evaluation.plots import plot_bars

    k = df.attrs.get("k", 12)
    return plot_bars(
        list(df.index),
        list(df[f"map@{k}"]),
        list(df[f"map@{k}_ci"]),
        path,
        ylabel=f"MAP@{k} (95% CI)",
        title=f"Leak-free evaluation, {len(df.attrs.get('windows', []))} pooled windows",
    )
