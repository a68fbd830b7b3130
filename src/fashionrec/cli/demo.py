"""`fashionrec demo`: the offline end-to-end demo on Fashion-MNIST (and optionally the web page)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fashionrec.cli import common


def cmd_demo(args) -> int:
    """Offline Fashion-MNIST: embed -> few-label classifier -> evaluation -> report folder."""
    from fashionrec.io import write_json
    from fashionrec.training.tasks import ClassifierConfig
    from fashionrec.workflows.experiment import demo_classifier, demo_data, demo_label_efficiency

    t0 = time.time()
    out = Path(args.out)
    data = demo_data(args.data_dir, args.pool, args.test_size, args.seed)
    cfg = ClassifierConfig(method="linear-probe", backbone=args.backbone, input_size=args.input_size, seed=args.seed)
    print(
        f"fashionrec demo: {args.backbone} at {args.input_size}px, Fashion-MNIST ({len(data.x_pool)} train pool, "
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
    if args.serve:
        from fashionrec.workflows.serve import serve_shop

        serve_shop(args.data, host=args.host, port=args.port, workspace=common.workspace(args), progress=progress)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help="offline end-to-end demo on Fashion-MNIST; writes a report folder",
        description="Embed Fashion-MNIST with a pretrained backbone, train a classifier from a few labels per class, "
        "evaluate it and write a report folder (metrics.json, confusion.png, predictions.png, label_efficiency/).",
        epilog=common.examples("fashionrec demo", "fashionrec demo --labels-per-class 5 --out demo5"),
    )
    d.add_argument("--out", default="fashionrec-demo", help="report folder to write")
    d.add_argument("--data-dir", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    common.add_backbone_args(d, inference=False)
    d.add_argument("--labels-per-class", type=int, default=10, help="labelled training images per class")
    d.add_argument("--pool", type=int, default=3000, help="train images available (labelled subset drawn from them)")
    d.add_argument("--test-size", type=int, default=2000, help="test images to evaluate on")
    d.add_argument("--seed", type=int, default=0, help="random seed (which images are labelled)")
    d.add_argument("--serve", action="store_true", help="then serve the web page on the H&M sample (--data)")
    d.add_argument("--data", default="../shared/data/hm", help="with --serve: the catalog to serve")
    d.add_argument("--port", type=int, default=8000, help="with --serve: TCP port")
    d.add_argument("--host", default="127.0.0.1", help="with --serve: address to bind")
    d.set_defaults(func=cmd_demo)
