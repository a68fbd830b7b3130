"""Are category-filtered "similar items" lists full? Short lists on a real catalog, with the server's index.

Loads a shop (image features cached in the workspace), builds the index the server builds (HNSW from 10,000
items), then for each product group asks `--per-group` random items for their k nearest items of that group
(k = 12 and 100) and counts lists shorter than min(k, items in the group). Figures, never assertions.

    .venv/bin/python benchmarks/category_fill.py --data ../shared/data/hm
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--index", default="hnsw")
    ap.add_argument("--per-group", type=int, default=6)
    ap.add_argument("--column", default="product_group_name")
    args = ap.parse_args()

    from fashionrec.index import create_index
    from fashionrec.workflows.shop import load_shop

    t = time.time()
    shop = load_shop(args.data, workspace=args.workspace, progress=False)
    feats = shop.image_features
    cats = shop.catalog.metadata[args.column].reindex(feats.ids).tolist()
    cats = [None if (c is None or c != c) else c for c in cats]
    idx = create_index(args.index, dim=feats.vectors.shape[1], n_items=len(feats.ids))
    idx.add(feats.ids, feats.vectors, categories=cats)
    print(f"{len(feats.ids):,} items, index {idx.kind}, loaded in {time.time() - t:.0f}s")
    rng = np.random.default_rng(0)
    groups = sorted({c for c in cats if c})
    sizes = {g: sum(c == g for c in cats) for g in groups}
    short, total, worst = 0, 0, []
    t = time.perf_counter()
    for k in (12, 100):
        for g in groups:
            for q in rng.choice(len(feats.ids), args.per_group, replace=False):
                got, _ = idx.search(feats.vectors[q][None], k, category=g, exclude=[feats.ids[q]])
                n = int((got[0] != "").sum())
                want = min(k, sizes[g] - (cats[q] == g))
                total += 1
                if n < want:
                    short += 1
                    worst.append((n / want, g, k, n, want))
    ms = (time.perf_counter() - t) * 1000 / total
    print(f"{len(groups)} groups, {total} queries ({ms:.2f} ms each): {short} short lists")
    for _, g, k, n, want in sorted(worst)[:6]:
        print(f"  {g!r} k={k}: {n} of {want}")


if __name__ == "__main__":
    main()
