"""Fit time of the Cornac peers (vbpr, amr) on a shop folder, fed the shop's image features like `visual`, and (with
--window) one leak-free test window of the project's protocol against `visual` and `repurchase`.

    nice -n 10 .venv/bin/python benchmarks/peers_fit.py --data ../shared/data/hm
    nice -n 10 .venv/bin/python benchmarks/peers_fit.py --data ../shared/data/hm --window

The image features come from the workspace's feature cache (every photo embedded once, as `fashionrec evaluate`
does); a cold workspace embeds the whole catalog first, which is not counted in the fit time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--models", nargs="+", default=["vbpr", "amr"])
    ap.add_argument("--epochs", type=int, default=None, help="n_epochs (default: the models' own)")
    ap.add_argument("--window", action="store_true", help="also score the last 28-day window (MAP@12)")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"skipped: {args.data} not found")
        return 0
    import torch

    from fashionrec.recommend import create_recommender
    from fashionrec.workflows.shop import load_shop, rec_data

    t = time.time()
    shop = load_shop(args.data, with_images=True, progress=False)
    print(f"shop loaded in {time.time() - t:.1f}s (embedding {shop.embed_seconds:.1f}s)", flush=True)
    data = rec_data(shop)
    pairs = data.matrix.nnz
    dim = shop.image_features.vectors.shape[1]
    print(
        f"{len(data.user_ids)} customers, {data.n_items} candidate items ({int(data.bought_before().sum())} bought), "
        f"{len(data.events)} purchases = {pairs} customer-item pairs; image features {dim} dims; "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    params = {} if args.epochs is None else {"n_epochs": args.epochs}
    for name in args.models:
        import cornac  # noqa: F401  (imported once, outside the timing)

        model = create_recommender(name, **params)
        t = time.time()
        model.fit(data)
        fit = time.time() - t
        user = data.user_ids[0]
        h, ts = data.history(user)
        t = time.time()
        model.scores(h, ts, user)
        known = time.time() - t
        t = time.time()
        model.scores(h, ts, None)
        fold = time.time() - t
        print(
            f"{name}: fit {fit:.1f}s ({model.n_epochs} epochs, k={model.k}); scores for a customer "
            f"{1000 * known:.1f} ms, for a history folded in ({len(h)} items) {1000 * fold:.0f} ms",
            flush=True,
        )
    if args.window:
        from fashionrec.evaluation.protocol import evaluate_windows

        factories = {m: (lambda m=m: create_recommender(m, **params)) for m in args.models}
        factories.update({m: (lambda m=m: create_recommender(m)) for m in ("repurchase", "visual")})
        df, _ = evaluate_windows(
            lambda ev: rec_data(shop, ev),
            factories,
            shop.interactions.events,
            n_windows=1,
            baseline="repurchase",
            progress=False,
        )
        with __import__("pandas").option_context("display.width", 200, "display.max_columns", 30):
            print(df)
    return 0


if __name__ == "__main__":
    sys.exit(main())
