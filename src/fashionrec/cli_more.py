"""CLI commands beyond train/predict/tag: demo, experiments (kept apart so cli.py stays readable)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fashionrec.errors import FashionrecError


def cmd_demo(args) -> int:
    """Offline Fashion-MNIST: embed -> few-label classifier -> evaluation -> report folder."""
    import numpy as np

    from fashionrec.cli import _cache, _progress
    from fashionrec.data.fashion_mnist import load_fashion_mnist, sample_per_class
    from fashionrec.evaluation.label_efficiency import run_label_efficiency
    from fashionrec.evaluation.plots import image_grid
    from fashionrec.io import write_json
    from fashionrec.training.tasks import ClassifierConfig, evaluate_classifier, train_image_classifier, write_run

    t0 = time.time()
    out = Path(args.out)
    d = load_fashion_mnist(args.data_dir)
    rng = np.random.default_rng(args.seed)
    pool = rng.permutation(len(d.y_train))[: args.pool]
    test = rng.permutation(len(d.y_test))[: args.test_size]
    x_pool, y_pool, x_te, y_te = d.x_train[pool], d.y_train[pool], d.x_test[test], d.y_test[test]
    cfg = ClassifierConfig(method="linear-probe", backbone=args.backbone, input_size=args.input_size, seed=args.seed)
    print(f"fashionrec demo: {args.backbone} at {args.input_size}px, Fashion-MNIST ({len(x_pool)} train pool, "
          f"{len(x_te)} test images), {args.labels_per_class} labels per class")
    idx = sample_per_class(y_pool, args.labels_per_class, args.seed)
    trained = train_image_classifier(x_pool[idx], y_pool[idx], list(d.classes), cfg, unlabelled=x_pool,
                                     cache=_cache(args), progress=_progress(args))
    result = evaluate_classifier(trained, x_te, y_te, cache=_cache(args))
    metrics = write_run(out, trained, result, extra={"labels_per_class": args.labels_per_class, "n_train": int(len(idx))})
    pred = result["_pred"]
    show = np.arange(min(32, len(x_te)))
    caps = [f"{d.classes[pred[i]]}\n(true: {d.classes[y_te[i]]})" for i in show]
    cols = ["green" if pred[i] == y_te[i] else "red" for i in show]
    image_grid([x_te[i] for i in show], caps, out / "predictions.png", colors=cols,
               title=f"{args.labels_per_class} labels/class: predicted (true); red = wrong")
    print(f"few-label classifier: test accuracy {metrics['test_accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    print("label-efficiency curve (1 seed; `fashionrec experiment label-efficiency` runs the full protocol):")
    smallest = int(np.bincount(y_pool).min())
    ks = [k for k in (1, 5, 10, 50) if k <= smallest]  # a small --pool cannot give 50 per class
    run_label_efficiency(x_pool, y_pool, x_te, y_te, list(d.classes), ks=ks, seeds=[args.seed],
                         methods=["pixels", "probe"], out_dir=out / "label_efficiency", classifier_cfg=cfg,
                         unlabelled=x_pool, cache=_cache(args), progress=_progress(args), title="Fashion-MNIST (demo)")
    write_json(out / "demo.json", {"seconds": round(time.time() - t0, 1), **{k: v for k, v in vars(args).items() if k != "func"}})
    print(f"report: {out}/ (metrics.json, confusion.png, predictions.png, label_efficiency/curve.png) "
          f"in {time.time() - t0:.0f}s")
    if args.serve:
        from fashionrec.cli_serve import serve_folder

        return serve_folder(args)
    return 0


def cmd_experiment(args) -> int:
    import numpy as np

    from fashionrec.cli import _cache, _classifier_config, _progress
    from fashionrec.evaluation.label_efficiency import run_label_efficiency

    if args.name != "label-efficiency":
        raise FashionrecError(f"unknown experiment '{args.name}'")
    from fashionrec.cli import _resolve_input_size

    _resolve_input_size(args, None if args.dataset == "fashion-mnist" else args.dataset)
    cfg = _classifier_config(args)
    ks = [k if k == "all" else int(k) for k in args.ks.split(",")]
    seeds = list(range(args.seeds))
    methods = args.methods.split(",")
    if args.dataset == "fashion-mnist":
        from fashionrec.data.fashion_mnist import load_fashion_mnist

        d = load_fashion_mnist(args.data_dir)
        rng = np.random.default_rng(0)
        pool = rng.permutation(len(d.y_train))[: args.pool]
        x_pool, y_pool, classes = d.x_train[pool], d.y_train[pool], list(d.classes)
        x_te, y_te = d.x_test[: args.test_size], d.y_test[: args.test_size]
        unl = x_pool
        title = f"Fashion-MNIST label efficiency ({args.backbone}, {args.input_size}px)"
    else:
        from fashionrec.cli import load_labelled_photos

        _, ids, x, y, classes, _ = load_labelled_photos(Path(args.dataset), args.label_column, args.input_size, _progress(args))
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(ids))
        te, tr = perm[: len(ids) // 5], perm[len(ids) // 5 :]
        # Classes too small to give k examples are dropped from the pool for that experiment.
        counts = np.bincount(y[tr], minlength=len(classes))
        kmax = max(int(k) for k in ks if k != "all") if any(k != "all" for k in ks) else 1
        keep_cls = np.flatnonzero(counts >= kmax)
        remap = -np.ones(len(classes), dtype=int)
        remap[keep_cls] = np.arange(len(keep_cls))
        tr = tr[np.isin(y[tr], keep_cls)]
        te = te[np.isin(y[te], keep_cls)]
        x_pool, y_pool, x_te, y_te = x[tr], remap[y[tr]], x[te], remap[y[te]]
        classes = [classes[c] for c in keep_cls]
        unl = x
        title = f"H&M {args.label_column} label efficiency ({args.backbone}, {args.input_size}px)"
    run_label_efficiency(x_pool, y_pool, x_te, y_te, classes, ks=ks, seeds=seeds, methods=methods, out_dir=args.out,
                         classifier_cfg=cfg, unlabelled=unl, cache=_cache(args), finetune_max_k=args.finetune_max_k,
                         title=title, progress=_progress(args), resume=not args.fresh)
    return 0


def add_commands(sub, add_model_args) -> None:
    d = sub.add_parser("demo", help="offline end-to-end demo on Fashion-MNIST; writes a report folder")
    d.add_argument("--out", default="fashionrec-demo")
    d.add_argument("--data-dir", help="Fashion-MNIST IDX folder")
    d.add_argument("--backbone", default="efficientnet_lite0")
    d.add_argument("--input-size", type=int, default=96)
    d.add_argument("--labels-per-class", type=int, default=10)
    d.add_argument("--pool", type=int, default=3000, help="train images available (labelled subset drawn from them)")
    d.add_argument("--test-size", type=int, default=2000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--serve", action="store_true", help="then serve the web page on the H&M sample (--data)")
    d.add_argument("--data", default="../shared/data/hm", help="with --serve: the catalog to serve")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--host", default="127.0.0.1")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("experiment", help="run an experiment: label-efficiency")
    e.add_argument("name", choices=["label-efficiency"])
    e.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist' or an H&M folder (with --label-column)")
    e.add_argument("--data-dir")
    e.add_argument("--label-column", default="product_group_name")
    e.add_argument("--ks", default="1,5,10,50,100,500,all")
    e.add_argument("--seeds", type=int, default=3)
    e.add_argument("--methods", default="pixels,scratch,probe,finetune")
    e.add_argument("--pool", type=int, default=10000, help="Fashion-MNIST train images to draw labels from ('all' = pool)")
    e.add_argument("--test-size", type=int, default=10000)
    e.add_argument("--finetune-max-k", type=int, default=100, help="fine-tune only up to this k (CPU budget); 'all' counts as the pool size")
    e.add_argument("--out", default="label-efficiency")
    e.add_argument("--fresh", action="store_true",
                   help="ignore runs already in OUT/results.json (default: keep them and run only what is missing)")
    add_model_args(e)
    e.set_defaults(func=cmd_experiment)
