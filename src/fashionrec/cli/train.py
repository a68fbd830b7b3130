"""Image classifiers: train, predict, tag, adapt, backbones."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from fashionrec.cli import common
from fashionrec.config import ADAPT_MAX_INPUT_SIZE, DEFAULT_BACKBONE
from fashionrec.device import add_device_option
from fashionrec.training.photo_defaults import ADAPT_CLUTTERED_INPUT_SIZE, AUTO_BACKBONE, CLUTTERED_BACKBONE


def cmd_train(args) -> int:
    from fashionrec.config import resolved_args
    from fashionrec.io import write_json
    from fashionrec.workflows.classify import FASHION_MNIST, train_and_evaluate, training_set

    device = common.device(args)
    defaults = common.resolve_photo_defaults(args, None if args.dataset == FASHION_MNIST else args.dataset)
    cfg = common.classifier_config(args)
    t0 = time.time()
    data = training_set(
        args.dataset,
        cfg=cfg,
        labels_per_class=args.labels_per_class,
        label_column=args.label_column,
        data_dir=args.data_dir if args.dataset == FASHION_MNIST else None,
        test_size=args.test_size,
        progress=common.progress(args),
    )
    out = Path(args.out)
    m = train_and_evaluate(
        data,
        cfg,
        out,
        cache=common.feature_cache(args),
        progress=common.progress(args),
        started=t0,
        extra={"dataset": args.dataset, "labels_per_class": args.labels_per_class},
        device=device,
    )
    write_json(out / "args.json", resolved_args(args))
    defaults.save(out)
    print(
        f"test_accuracy {m['test_accuracy']:.4f}  macro_f1 {m['macro_f1']:.4f}  "
        f"({m['n_test']} test images, {m['n_train']} labelled, {m['wall_seconds']:.0f}s) -> {out}/metrics.json"
    )
    if "calibration_test" in m:
        c, fit = m["calibration_test"], m["calibration_fit"]
        b, a = c["before"], c["after"]
        print(
            f"confidences calibrated: T={c['temperature']:.2f} (fitted on {fit['n']} images: {fit['on']}); test "
            f"images: mean confidence {b['mean_confidence']:.3f} -> {a['mean_confidence']:.3f} for accuracy "
            f"{a['accuracy']:.3f}, ECE {b['ece']:.3f} -> {a['ece']:.3f}"
        )
    return 0


def cmd_predict(args) -> int:
    from fashionrec.workflows.classify import predict_images

    pred = predict_images(
        args.model, args.images, args.top_k, on_skip=lambda why: print(f"skipped: {why}", file=sys.stderr)
    )
    w = csv.writer(sys.stdout)
    w.writerow(pred.header)
    w.writerows(pred.rows)
    return 0


def cmd_tag(args) -> int:
    from fashionrec.io import write_csv
    from fashionrec.workflows.classify import format_coverage, tag_columns, tag_with_model, tag_with_probe

    cols = tag_columns(args.label_column, required=not args.model)
    device = common.device(args)
    if args.model:
        tags = tag_with_model(
            args.data,
            args.model,
            cols,
            min_confidence=args.min_confidence,
            by_product=not args.per_photo,
            colour_booster=not args.no_colour_booster,
            progress=common.progress(args),
            device=device,
        )
    else:
        defaults = common.resolve_photo_defaults(args, args.data)
        defaults.save(Path(args.out).with_suffix(".photo_defaults.json"))
        tags = tag_with_probe(
            args.data,
            cols,
            common.classifier_config(args),
            min_confidence=args.min_confidence,
            by_product=not args.per_photo,
            colour_booster=not args.no_colour_booster,
            cache=common.feature_cache(args),
            progress=common.progress(args),
            device=device,
        )
    if not tags.n_unlabelled:
        print("every image already has a catalog row: nothing to tag", file=sys.stderr)
    for c in tags.per_column:
        print(
            f"tagged {c.n_tagged} images with {c.column} ({c.n_classes} classes, trained on {c.n_labelled} labelled"
            + ("; x the colour booster" if c.colour_booster else "")
            + f"; {c.n_unreadable} unreadable skipped)"
        )
        if c.temperature is not None:
            b, a = c.calibration["before"], c.calibration["after"]
            print(
                f"  {c.column} confidences calibrated on {c.calibration['n']} labelled photos of products held back "
                f"from a refit: T={c.temperature:.2f}, mean confidence {b['mean_confidence']:.3f} -> "
                f"{a['mean_confidence']:.3f} for accuracy {a['accuracy']:.3f}"
            )
            if c.calibration.get("coverage"):
                print(f"  {c.column}: tags kept at each --min-confidence, on those photos (calibrated):")
                print(format_coverage(c.calibration["coverage"]))
    if tags.from_siblings:
        print(
            "product-level columns, consistent within each product: "
            + "; ".join(
                f"{c} ({n} photos from labelled photos of the same product)" for c, n in tags.from_siblings.items()
            )
        )
    write_csv(tags.table, args.out)
    if tags.per_column:  # what each column's tags are worth, for choosing --min-confidence
        from dataclasses import asdict

        from fashionrec.io import write_json

        write_json(
            Path(args.out).with_suffix(".report.json"),
            {"columns": [asdict(c) for c in tags.per_column], "min_confidence": args.min_confidence},
        )
    if args.model:
        print(
            f"tagged {len(tags.table)} images with {', '.join(tags.columns)} using {args.model} "
            f"({tags.n_unreadable} unreadable skipped) -> {args.out}"
        )
    else:
        print(f"-> {args.out}")
    return 0


def cmd_adapt(args) -> int:
    import torch

    from fashionrec.config import resolved_args
    from fashionrec.errors import FashionrecError
    from fashionrec.io import write_json
    from fashionrec.training.adapt.config import DEFAULT_LABEL_COLUMNS
    from fashionrec.workflows.adapt import adapt_catalog

    if args.threads:
        torch.set_num_threads(args.threads)
    cols = DEFAULT_LABEL_COLUMNS if args.label_column in (None, "auto") else tuple(args.label_column.split(","))
    reasons = _resolve_adapt_backbone(args) if args.backbone == AUTO_BACKBONE else {}
    try:
        cfg = _adapt_config(args, cols)
    except ValueError as e:  # a setting out of range: the message names it
        raise FashionrecError(f"adapt: {e}") from None
    if common.progress(args):
        for key, why in reasons.items():
            print(f"adapt: {key}: {why}", file=sys.stderr)
    adapt_catalog(args.data, args.out, cfg, workspace=common.workspace(args), progress=common.progress(args))
    write_json(Path(args.out) / "args.json", resolved_args(args))
    return 0


def _resolve_adapt_backbone(args) -> dict:
    """`--backbone auto`: the backbone (and, for photos people took, the input size) chosen from a sample of the
    photos, recorded in args (saved in args.json). -> the reasons, by setting."""
    from fashionrec.errors import FashionrecError
    from fashionrec.training.adapt import catalog_for_training
    from fashionrec.training.photo_defaults import choose_adapt_backbone

    if args.weights:
        raise FashionrecError("adapt: --weights is a weights file for one backbone: name it with --backbone NAME")
    paths = list(catalog_for_training(args.data).image_paths.values())
    if not paths:
        raise FashionrecError(f"{args.data}: no images to adapt on")
    args.backbone, args.input_size, reasons = choose_adapt_backbone(paths, args.input_size)
    return reasons


def _adapt_config(args, cols):
    from fashionrec.training.adapt.config import AdaptConfig

    return AdaptConfig(
        backbone=args.backbone,
        weights=args.weights,
        input_size=args.input_size,
        label_columns=cols,
        group_column=args.group_column,
        holdout=args.holdout,
        embed_dim=args.embed_dim,
        train_blocks=args.train_blocks,
        max_minutes=args.max_minutes,
        lr=args.lr,
        trunk_lr=args.trunk_lr,
        temperature=args.temperature,
        metric_weight=args.metric_weight,
        memory_size=args.memory_size,
        freeze_bn=not args.train_bn,
        max_steps=args.max_steps,
        flips=not args.no_flips,
        gray=not args.no_gray,
        embedding_tta=None if args.embedding_views == "auto" else args.embedding_views,
        refit_heads=not args.no_refit_heads,
        colour_features=not args.no_colour_features,
        colour_booster=not args.no_colour_booster,
        seed=args.seed,
        init_from=args.init_from,
        head_fraction=args.head_fraction,
        onnx=not args.no_onnx,
        max_epochs=args.max_epochs or None,
        device=args.device,
    )


def cmd_backbones(args) -> int:
    from fashionrec.backbones import list_backbones

    for name in list_backbones():
        print(name)
    print("...and any timm model name (pretrained=True needs network, or --weights PATH)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_add_train, _add_predict, _add_tag, _add_adapt, _add_backbones):
        add(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train an image classifier and evaluate it",
        description="Train an image classifier on a labelled folder (or Fashion-MNIST) and evaluate it on a held-out "
        "fifth; writes model.pt (for `fashionrec predict`), metrics.json, confusion.png and config.json to --out.",
        epilog=common.examples(
            "fashionrec train --data shop --label-column product_group_name --out runs/group",
            "fashionrec train --data fashion-mnist --labels-per-class 10 --out runs/k10",
        ),
    )
    t.add_argument(
        "--data",
        "--dataset",
        dest="dataset",
        action=common.RenamedOption,
        deprecated=("--dataset",),
        required=True,
        help="a data folder (H&M layout, or images/ + labels.csv) or 'fashion-mnist'",
    )
    t.add_argument(
        "--data-dir", help="with --data fashion-mnist: its IDX folder (default /usr/share/datasets/fashion-mnist)"
    )
    t.add_argument(
        "--label-column",
        help="for a data folder: the articles.csv / labels.csv column to learn (required there; default: none)",
    )
    t.add_argument("--labels-per-class", default="all", help="K labelled examples per class, or 'all'")
    t.add_argument(
        "--test-size", type=int, default=None, help="evaluate on the first N test images only (default: all)"
    )
    t.add_argument("--out", required=True, help="folder for model.pt, metrics.json and the plots")
    common.add_classifier_args(t, backbone_from_photos=True)
    add_device_option(t)
    t.set_defaults(func=cmd_train)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser(
        "predict",
        help="top-k labels with probabilities for new images",
        description="Print image,rank,label,probability (CSV) for each image; unreadable images are skipped.",
        epilog=common.examples("fashionrec predict --model runs/group/model.pt new_photos/ > predictions.csv"),
    )
    pr.add_argument(
        "--model", required=True, help="model.pt written by `fashionrec train`, or a `fashionrec adapt` folder"
    )
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=3, help="labels per image")
    pr.set_defaults(func=cmd_predict)


def _add_tag(sub: argparse._SubParsersAction) -> None:
    tg = sub.add_parser(
        "tag",
        help="auto-tag catalog images that have no catalog row",
        description="Tag the photos of --data that have no catalog row: one classifier per column trained on the "
        "labelled photos (or the heads of an adapted --model). Writes a CSV: article_id, each column's tag and "
        "<column>_confidence.",
        epilog=common.examples(
            "fashionrec tag --data shop --label-column product_type_name,colour_group_name --out tags.csv",
            "fashionrec tag --data shop --model models/shop --min-confidence 0.7 --out tags.csv",
        ),
    )
    tg.add_argument("--data", required=True, help="H&M-layout folder (images/ + articles.csv) or images/ + labels.csv")
    tg.add_argument(
        "--label-column",
        default=None,
        help="comma-separated attributes, e.g. product_type_name,colour_group_name (with --model: default all heads)",
    )
    tg.add_argument(
        "--model",
        default=None,
        help="model folder from `fashionrec adapt`: tag with its heads (default: train a classifier per column)",
    )
    tg.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="below this probability the tag is 'unsure' (default 0: always the best guess); the probabilities are "
        "calibrated, so 0.7 keeps tags that are right about 70%% of the time or more",
    )
    tg.add_argument(
        "--per-photo",
        action="store_true",
        help="tag every photo on its own (default: the columns that describe a product, such as its type, agree "
        "within a product: taken from its labelled photos in other colours, else pooled over its photos)",
    )
    tg.add_argument(
        "--no-colour-booster",
        action="store_true",
        help="tag colour columns without the LightGBM model of the garment's colour descriptor (default: with "
        "--model, the folder's; without, one fitted on the same labelled photos as the classifier)",
    )
    tg.add_argument("--out", required=True, help="CSV file to write")
    common.add_classifier_args(tg, backbone_from_photos=True)
    add_device_option(tg)
    tg.set_defaults(func=cmd_tag)


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "adapt",
        help="fine-tune a backbone on the catalog's labels + same-product pairs -> model folder",
        description="Adapt an ImageNet backbone to the shop: attribute heads + a same-product similarity loss, within "
        "--max-minutes. Writes a model folder (weights.safetensors, fashionrec_model.json, metrics.json) that "
        "tag --model, predict --model and --backbone take; similar/recommend/evaluate/serve use it by default.",
        epilog=common.examples(
            "fashionrec adapt --data shop --out models/shop",
            "fashionrec adapt --data shop --out models/quick --max-minutes 10 --input-size 128",
        ),
    )
    a.add_argument(
        "--data",
        required=True,
        help="H&M-layout folder (images/ + articles.csv) or any labelled folder (images/ + labels.csv: an id column, "
        "label columns, optionally a group column)",
    )
    a.add_argument("--out", required=True, help="model folder to write (usable as --backbone / --model)")
    a.add_argument(
        "--backbone",
        default=AUTO_BACKBONE,
        help="the ImageNet backbone to start from (packaged: efficientnet_lite0/1/2, mobilenetv2; any timm name of "
        "the ResNet, ConvNeXt, ViT or EfficientNet families with --weights; default auto: "
        f"{CLUTTERED_BACKBONE} at {ADAPT_CLUTTERED_INPUT_SIZE} px for photos people took, when its weights are "
        f"installed, else {DEFAULT_BACKBONE})",
    )
    a.add_argument(
        "--weights", default=None, help="local weights file (state_dict) for --backbone (default: its packaged weights)"
    )
    a.add_argument(
        "--input-size",
        type=int,
        default=None,
        help=f"square input in pixels (default auto: the photos' padded side, at most {ADAPT_MAX_INPUT_SIZE}; CPU "
        "cost grows with its square)",
    )
    a.add_argument(
        "--label-columns",
        "--label-column",
        dest="label_column",
        default="auto",
        help="comma-separated columns to learn (auto: the H&M attribute columns present, else every column of "
        "labels.csv but the id and the group column)",
    )
    a.add_argument(
        "--group-column",
        default="auto",
        help="same value = same product (positives): auto = first 7 digits of H&M ids, else product_code, else none "
        "(two views of the same photo are the positives)",
    )
    a.add_argument("--holdout", type=float, default=0.15, help="share of products held out for evaluation")
    a.add_argument("--embed-dim", type=int, default=256, help="size of the similarity embedding")
    a.add_argument(
        "--train-blocks", type=int, default=3, help="top blocks that train; lower ones stay ImageNet (cached)"
    )
    a.add_argument(
        "--max-minutes",
        type=float,
        default=58.0,
        help="wall-clock budget of the whole run, in minutes",
    )
    a.add_argument(
        "--max-epochs",
        type=float,
        default=40.0,
        help="each training stage also ends after this many passes over the training photos (0: time only)",
    )
    _add_adapt_training(a)


def _add_adapt_training(a: argparse.ArgumentParser) -> None:
    """adapt's learning options: rates, losses, stages, augmentation, threads and seed."""
    a.add_argument("--lr", type=float, default=2e-3, help="heads and embedding learning rate")
    a.add_argument("--trunk-lr", type=float, default=6e-4, help="top block's learning rate (x0.7 per block below)")
    a.add_argument("--temperature", type=float, default=0.1, help="SupConLoss temperature")
    a.add_argument(
        "--metric-weight", type=float, default=1.0, help="weight of the same-product loss against the heads' losses"
    )
    a.add_argument(
        "--memory-size",
        type=int,
        default=4096,
        help="cross-batch memory: the metric loss also compares each batch with this many embeddings of earlier "
        "steps (0 = in-batch only)",
    )
    a.add_argument(
        "--train-bn",
        action="store_true",
        help="BatchNorm uses batch statistics while the trunk trains (default: it keeps its ImageNet statistics)",
    )
    a.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (default: no limit but the time)"
    )
    a.add_argument(
        "--init-from",
        default=None,
        help="continue training an earlier model folder, same data and split (default: start from ImageNet)",
    )
    a.add_argument("--head-fraction", type=float, default=0.1, help="share of the time with the trunk frozen (stage 1)")
    a.add_argument("--no-flips", action="store_true", help="no mirror-image augmentation (halves the caching pass)")
    a.add_argument(
        "--no-gray",
        action="store_true",
        help="no greyscale views (default: cached, trained on by the metric loss and averaged into the embedding, "
        "so that another colour of the same product ranks higher)",
    )
    a.add_argument(
        "--embedding-views",
        choices=["auto", "none", "flip", "gray", "flip+gray"],
        default="auto",
        help="views of each photo the folder's embedding averages (its embedding_tta): none = the photo alone, "
        "flip = + its mirror image, gray = + its greyscale version, flip+gray = all four (4x the embedding cost of "
        "none); auto = every cached view",
    )
    a.add_argument(
        "--no-refit-heads",
        action="store_true",
        help="keep the trained heads on the pre-logits (default: refit them after training on pooled block outputs "
        "+ pre-logits: +3 points on held-out colour groups)",
    )
    a.add_argument(
        "--no-colour-features",
        action="store_true",
        help="colour heads read the network only (default: also a colour histogram of the garment, "
        "training/colour.py: +3.4 points on held-out colour groups)",
    )
    a.add_argument(
        "--no-colour-booster",
        action="store_true",
        help="no LightGBM model of the colour histogram next to the colour heads (default: one, its probabilities "
        "multiplied with the head's)",
    )
    a.add_argument(
        "--no-onnx",
        action="store_true",
        help="run the inference passes (caching, evaluation) in torch, not ONNX Runtime (3.1x faster caching)",
    )
    a.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a.add_argument("--seed", type=int, default=0, help="random seed (held-out split, initialisation, sampling)")
    add_device_option(a)
    a.set_defaults(func=cmd_adapt)


def _add_backbones(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backbones", help="list registered backbones", epilog=common.examples("fashionrec backbones"))
    b.set_defaults(func=cmd_backbones)
