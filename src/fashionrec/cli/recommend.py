"""Recommendation: recommend (a Kaggle-format file for every customer), similar, evaluate."""

from __future__ import annotations

import argparse
import sys

from fashionrec.cli import common
from fashionrec.config import DEFAULT_MODEL

ALL_MODELS = "popularity,repurchase,itemknn,als,bpr,content,visual,taste,hybrid"


def cmd_recommend(args) -> int:
    from fashionrec.workflows.recommend import read_items, read_users, recommend_all

    sub = recommend_all(
        args.data,
        args.out,
        model=args.model,
        k=args.k,
        users=read_users(args.users) if args.users else None,
        backbone=args.backbone,
        input_size=args.input_size,
        inference=args.inference,
        workspace=common.workspace(args),
        progress=common.progress(args),
        block_size=args.block_size,
        workers=args.workers,
        ray_address=args.ray_address,
        items=read_items(args.items) if args.items else None,
    )
    print(
        f"wrote {sub.n_rows} rows ({args.k} items each, model {sub.model}) to {args.out}: load+embed "
        f"{sub.load_seconds:.1f}s (embedding {sub.embed_seconds:.1f}s, {sub.n_unreadable} unreadable images skipped), "
        f"fit {sub.fit_seconds:.1f}s, recommend {sub.recommend_seconds:.1f}s "
        f"({1000 * sub.recommend_seconds / max(sub.n_rows, 1):.2f} ms/customer), total {sub.seconds:.1f}s",
        file=sys.stderr,
    )
    return 0


def cmd_similar(args) -> int:
    from fashionrec.workflows.recommend import similar_items

    for r in similar_items(
        args.data,
        args.item,
        model=args.model,
        k=args.k,
        backbone=args.backbone,
        input_size=args.input_size,
        inference=args.inference,
        workspace=common.workspace(args),
        progress=common.progress(args),
    ):
        print(f"{r.item}\t{r.score:.4f}\t{r.name}")
    return 0


def cmd_evaluate(args) -> int:
    from fashionrec.workflows.recommend import evaluate_recommenders, write_comparison

    c = evaluate_recommenders(
        args.data,
        [m for m in args.models.split(",") if m],
        windows=args.windows,
        split_date=args.split_date,
        test_days=args.test_days,
        k=args.k,
        baseline=args.baseline,
        backbone=args.backbone,
        input_size=args.input_size,
        inference=args.inference,
        workspace=common.workspace(args),
        progress=common.progress(args),
        taste=not args.no_taste,
        taste_reference=args.taste_reference,
    )
    print(c.markdown)
    if args.out:
        write_comparison(c, args.out, common.args_dict(args))
        print(f"-> {args.out}/comparison.md, comparison.json, comparison.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("recommend", help="top-k for every customer, in the H&M Kaggle submission format")
    r.add_argument(
        "--data", required=True, help="H&M-layout folder: transactions.csv, customers.csv, images/, articles.csv"
    )
    r.add_argument("--k", type=int, default=12)
    r.add_argument("--out", required=True)
    r.add_argument("--model", default=None, help=f"{ALL_MODELS.replace(',', '|')} (default {DEFAULT_MODEL})")
    r.add_argument("--users", help="file of customer ids (CSV with customer_id, or one per line)")
    r.add_argument(
        "--items",
        default=None,
        help="rank only these items for every customer (a 'new in' list): one article_id per line, or a CSV with an "
        "article_id column; every listed item is ranked by the model, none added (default: the whole catalog)",
    )
    common.add_backbone_args(r, adapted_by_default=True)
    r.add_argument(
        "--block-size",
        type=int,
        default=2048,
        help="customers whose candidates and features are built at once (memory grows with it)",
    )
    r.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="above 1: shard the customers over this many Ray workers (same output, row for row); auto (default): "
        "every core from 100,000 customers on, 1 below",
    )
    r.add_argument("--ray-address", default=None, help="with --workers: existing Ray cluster (default: a local one)")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser("similar", help="items similar to one item")
    s.add_argument("--data", required=True)
    s.add_argument("--item", required=True)
    s.add_argument("--k", type=int, default=12)
    s.add_argument("--model", default="visual")
    common.add_backbone_args(s, adapted_by_default=True)
    s.set_defaults(func=cmd_similar)

    e = sub.add_parser("evaluate", help="leak-free evaluation on several time windows: compare recommenders")
    e.add_argument("--data", required=True)
    e.add_argument("--windows", type=int, default=4, help="consecutive test windows ending at the last date (pooled)")
    e.add_argument("--split-date", default=None, help="evaluate one window starting at this date instead")
    e.add_argument("--test-days", type=int, default=28)
    e.add_argument("--k", type=int, default=12)
    e.add_argument("--baseline", default="repurchase", help="model the others are compared with (paired bootstrap)")
    e.add_argument("--models", default=ALL_MODELS, help="comma-separated recommenders to compare")
    e.add_argument(
        "--taste-reference",
        default=None,
        help="model the taste metrics (new-item taste AUC, colour pick) are compared with, paired (default: visual "
        "when evaluated, else --baseline)",
    )
    e.add_argument(
        "--no-taste", action="store_true", help="skip the taste metrics (they score every new item for every customer)"
    )
    common.add_backbone_args(e, adapted_by_default=True)
    e.add_argument("--out", default=None, help="folder for comparison.md/.json/.png")
    e.set_defaults(func=cmd_evaluate)


def _workers(value: str):
    """--workers: a positive integer or 'auto' (argparse type)."""
    import argparse

    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', not {value!r}")
    return n
