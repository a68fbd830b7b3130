"""CLI commands for recommendation: recommend, similar, evaluate, embed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fashionrec.errors import FashionrecError


def _read_users(path: str) -> list[str]:
    import pandas as pd

    from fashionrec.data.catalog import read_table

    p = Path(path)
    if p.suffix.lower() in {".csv", ".parquet"}:
        df = read_table(p, dtype=str)
        col = "customer_id" if "customer_id" in df.columns else df.columns[0]
        return df[col].dropna().astype(str).drop_duplicates().tolist()
    if not p.exists():
        raise FashionrecError(f"{p}: users file not found")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def cmd_recommend(args) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    from fashionrec.cli import _progress, _workspace
    from fashionrec.io import atomic_path
    from fashionrec.pipeline import DEFAULT_MODEL, fit_recommender, load_shop

    t0 = time.time()
    name = args.model or DEFAULT_MODEL
    needs_images = name in {"visual", "hybrid"}
    shop = load_shop(args.data, with_images=needs_images, workspace=_workspace(args), progress=_progress(args),
                     backbone=args.backbone, input_size=args.input_size)
    t_load = time.time() - t0
    model = fit_recommender(shop, name, cache_dir=_workspace(args))
    t_fit = time.time() - t0 - t_load
    if args.users:
        users = _read_users(args.users)
    else:  # everyone in customers.csv, and buyers missing from it (they still get a row)
        buyers = shop.interactions.events["user"].unique().tolist()
        known = set(shop.customers)
        users = list(shop.customers) + sorted(u for u in set(buyers) if u not in known)
    from fashionrec.recommend.baselines import Popularity

    fallback = [r.item for r in Popularity().fit(model.data).recommend(None, args.k * 2, explain=False)]
    rows = []
    block = 512
    with tqdm(total=len(users), desc=f"recommend ({name})", unit="user", disable=not _progress(args)) as bar:
        for b in range(0, len(users), block):
            part = users[b : b + block]
            recs = model.recommend_many(part, args.k)
            for u in part:
                items = list(recs.get(u, []))[: args.k]
                if len(items) < args.k:  # every row gets k items: fill from popularity
                    seen = set(items)
                    items += [i for i in fallback if i not in seen and not seen.add(i)][: args.k - len(items)]
                rows.append((u, " ".join(items[: args.k])))
            bar.update(len(part))
    df = pd.DataFrame(rows, columns=["customer_id", "prediction"])
    with atomic_path(args.out, suffix=".tmp.csv") as tmp:
        df.to_csv(tmp, index=False)
    total = time.time() - t0
    print(f"wrote {len(df)} rows ({args.k} items each, model {name}) to {args.out}: load+embed {t_load:.1f}s "
          f"(embedding {shop.embed_seconds:.1f}s, {len(shop.failures)} unreadable images skipped), fit {t_fit:.1f}s, "
          f"total {total:.1f}s", file=sys.stderr)
    return 0


def cmd_similar(args) -> int:
    from fashionrec.cli import _progress, _workspace
    from fashionrec.pipeline import fit_recommender, load_shop

    shop = load_shop(args.data, with_images=args.model in {"visual", "hybrid"}, workspace=_workspace(args),
                     progress=_progress(args), backbone=args.backbone, input_size=args.input_size)
    model = fit_recommender(shop, args.model, cache_dir=_workspace(args))
    meta = shop.catalog.metadata
    for r in model.similar_items(args.item, args.k):
        name = meta.loc[r.item, "prod_name"] if r.item in meta.index and "prod_name" in meta.columns else ""
        print(f"{r.item}\t{r.score:.4f}\t{name}")
    return 0


def cmd_evaluate(args) -> int:
    from fashionrec.cli import _progress, _workspace
    from fashionrec.evaluation.protocol import evaluate_windows, format_windows_table, plot_windows
    from fashionrec.io import write_json, write_text
    from fashionrec.pipeline import load_shop, rec_data
    from fashionrec.recommend import create_recommender

    models = [m for m in args.models.split(",") if m]
    shop = load_shop(args.data, with_images=any(m in {"visual", "hybrid", "content"} for m in models),
                     workspace=_workspace(args), progress=_progress(args), backbone=args.backbone,
                     input_size=args.input_size)
    events = shop.interactions.events
    n_windows, last = args.windows, None
    if args.split_date:  # one window starting at the given date
        import pandas as pd

        n_windows = 1
        last = pd.Timestamp(args.split_date) + pd.Timedelta(days=args.test_days - 1)
        events = events[events["timestamp"] <= last + pd.Timedelta(days=1)]
    baseline = args.baseline if args.baseline in models else None
    factories = {m: (lambda m=m: create_recommender(m)) for m in models}
    df, details = evaluate_windows(lambda ev: rec_data(shop, ev), factories, events, n_windows=n_windows,
                                   test_days=args.test_days, k=args.k, baseline=baseline, progress=_progress(args))
    table = format_windows_table(df, details["sources"])
    print(table)
    if args.out:
        out = Path(args.out)
        write_text(out / "comparison.md", table)
        rows = df.reset_index().to_dict(orient="records")
        write_json(out / "comparison.json", {"attrs": df.attrs, "rows": rows, "sources": details["sources"],
                                             "args": {k: v for k, v in vars(args).items() if k != "func"}})
        write_json(out / "per_pair_ap.json", details["ap"])
        plot_windows(df, out / "comparison.png")
        print(f"-> {out}/comparison.md, comparison.json, comparison.png")
    return 0


def cmd_embed(args) -> int:
    import numpy as np

    from fashionrec.cli import _progress, _workspace
    from fashionrec.data.catalog import load_catalog
    from fashionrec.io import atomic_path

    cat = load_catalog(args.data)
    t0 = time.time()
    if args.engine == "ray":
        from fashionrec.distributed import embed_with_ray

        ids, feats = embed_with_ray(cat.image_paths, backbone=args.backbone, input_size=args.input_size,
                                    num_actors=args.num_actors, batch_size=args.batch_size, address=args.ray_address)
        failures = {}
    else:
        from fashionrec.backbones import create_backbone
        from fashionrec.features import FeatureCache, embed_image_files

        res = embed_image_files(create_backbone(args.backbone, input_size=args.input_size), cat.image_paths,
                                cache=FeatureCache(_workspace(args)), progress=_progress(args), batch_size=args.batch_size)
        ids, feats, failures = res.ids, res.features, res.failures
    secs = time.time() - t0
    with atomic_path(args.out, suffix=".tmp.npz") as tmp:
        np.savez(tmp, ids=np.array(ids), features=feats)
    print(f"embedded {len(ids)} images ({len(failures)} skipped) with {args.engine} in {secs:.1f}s "
          f"({len(ids) / max(secs, 1e-9):.1f} img/s) -> {args.out}", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    r = sub.add_parser("recommend", help="top-k for every customer, in the H&M Kaggle submission format")
    r.add_argument("--data", required=True, help="H&M-layout folder: transactions.csv, customers.csv, images/, articles.csv")
    r.add_argument("--k", type=int, default=12)
    r.add_argument("--out", required=True)
    r.add_argument("--model", default=None, help="popularity|repurchase|itemknn|als|bpr|content|visual|hybrid (default hybrid)")
    r.add_argument("--users", help="file of customer ids (CSV with customer_id, or one per line)")
    r.add_argument("--backbone", default="efficientnet_lite0")
    r.add_argument("--input-size", type=int, default=96)
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser("similar", help="items similar to one item")
    s.add_argument("--data", required=True)
    s.add_argument("--item", required=True)
    s.add_argument("--k", type=int, default=12)
    s.add_argument("--model", default="visual")
    s.add_argument("--backbone", default="efficientnet_lite0", help="a backbone name or a `fashionrec adapt` folder")
    s.add_argument("--input-size", type=int, default=96)
    s.set_defaults(func=cmd_similar)

    e = sub.add_parser("evaluate", help="leak-free evaluation on several time windows: compare recommenders")
    e.add_argument("--data", required=True)
    e.add_argument("--windows", type=int, default=4, help="consecutive test windows ending at the last date (pooled)")
    e.add_argument("--split-date", default=None, help="evaluate one window starting at this date instead")
    e.add_argument("--test-days", type=int, default=28)
    e.add_argument("--k", type=int, default=12)
    e.add_argument("--baseline", default="repurchase", help="model the others are compared with (paired bootstrap)")
    e.add_argument("--models", default="popularity,repurchase,itemknn,als,bpr,content,visual,hybrid")
    e.add_argument("--backbone", default="efficientnet_lite0", help="a backbone name or a `fashionrec adapt` folder")
    e.add_argument("--input-size", type=int, default=96)
    e.add_argument("--out", default=None, help="folder for comparison.md/.json/.png")
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("embed", help="embed every catalog image (local or Ray)")
    m.add_argument("--data", required=True)
    m.add_argument("--out", required=True, help=".npz with ids and features")
    m.add_argument("--engine", choices=["local", "ray"], default="local")
    m.add_argument("--backbone", default="efficientnet_lite0")
    m.add_argument("--input-size", type=int, default=96)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--num-actors", type=int, default=2)
    m.add_argument("--ray-address", default=None, help="existing Ray cluster (default: start a local one)")
    m.set_defaults(func=cmd_embed)
