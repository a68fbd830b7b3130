"""Recommendation: recommend (a Kaggle-format file for every customer), similar, evaluate."""

from __future__ import annotations

import argparse
import sys

from fashionrec.cli import common
from fashionrec.config import DEFAULT_MODEL

MODEL_HELP = "a registered recommender (an unknown name lists them): popularity, repurchase, visual, hybrid, ..."


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
    from fashionrec.recommend import names
    from fashionrec.workflows.recommend import evaluate_recommenders, write_comparison

    if args.models is None:
        args.models = ",".join(names())
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
    r = sub.add_parser(
        "recommend",
        help="top-k for every customer, in the H&M Kaggle submission format",
        description="Write customer_id,prediction (k space-separated item ids) for every customer (or --users).",
        epilog=common.examples(
            "fashionrec recommend --data shop --out recs.csv",
            "fashionrec recommend --data shop --recommender repurchase --k 24 --users vip.csv --out vip.csv",
        ),
    )
    r.add_argument(
        "--data", required=True, help="H&M-layout folder: transactions.csv, customers.csv, images/, articles.csv"
    )
    r.add_argument("--k", type=int, default=12, help="items per customer")
    r.add_argument("--out", required=True, help="CSV file to write")
    r.add_argument(
        "--recommender",
        "--model",
        dest="model",
        action=common.RenamedOption,
        deprecated=("--model",),
        default=None,
        help=f"which recommender: {MODEL_HELP} (default {DEFAULT_MODEL})",
    )
    r.add_argument(
        "--users", help="file of customer ids (CSV with customer_id, or one per line; default: every customer)"
    )
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
        "every core from 100,000 customers on, 1 below (and 1 without the distributed extra, with a warning)",
    )
    r.add_argument("--ray-address", default=None, help="with --workers: existing Ray cluster (default: a local one)")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser(
        "similar",
        help="items similar to one item",
        description="Print the items most similar to --item: item id, score and name, one per line.",
        epilog=common.examples("fashionrec similar --data shop --item 0706016001 --k 12"),
    )
    s.add_argument("--data", required=True, help="H&M-layout folder")
    s.add_argument("--item", required=True, help="the article id to start from")
    s.add_argument("--k", type=int, default=12, help="items to list")
    s.add_argument(
        "--recommender",
        "--model",
        dest="model",
        action=common.RenamedOption,
        deprecated=("--model",),
        default="visual",
        help=f"which recommender's notion of similar: {MODEL_HELP}",
    )
    common.add_backbone_args(s, adapted_by_default=True)
    s.set_defaults(func=cmd_similar)

    e = sub.add_parser(
        "evaluate",
        help="leak-free evaluation on several time windows: compare recommenders",
        description="Refit each recommender before each test window and score its top-k on the window's purchases "
        "(MAP@k, recall, hit rate, paired bootstrap against --baseline) and how well each reads a customer's taste "
        "(new-item taste AUC, colour pick, paired against --taste-reference); prints the tables.",
        epilog=common.examples(
            "fashionrec evaluate --data shop --out runs/eval",
            "fashionrec evaluate --data shop --recommenders repurchase,hybrid --windows 2 --test-days 14",
        ),
    )
    e.add_argument("--data", required=True, help="H&M-layout folder")
    e.add_argument("--windows", type=int, default=4, help="consecutive test windows ending at the last date (pooled)")
    e.add_argument(
        "--split-date",
        default=None,
        help="evaluate one window starting at this date instead (YYYY-MM-DD; default: --windows windows)",
    )
    e.add_argument("--test-days", type=int, default=28, help="length of each test window in days")
    e.add_argument("--k", type=int, default=12, help="list length scored (MAP@k, Recall@k)")
    e.add_argument("--baseline", default="repurchase", help="model the others are compared with (paired bootstrap)")
    e.add_argument(
        "--recommenders",
        "--models",
        dest="models",
        action=common.RenamedOption,
        deprecated=("--models",),
        default=None,
        help="comma-separated recommenders to compare (default: every registered one, cheap ones first)",
    )
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
    e.add_argument("--out", default=None, help="folder for comparison.md/.json/.png (default: print the table only)")
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
