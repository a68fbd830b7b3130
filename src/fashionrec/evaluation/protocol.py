"""Temporal evaluation of recommenders on a purchase log.

Protocol: fit on events before `split_date`; test on purchases in [split_date, split_date + test_days). Users
scored: those who buy in the test window (new users included: they get an empty history). Breakdowns:
- warm items (bought by someone before the split) vs cold items (never bought before: only content can reach them);
- short (<= 5 purchases before the split) vs long histories, and new users (none).
Confidence intervals: percentile bootstrap over users.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fashionrec.evaluation.metrics import bootstrap_ci, catalog_coverage, per_user_scores, recall_at_k


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
    split = pd.Timestamp(split_date) if split_date is not None else (last - pd.Timedelta(days=test_days - 1)).normalize()
    end = split + pd.Timedelta(days=test_days)
    train = events[events["timestamp"] < split]
    test = events[(events["timestamp"] >= split) & (events["timestamp"] < end)]
    if train.empty or test.empty:
        raise ValueError(f"split at {split.date()} leaves an empty train ({len(train)}) or test ({len(test)}) set")
    return TemporalSplit(train, test, split)


def evaluate_recommenders(models: dict, split: TemporalSplit, n_items: int, *, k: int = 12, n_boot: int = 1000,
                          progress: bool = True) -> pd.DataFrame:
    """One row per model: MAP@k, recall, NDCG, hit rate (with 95% CIs), coverage, cold/warm recall, by history."""
    truth = split.truth
    bought_before = set(split.train["item"].unique())
    hist_len = split.train.groupby("user").size().to_dict()
    users = list(truth)
    warm_truth = {u: s & bought_before for u, s in truth.items()}
    cold_truth = {u: s - bought_before for u, s in truth.items()}
    rows = []
    for name, model in models.items():
        t0 = time.time()
        recs = {}
        for u in tqdm(users, desc=f"evaluate {name}", unit="user", disable=not progress, leave=False):
            recs[u] = [r.item for r in model.recommend(u, k, explain=False)]
        secs = time.time() - t0
        row = {"model": name}
        for metric in ("map", "recall", "ndcg", "hitrate"):
            v = per_user_scores(recs, truth, k, metric)
            lo, hi = bootstrap_ci(v, n_boot=n_boot)
            row[f"{metric}@{k}"] = v.mean()
            row[f"{metric}@{k}_ci"] = (lo, hi)
        # Recall restricted to cold / warm items: hits among never-bought items / all never-bought items bought.
        for part, tr in (("cold", cold_truth), ("warm", warm_truth)):
            num = sum(len(set(recs[u][:k]) & tr[u]) for u in users)
            den = sum(len(tr[u]) for u in users)
            row[f"recall_{part}"] = num / den if den else 0.0
        for part, sel in (("new", lambda n: n == 0), ("short", lambda n: 0 < n <= 5), ("long", lambda n: n > 5)):
            us = [u for u in users if sel(hist_len.get(u, 0))]
            row[f"map_{part}"] = float(np.mean([per_user_scores({u: recs[u]}, {u: truth[u]}, k, "map")[0] for u in us])) if us else float("nan")
            row[f"n_{part}"] = len(us)
        row["coverage"] = catalog_coverage(recs, n_items, k)
        row["ms_per_user"] = 1000 * secs / max(1, len(users))
        rows.append(row)
    df = pd.DataFrame(rows).set_index("model")
    df.attrs.update(users=len(users), purchases=int(sum(len(s) for s in truth.values())),
                    cold_share=float(sum(len(s) for s in cold_truth.values()) / max(1, sum(len(s) for s in truth.values()))),
                    split_date=str(split.split_date.date()), k=k)
    return df


def format_table(df: pd.DataFrame) -> str:
    k = df.attrs.get("k", 12)
    head = (f"temporal split at {df.attrs.get('split_date')}: {df.attrs.get('users')} test users, "
            f"{df.attrs.get('purchases')} purchases, {df.attrs.get('cold_share', 0):.0%} of them of never-bought items\n\n")
    lines = [f"| model | MAP@{k} [95% CI] | Recall@{k} | NDCG@{k} | HitRate@{k} | recall cold | recall warm | "
             f"MAP short/long/new | coverage | ms/user |", "|---" * 10 + "|"]
    for name, r in df.iterrows():
        lo, hi = r[f"map@{k}_ci"]
        lines.append(f"| {name} | {r[f'map@{k}']:.4f} [{lo:.4f}, {hi:.4f}] | {r[f'recall@{k}']:.4f} | {r[f'ndcg@{k}']:.4f} | "
                     f"{r[f'hitrate@{k}']:.3f} | {r['recall_cold']:.4f} | {r['recall_warm']:.4f} | "
                     f"{r['map_short']:.4f}/{r['map_long']:.4f}/{r['map_new']:.4f} | {r['coverage']:.3f} | {r['ms_per_user']:.1f} |")
    return head + "\n".join(lines) + "\n"


def plot_comparison(df: pd.DataFrame, path: str | Path) -> Path:
    from fashionrec.evaluation.plots import plot_bars

    k = df.attrs.get("k", 12)
    return plot_bars(list(df.index), list(df[f"map@{k}"]), list(df[f"map@{k}_ci"]), path, ylabel=f"MAP@{k} (95% CI)",
                     title=f"Recommenders on a temporal split at {df.attrs.get('split_date')}")


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


def product_code_of(item: str) -> str:
    """H&M's id scheme: 10 digits = 7-digit product code + 3-digit colour; other ids are their own product."""
    return item[:7] if len(item) == 10 and item.isdigit() else item


