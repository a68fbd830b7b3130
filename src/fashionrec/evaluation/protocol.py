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
