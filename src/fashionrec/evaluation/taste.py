"""Taste metrics: does a model know which *new* items, and which colour, each customer will pick?

MAP@12 on a small sample is dominated by repurchases and best sellers; it cannot tell whether a model read a
customer's taste from photos. Two metrics can, on the same leak-free windows (`evaluation.protocol`):

- **New-item taste AUC.** For each (customer, window) where the customer has a history before the window and buys
  at least one item first sold in the window, every model ranks the same pool: every item first sold in that window.
  The AUC of the customer's purchases among the pool (ties count half; 0.5 is chance) is averaged over
  customer-windows. It is reported for all such purchases, for new products (no colour of the product sold before
  the window) and for new colours of known products apart.
- **Colour pick.** For each purchase of an article whose product the customer bought before the window but whose
  colour they did not: is the bought colour ranked first among the product's colours that have a photo (less those
  the customer already bought)? Top-1 accuracy, with chance (1 / number of colours) and popularity (sales before
  the window) beside it.

A model is asked for scores through `Recommender.score_items`: every model can rank any item it knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from fashionrec.data.products import product_code_of


@dataclass
class TasteTask:
    """What every model is asked in one window (the same for all models: differences are paired)."""

    pool: np.ndarray  # item indices first sold in the window (into RecData.item_ids)
    users: list[str]  # customers with a history who buy at least one pool item
    positives: list[np.ndarray]  # per user: positions in `pool` of what they bought
    new_product: list[np.ndarray]  # per user: bool per positive, True = product never sold before the window
    picks: list[tuple[str, int, np.ndarray]] = field(default_factory=list)  # (user, bought item, candidate items)


def taste_task(data, train: pd.DataFrame, test: pd.DataFrame, has_photo: np.ndarray | None = None) -> TasteTask:
    """Build one window's questions from its training log and test purchases. `data` is the window's RecData (its
    item_ids index the answers); `has_photo`: bool per item (default: every item)."""
    index = data.item_index
    n = data.n_items
    has_photo = np.ones(n, dtype=bool) if has_photo is None else np.asarray(has_photo, dtype=bool)
    sold_before = set(train["item"].unique())
    codes_before = {product_code_of(i) for i in sold_before}
    first = [i for i in pd.unique(test["item"]) if i not in sold_before and i in index]
    pool = np.array(sorted(index[i] for i in first), dtype=np.int64)
    pos_in_pool = {int(j): p for p, j in enumerate(pool)}
    hist = train.groupby("user")["item"].agg(set)
    users, positives, new_product = [], [], []
    bought = test.groupby("user")["item"].agg(lambda s: list(dict.fromkeys(s)))
    for u, items in bought.items():
        if u not in hist.index:
            continue
        pos = [pos_in_pool[index[i]] for i in items if i in index and index[i] in pos_in_pool]
        if not pos:
            continue
        users.append(u)
        positives.append(np.array(pos, dtype=np.int64))
        new_product.append(
            np.array([product_code_of(data.item_ids[pool[p]]) not in codes_before for p in pos], dtype=bool)
        )
    # colour pick: other colours of a product the customer bought before
    codes = np.array([product_code_of(i) for i in data.item_ids], dtype=object)
    by_code: dict[str, list[int]] = {}
    for j in np.flatnonzero(has_photo):
        by_code.setdefault(codes[j], []).append(int(j))
    picks = []
    for u, items in bought.items():
        if u not in hist.index:
            continue
        own = hist[u]
        own_codes = {product_code_of(i) for i in own}
        own_idx = {index[i] for i in own if i in index}
        for i in items:
            if i in own or i not in index or not has_photo[index[i]]:
                continue
            c = product_code_of(i)
            if c not in own_codes:
                continue
            cand = np.array([j for j in by_code.get(c, []) if j not in own_idx], dtype=np.int64)
            if len(cand) >= 2:
                picks.append((u, index[i], cand))
    return TasteTask(pool, users, positives, new_product, picks)


def auc_of(scores: np.ndarray, positives: np.ndarray) -> float:
    """AUC of `positives` (positions) among all `scores` (ties count half); NaN when there is no negative."""
    n, k = len(scores), len(positives)
    if k == 0 or k >= n:
        return float("nan")
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, posinf=np.finfo(float).max)
    s = np.where(np.isneginf(s), np.finfo(float).min, s)
    r = rankdata(s)  # midranks: ties count half
    return float((r[positives].sum() - k * (k + 1) / 2) / (k * (n - k)))


def top1_share(scores: np.ndarray, target: int) -> float:
    """1 if `target` (a position) has the strictly highest score; 1/m if it ties m ways for the top."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    best = s.max()
    if s[target] < best:
        return 0.0
    return 1.0 / int((s == best).sum())


@dataclass
class TasteScores:
    """One model's answers in one window, in the task's order."""

    auc: list[float]  # per user (all first-sold purchases)
    auc_new_product: list[float]  # per user with a new-product purchase (NaN otherwise)
    auc_new_colour: list[float]  # per user with a new-colour purchase (NaN otherwise)
    pick: list[float]  # per pick: top-1 share


def score_task(model, task: TasteTask) -> TasteScores:
    """Ask `model` for its scores of the pool (and of each pick's colours) for every customer of the task."""
    users = list(dict.fromkeys(task.users + [u for u, _, _ in task.picks]))
    pick_items = np.unique(np.concatenate([c for _, _, c in task.picks])) if task.picks else np.zeros(0, np.int64)
    items = np.unique(np.concatenate([task.pool, pick_items])).astype(np.int64)
    at = {int(j): p for p, j in enumerate(items)}
    S = model.score_items(users, items) if len(users) else np.zeros((0, len(items)))
    row = {u: r for r, u in enumerate(users)}
    pool_cols = np.array([at[int(j)] for j in task.pool], dtype=np.int64)
    out = TasteScores([], [], [], [])
    for u, pos, newp in zip(task.users, task.positives, task.new_product):
        s = S[row[u], pool_cols]
        out.auc.append(auc_of(s, pos))
        out.auc_new_product.append(_auc_subset(s, pos, newp))
        out.auc_new_colour.append(_auc_subset(s, pos, ~newp))
    for u, item, cand in task.picks:
        s = S[row[u], [at[int(j)] for j in cand]]
        out.pick.append(top1_share(s, int(np.flatnonzero(cand == item)[0])))
    return out


def _auc_subset(s: np.ndarray, pos: np.ndarray, keep: np.ndarray) -> float:
    """AUC of the kept positives against the items the customer did not buy (the other positives left out)."""
    if not keep.any():
        return float("nan")
    drop = pos[~keep]
    mask = np.ones(len(s), dtype=bool)
    mask[drop] = False
    remap = np.cumsum(mask) - 1
    return auc_of(s[mask], remap[pos[keep]])


def pick_baselines(task: TasteTask, pop: np.ndarray) -> tuple[list[float], list[float]]:
    """(chance, popularity) top-1 per pick; `pop`: sales per item before the window."""
    chance = [1.0 / len(c) for _, _, c in task.picks]
    popular = [top1_share(pop[c], int(np.flatnonzero(c == item)[0])) for _, item, c in task.picks]
    return chance, popular


def nanmean(x) -> float:
    a = np.asarray(x, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if len(a) else float("nan")
