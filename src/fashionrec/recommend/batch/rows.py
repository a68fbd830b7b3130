"""The rows of one block of customers, shared by the local runner and the Ray actors: the model's lists, each
completed to k items where it is short, written as CSV rows. `write_blocks` is the one block loop."""

from __future__ import annotations

import csv
import inspect
import time
from collections.abc import Callable, Sequence

import numpy as np


def popular_fill(model, k: int) -> list[str]:
    """What sells now (time-decayed popularity), 2k long: fills lists shorter than k."""
    from fashionrec.recommend.baselines import Popularity

    return [r.item for r in Popularity().fit(model.data).recommend(None, 2 * k, explain=False)]


class Fill:
    """The items that complete lists shorter than k: given, or `popular_fill` computed on first need (a model whose
    lists are always full, like the hybrid's, never pays for it)."""

    def __init__(self, model, k: int, items: Sequence[str] | None = None):
        self.model, self.k = model, k
        self._items = None if items is None else list(items)

    def items(self) -> list[str]:
        if self._items is None:
            self._items = popular_fill(self.model, self.k)
        return self._items


def recommend_lists(
    model, users: Sequence[str], k: int, timings: dict | None = None, items: np.ndarray | None = None
) -> list[list[str]]:
    """Top-k item ids of each customer, through the fastest API the model has (block, many, one by one).
    `items`: item indices to rank (only these, each by the model's score)."""
    block = getattr(model, "recommend_block", None)
    if block is not None and items is None and timings is not None and "timings" in inspect.signature(block).parameters:
        return block(users, k, timings=timings)  # the model splits its time into candidates and ranking
    t0 = time.perf_counter()
    if block is not None:
        out = block(users, k) if items is None else block(users, k, items=items)
    elif getattr(model, "recommend_many", None) is not None:
        recs = model.recommend_many(users, k)
        out = [list(recs.get(u, [])) for u in users]
    else:
        out = [[r.item for r in model.recommend(u, k, explain=False)] for u in users]
    if timings is not None:
        timings["candidates"] = timings.get("candidates", 0.0) + time.perf_counter() - t0
    return out


def complete(items: list[str], fill: list[str], k: int) -> list[str]:
    """`items` cut to k, or completed to k from `fill` (items already listed are skipped)."""
    items = list(items)[:k]
    if len(items) < k:
        seen = set(items)
        items += [i for i in fill if i not in seen and not seen.add(i)][: k - len(items)]
    return items


def write_rows(f, users: Sequence[str], lists: list[list[str]], fill: Fill | list[str], k: int) -> None:
    """`customer_id,prediction` rows; only short lists touch `fill`."""
    get = fill.items if isinstance(fill, Fill) else (lambda: fill)
    w = csv.writer(f, lineterminator="\n")
    w.writerows(
        (u, " ".join(items[:k] if len(items) >= k else complete(items, get(), k))) for u, items in zip(users, lists)
    )


def write_blocks(
    f,
    model,
    users: Sequence[str],
    k: int,
    fill: Fill | list[str],
    *,
    block_size: int,
    timings: dict,
    items: np.ndarray | None = None,
    done: Callable[[int], object] | None = None,
) -> None:
    """The block loop: `block_size` customers at a time, their lists from the model, their rows to `f`; seconds
    are added to `timings` (candidates, ranking, write); `done(n)` after each block of n customers."""
    for b in range(0, len(users), block_size):
        part = users[b : b + block_size]
        lists = recommend_lists(model, part, k, timings, items)
        t0 = time.perf_counter()
        write_rows(f, part, lists, fill, k)
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
        if done is not None:
            done(len(part))
