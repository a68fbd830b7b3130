"""The nightly batch job: top-k for every customer, streamed to a CSV in the H&M submission format.

    from fashionrec.recommend.batch import recommend_all
    recommend_all(model, customers, 12, "recs.csv")                 # one process
    recommend_all(model, customers, 12, "recs.csv", workers=4)      # Ray: customers sharded over 4 workers

Customers are taken `block_size` at a time: a model with a block API (`recommend_block(users, k) -> list of
lists of item ids`, e.g. the hybrid, which builds candidates and features for the whole block with array
operations) gets the block; any other model gets `recommend_many`, or `recommend` per customer. Memory stays
bounded by one block (rows are written as they come, to a temporary file renamed into place at the end: a killed
job leaves no half-written output). Every row has k items: short lists are filled from what sells now (the
popularity baseline's list), as `fashionrec recommend` always did. With workers > 1 the same blocks run on Ray
actors that share the fitted model through the object store (`fashionrec.distributed.recommend_all_ray`); the
output is identical, row for row.
"""

from __future__ import annotations

import csv
import inspect
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashionrec.io import atomic_path

AUTO_WORKERS_FROM = 100_000  # customers: below, Ray's start-up and the model transfer cost more than a 2nd core saves


def resolve_workers(value, customers: int) -> int:
    """A worker count: a positive number, or 'auto' = every core this process may use from AUTO_WORKERS_FROM
    customers on (1M customers on 2 cores: the batch step 1.95x faster), 1 below."""
    import os

    if str(value) != "auto":
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ValueError(f"workers must be a positive integer or 'auto', not {value!r}")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores) if customers >= AUTO_WORKERS_FROM else 1


def popular_fill(model, k: int) -> list[str]:
    """What sells now (time-decayed popularity), 2k long: fills lists shorter than k."""
    from fashionrec.recommend.baselines import Popularity

    return [r.item for r in Popularity().fit(model.data).recommend(None, 2 * k, explain=False)]


def recommend_lists(model, users: Sequence[str], k: int, timings: dict | None = None, items=None) -> list[list[str]]:
    """Top-k item ids of each customer, through the fastest API the model has (block, many, one by one).
    `items`: item indices to rank (only these, each by the model's score)."""
    block = getattr(model, "recommend_block", None)
    if items is not None:
        t0 = time.perf_counter()
        out = block(users, k, items=items)
        if timings is not None:
            timings["candidates"] = timings.get("candidates", 0.0) + time.perf_counter() - t0
        return out
    if block is not None:
        if timings is not None and "timings" in inspect.signature(block).parameters:
            return block(users, k, timings=timings)
        return block(users, k)
    t0 = time.perf_counter()
    many = getattr(model, "recommend_many", None)
    if many is not None:
        recs = many(users, k)
        out = [list(recs.get(u, [])) for u in users]
    else:
        out = [[r.item for r in model.recommend(u, k, explain=False)] for u in users]
    if timings is not None:
        timings["candidates"] = timings.get("candidates", 0.0) + time.perf_counter() - t0
    return out


def complete(items: list[str], fill: list[str], k: int) -> list[str]:
    items = list(items)[:k]
    if len(items) < k:  # every row gets k items
        seen = set(items)
        items += [i for i in fill if i not in seen and not seen.add(i)][: k - len(items)]
    return items[:k]


def write_rows(f, users: Sequence[str], lists: list[list[str]], fill: list[str], k: int) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerows((u, " ".join(complete(items, fill, k))) for u, items in zip(users, lists))


def recommend_all(
    model,
    users: Sequence[str],
    k: int,
    out_path: str | Path,
    *,
    block_size: int = 2048,
    progress: bool = True,
    fill: list[str] | None = None,
    header: bool = True,
    workers: int | str = 1,
    address: str | None = None,
    timings: dict | None = None,
    items: Sequence[str] | None = None,
) -> Path:
    """Write `customer_id,prediction` (k space-separated item ids) for every customer in `users`, in that order.

    items: rank only these item ids (a "new in" list) for everyone, each by the model's own score, never padded
    (a row holds min(k, len(items)) items); ids the model does not know are a FashionrecError naming them.

    block_size: customers per block (memory ~ block_size x ~200 candidate rows x 47 features, ~75 MB at 2048);
    fill: items that complete short lists (default: `popular_fill`); workers > 1: Ray (local, or `address`),
    'auto': `resolve_workers`;
    timings: if a dict, seconds spent in candidates (+features), ranking and write are added to it."""
    if k < 1:
        raise ValueError("k must be a positive integer")
    if block_size < 1:
        raise ValueError("block_size must be a positive integer")
    users = list(users)
    workers = resolve_workers(workers, len(users))
    restrict = None
    if items is not None:
        if not len(items):
            from fashionrec.errors import FashionrecError

            raise FashionrecError("the item list is empty")
        restrict = model.item_indices(items)
        # every listed item is scored by the model; a customer it cannot score (no history for a content model)
        # gets the listed items by sales
        sales = np.asarray(model.data.matrix.sum(0)).ravel()
        known = restrict[restrict < len(sales)]
        order = np.concatenate([known[np.argsort(-sales[known], kind="stable")], restrict[restrict >= len(sales)]])
        fill, workers = [model.data.item_ids[j] for j in order], 1
    if fill is None:
        fill = popular_fill(model, k)
    if workers > 1:
        from fashionrec.distributed import recommend_all_ray

        return recommend_all_ray(
            model,
            users,
            k,
            out_path,
            workers=workers,
            block_size=block_size,
            progress=progress,
            fill=fill,
            header=header,
            address=address,
            timings=timings,
        )
    from tqdm.auto import tqdm

    t = timings if timings is not None else {}
    with atomic_path(out_path, suffix=".tmp.csv") as tmp:
        with (
            open(tmp, "w", newline="") as f,
            tqdm(
                total=len(users),
                desc=f"recommend ({getattr(model, 'name', '?')})",
                unit="customer",
                disable=not progress,
                smoothing=0.1,
            ) as bar,
        ):
            if header:
                f.write("customer_id,prediction\n")
            for b in range(0, len(users), block_size):
                part = users[b : b + block_size]
                lists = recommend_lists(model, part, k, t, restrict)
                t0 = time.perf_counter()
                write_rows(f, part, lists, fill, k)
                t["write"] = t.get("write", 0.0) + time.perf_counter() - t0
                bar.update(len(part))
    return Path(out_path)