def paired_bootstrap(diff: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-(customer, window) differences, resampling the pairs."""
    return bootstrap_ci(diff, n_boot=n_boot, alpha=alpha, seed=seed)


def evaluate_windows(make_data, factories: dict, events: pd.DataFrame, *, n_windows: int = 4, test_days: int = 28,
                     k: int = 12, baseline: str | None = "repurchase", n_boot: int = 2000, progress: bool = True,
                     on_window=None) -> tuple[pd.DataFrame, dict]:
    """Fit every model on each window's training log and score the window; pool all (customer, window) pairs.

    make_data(train_events) -> RecData: the leak-free view (rows only for items bought in train_events).
    factories: name -> callable returning an unfitted recommender.
    Returns (table, details): one row per model with MAP@k [95% CI], Recall@k, HitRate@k, recall on warm items,
    on items never bought before the split (cold) and on new products (no colour of the product sold before),
    the MAP of each window, and the paired bootstrap interval of MAP(model) - MAP(baseline) over the same pairs.
    details: per-model per-pair AP arrays, per-source candidate tables, window facts.
    """
    from fashionrec.evaluation.metrics import average_precision_at_k, hit_rate_at_k

    splits = window_splits(events, n_windows, test_days)
    per = {m: {"ap": [], "recall": [], "hit": [], "hits_warm": 0, "hits_cold": 0, "hits_newprod": 0, "secs": 0.0,
               "window_map": [], "items": set()} for m in factories}
    totals = {"warm": 0, "cold": 0, "newprod": 0, "pairs": 0, "purchases": 0}
    windows, sources = [], {}
    for w, split in enumerate(splits):
        data = make_data(split.train)
        truth = split.truth
        users = sorted(truth)
        bought = set(split.train["item"].unique())
        codes_before = {product_code_of(i) for i in bought}
        cold = {u: {i for i in s if i not in bought} for u, s in truth.items()}
        newprod = {u: {i for i in s if product_code_of(i) not in codes_before} for u, s in truth.items()}
        n_p = sum(len(s) for s in truth.values())
        totals["pairs"] += len(users)
        totals["purchases"] += n_p
        totals["cold"] += sum(len(s) for s in cold.values())
        totals["newprod"] += sum(len(s) for s in newprod.values())
        totals["warm"] += n_p - sum(len(s) for s in cold.values())
        windows.append({"split": str(split.split_date.date()), "customers": len(users), "purchases": n_p,
                        "cold_share": sum(len(s) for s in cold.values()) / max(1, n_p)})
        for name, make in factories.items():
            t0 = time.time()
            model = make().fit(data)
            recs = model.recommend_many(users, k)
            p = per[name]
            p["secs"] += time.time() - t0
            aps = [average_precision_at_k(recs.get(u, []), truth[u], k) for u in users]
            p["ap"] += aps
            p["window_map"].append(float(np.mean(aps)) if aps else 0.0)
            p["recall"] += [recall_at_k(recs.get(u, []), truth[u], k) for u in users]
            p["hit"] += [hit_rate_at_k(recs.get(u, []), truth[u], k) for u in users]
            for u in users:
                top = set(recs.get(u, [])[:k])
                p["items"] |= top
                hits = top & truth[u]
                p["hits_cold"] += len(hits & cold[u])
                p["hits_newprod"] += len(hits & newprod[u])
                p["hits_warm"] += len(hits - cold[u])
            if hasattr(model, "candidate_sources"):
                src = model.candidate_sources(users)
                tab = sources.setdefault(name, {})
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
            if progress:
                print(f"window {split.split_date.date()}: {name} MAP@{k} {p['window_map'][-1]:.4f} "
                      f"({time.time() - t0:.1f}s)", flush=True)
            if on_window is not None:
                on_window(w, name, model)
    rows = []
    base_ap = np.array(per[baseline]["ap"]) if baseline in per else None
    for name, p in per.items():
        ap = np.array(p["ap"])
        lo, hi = bootstrap_ci(ap, n_boot=n_boot)
        row = {"model": name, f"map@{k}": ap.mean(), f"map@{k}_ci": (lo, hi), f"recall@{k}": np.mean(p["recall"]),
               f"hitrate@{k}": np.mean(p["hit"]), "recall_warm": p["hits_warm"] / max(1, totals["warm"]),
               "recall_cold": p["hits_cold"] / max(1, totals["cold"]),
               "recall_new_product": p["hits_newprod"] / max(1, totals["newprod"]),
               "window_map": p["window_map"], "coverage_items": len(p["items"]),
               "secs_per_window": p["secs"] / len(splits)}
        if base_ap is not None:
            d = ap - base_ap
            dlo, dhi = paired_bootstrap(d, n_boot=n_boot)
            row.update({f"diff_vs_{baseline}": d.mean(), "diff_ci": (dlo, dhi),
                        "ratio_vs_baseline": ap.mean() / base_ap.mean() if base_ap.mean() > 0 else float("nan")})
        rows.append(row)
    df = pd.DataFrame(rows).set_index("model")
    df.attrs.update(k=k, windows=windows, pairs=totals["pairs"], purchases=totals["purchases"],
                    cold_share=totals["cold"] / max(1, totals["purchases"]),
                    newprod_share=totals["newprod"] / max(1, totals["purchases"]), baseline=baseline,
                    test_days=test_days)
    src_tables = {}
    for name, tab in sources.items():
        tot = max(1, tab.pop("_total_top_hits", 0))
        src_tables[name] = {s: {"mean_size": r["size"] / max(1, totals["pairs"]), "recall": r["hits"] / max(1, totals["purchases"]),
                                "cold_recall": r["cold_hits"] / max(1, totals["cold"]), "share_of_hits": r["top_hits"] / tot}
                            for s, r in tab.items()}
    return df, {"ap": {m: list(map(float, p["ap"])) for m, p in per.items()}, "sources": src_tables,
                "windows": windows}


def format_windows_table(df: pd.DataFrame, sources: dict | None = None) -> str:
    k = df.attrs.get("k", 12)
    base = df.attrs.get("baseline")
    ws = df.attrs.get("windows", [])
    head = (f"leak-free evaluation: {len(ws)} windows of {df.attrs.get('test_days')} days "
            f"({', '.join(w['split'] for w in ws)}), {df.attrs.get('pairs')} (customer, window) pairs, "
            f"{df.attrs.get('purchases')} purchases; {df.attrs.get('cold_share', 0):.0%} of them of items never bought "
            f"before the window, {df.attrs.get('newprod_share', 0):.0%} of products never sold before\n\n")
    cols = [f"MAP@{k} [95% CI]", f"vs {base}: diff [paired 95% CI]", "ratio", f"Recall@{k}", f"HitRate@{k}",
            "recall warm", "recall cold", "recall new product", "MAP per window (newest first)", "s/window"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in df.iterrows():
        lo, hi = r[f"map@{k}_ci"]
        if base and "diff_ci" in r and isinstance(r["diff_ci"], tuple):
            dlo, dhi = r["diff_ci"]
            diff = f"{r[f'diff_vs_{base}']:+.4f} [{dlo:+.4f}, {dhi:+.4f}]"
            ratio = f"{r['ratio_vs_baseline']:.2f}x"
        else:
            diff, ratio = "-", "-"
        lines.append(f"| {name} | {r[f'map@{k}']:.4f} [{lo:.4f}, {hi:.4f}] | {diff} | {ratio} | {r[f'recall@{k}']:.4f} | "
                     f"{r[f'hitrate@{k}']:.3f} | {r['recall_warm']:.4f} | {r['recall_cold']:.4f} | "
                     f"{r['recall_new_product']:.4f} | {' / '.join(f'{x:.4f}' for x in r['window_map'])} | "
                     f"{r['secs_per_window']:.1f} |")
    out = head + "\n".join(lines) + "\n"
    for name, tab in (sources or {}).items():
        out += (f"\ncandidate sources of `{name}` (test windows; sizes per customer; recall = share of all purchases "
                f"the source contains; share of hits = share of the top-{k} hits the source contained; sources overlap)\n\n"
                "| source | mean size | recall | recall on never-bought items | share of hits |\n|---|---|---|---|---|\n")
        for s, r in sorted(tab.items(), key=lambda kv: -kv[1]["recall"]):
            out += f"| {s} | {r['mean_size']:.1f} | {r['recall']:.4f} | {r['cold_recall']:.4f} | {r['share_of_hits']:.3f} |\n"
    return out


def plot_windows(df: pd.DataFrame, path: str | Path) -> Path:
    from fashionrec.evaluation.plots import plot_bars

    k = df.attrs.get("k", 12)
    return plot_bars(list(df.index), list(df[f"map@{k}"]), list(df[f"map@{k}_ci"]), path, ylabel=f"MAP@{k} (95% CI)",
                     title=f"Leak-free evaluation, {len(df.attrs.get('windows', []))} pooled windows")
