"""`fashionrec demo`: the offline end-to-end demo on a synthetic shop (or, with --fmnist, the Fashion-MNIST
classifier demo), and with --serve the web page on that shop."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fashionrec.cli import common
from fashionrec.config import DEFAULT_BACKBONE, DEFAULT_INPUT_SIZE

SHOP_INPUT_SIZE = 64  # fashionrec.workflows.shop_demo.DEMO_INPUT_SIZE (not imported: --help stays light)
SHOP_MODELS = "popularity,repurchase,visual,taste,hybrid"


def cmd_demo(args) -> int:
    if args.serve:
        return _serve(args)
    if args.fmnist:
        return _fmnist(args)
    from fashionrec.io import write_json
    from fashionrec.workflows.shop_demo import run_shop_demo

    t0 = time.time()
    size = args.input_size or SHOP_INPUT_SIZE
    print(f"fashionrec demo: a synthetic shop, {args.backbone} at {size}px (--fmnist: the classifier demo)")
    res = run_shop_demo(
        args.out,
        n_items=args.items,
        n_customers=args.customers,
        seed=args.seed,
        models=[m for m in args.models.split(",") if m],
        windows=args.windows,
        backbone=args.backbone,
        input_size=size,
        workspace=common.workspace(args),
        progress=common.progress(args),
        fmnist_dir=args.data_dir,
        say=print,
    )
    write_json(Path(args.out) / "demo.json", {"seconds": round(time.time() - t0, 1), **common.args_dict(args)})
    print(
        f"report: {res.out}/report.md (customer.png, similar.png, tags.csv, recommendations.csv, evaluation/) "
        f"in {time.time() - t0:.0f}s; `fashionrec demo --serve` shows the shop in a browser"
    )
    return 0


def _serve(args) -> int:
    from fashionrec.workflows.serve import serve_shop
    from fashionrec.workflows.shop_demo import SHOP_DIR, ensure_shop

    shop = Path(args.out) / SHOP_DIR
    if ensure_shop(
        shop, n_items=args.items, n_customers=args.customers, seed=args.seed, fmnist_dir=args.data_dir, rebuild=False
    ):
        print(f"built the synthetic shop in {shop}/")
    serve_shop(shop, host=args.host, port=args.port, workspace=common.workspace(args), progress=common.progress(args))
    return 0


def _fmnist(args) -> int:
    """Offline Fashion-MNIST: embed -> few-label classifier -> evaluation -> report folder."""
    from fashionrec.io import write_json
    from fashionrec.training.tasks import ClassifierConfig
    from fashionrec.workflows.experiment import demo_classifier, demo_data, demo_label_efficiency

    t0 = time.time()
    out = Path(args.out)
    size = args.input_size or DEFAULT_INPUT_SIZE
    data = demo_data(args.data_dir, args.pool, args.test_size, args.seed)
    cfg = ClassifierConfig(method="linear-probe", backbone=args.backbone, input_size=size, seed=args.seed)
    print(
        f"fashionrec demo: {args.backbone} at {size}px, Fashion-MNIST ({len(data.x_pool)} train pool, "
        f"{len(data.x_test)} test images), {args.labels_per_class} labels per class"
    )
    cache, progress = common.feature_cache(args), common.progress(args)
    m = demo_classifier(data, out, cfg, args.labels_per_class, cache=cache, progress=progress)
    print(f"few-label classifier: test accuracy {m['test_accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    print("label-efficiency curve (1 seed; `fashionrec experiment label-efficiency` runs the full protocol):")
    demo_label_efficiency(data, out, cfg, cache=cache, progress=progress)
    write_json(out / "demo.json", {"seconds": round(time.time() - t0, 1), **common.args_dict(args)})
    print(
        f"report: {out}/ (metrics.json, confusion.png, predictions.png, label_efficiency/curve.png) "
        f"in {time.time() - t0:.0f}s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help="offline end-to-end demo on a synthetic shop; writes a report folder",
        description="Build a synthetic shop (Fashion-MNIST garments in palette colours, generated customers and "
        "purchases, labelled synthetic) in OUT/shop, then tag its new arrivals, find similar items, recommend for "
        "every customer and compare recommenders on leak-free windows; writes OUT/report.md with its figures. "
        "--fmnist: the Fashion-MNIST few-label classifier demo instead. --serve: the web page on the synthetic shop.",
        epilog=common.examples(
            "fashionrec demo",
            "fashionrec demo --items 300 --customers 150 --out small-demo",
            "fashionrec demo --serve --port 8080",
            "fashionrec demo --fmnist --labels-per-class 5 --out demo5",
        ),
    )
    d.add_argument("--out", default="fashionrec-demo", help="report folder to write (the shop goes in OUT/shop)")
    d.add_argument("--items", type=int, default=600, help="synthetic shop: about this many articles (photos)")
    d.add_argument("--customers", type=int, default=300, help="synthetic shop: customers")
    d.add_argument("--models", default=SHOP_MODELS, help="synthetic shop: recommenders to evaluate")
    d.add_argument("--windows", type=int, default=2, help="synthetic shop: 28-day test windows of the evaluation")
    d.add_argument("--backbone", default=DEFAULT_BACKBONE, help=common.BACKBONE_HELP)
    d.add_argument(
        "--input-size",
        type=int,
        default=None,
        help=f"square input resolution in pixels (default {SHOP_INPUT_SIZE} for the shop, {DEFAULT_INPUT_SIZE} "
        "with --fmnist)",
    )
    d.add_argument("--seed", type=int, default=0, help="random seed (the shop's contents; which images are labelled)")
    d.add_argument("--fmnist", action="store_true", help="the Fashion-MNIST few-label classifier demo instead")
    d.add_argument(
        "--data-dir",
        help="Fashion-MNIST IDX folder, for the shop's garments too (default /usr/share/datasets/fashion-mnist)",
    )
    d.add_argument("--labels-per-class", type=int, default=10, help="with --fmnist: labelled training images per class")
    d.add_argument(
        "--pool", type=int, default=3000, help="with --fmnist: train images (labelled subset drawn from them)"
    )
    d.add_argument("--test-size", type=int, default=2000, help="with --fmnist: test images to evaluate on")
    d.add_argument("--serve", action="store_true", help="serve the web page on OUT/shop (built first if missing)")
    d.add_argument("--port", type=int, default=8000, help="with --serve: TCP port")
    d.add_argument("--host", default="127.0.0.1", help="with --serve: address to bind")
    d.set_defaults(func=cmd_demo)
