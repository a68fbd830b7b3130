"""`recommend_all`: the batch job's entry point and its local runner (one process); workers > 1 go to
`fashionrec.recommend.batch.ray`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashionrec.io import atomic_path
from fashionrec.recommend.batch.rows import Fill, write_blocks

AUTO_WORKERS_FROM = 100_000  # customers: below, Ray's start-up and the model transfer cost more than a 2nd core saves


def resolve_workers(value, customers: int) -> int:
    """A worker count: a positive number, or 'auto' = every core this process may use from AUTO_WORKERS_FROM
    customers on (1M customers on 2 cores: the batch step 1.95x faster), 1 below."""
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


def _restricted(model, items: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(catalog positions of `items`, the listed items by sales): every listed item is scored by the model; a
    customer it cannot score (no history for a content model) gets the listed items by sales."""
    if not len(items):
        from fashionrec.errors import FashionrecError

        raise FashionrecError("the item list is empty")
    restrict = model.item_indices(items)
    sales = np.asarray(model.data.matrix.sum(0)).ravel()
    known = restrict[restrict < len(sales)]
    order = np.concatenate([known[np.argsort(-sales[known], kind="stable")], restrict[restrict >= len(sales)]])
    return restrict, [model.data.item_ids[j] for j in order]


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
    fill: items that complete short lists (default: `popular_fill`, computed only if a list is short);
    workers > 1: Ray (local, or `address`), 'auto': `resolve_workers`;
    timings: if a dict, seconds spent in candidates (+features), ranking and write are added to it."""
    if k < 1:
        raise ValueError("k must be a positive integer")
    if block_size < 1:
        raise ValueError("block_size must be a positive integer")
    users = list(users)
    workers = resolve_workers(workers, len(users))
    restrict = None
    if items is not None:
        restrict, fill = _restricted(model, items)
        workers = 1
    t = timings if timings is not None else {}
    if workers > 1:
        from fashionrec.recommend.batch.ray import recommend_all_ray

        return recommend_all_ray(
            model,
            users,
            k,
            out_path,
            workers=workers,
            block_size=block_size,
            progress=progress,
            fill=Fill(model, k, fill).items(),  # the workers hold a slim model: the fill is made here
            header=header,
            address=address,
            timings=t,
        )
    from tqdm.auto import tqdm

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
            write_blocks(
                f,
                model,
                users,
                k,
                Fill(model, k, fill),
                block_size=block_size,
                timings=t,
                items=restrict,
                done=bar.update,
            )
    return Path(out_path)
