"""The `fashionrec` command line: the one place that wires stages together for a shell user."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from fashionrec.errors import FashionrecError

log = logging.getLogger("fashionrec")


# ---------------------------------------------------------------- helpers
def _workspace(args) -> Path:
    from fashionrec.io import default_workspace

    return Path(args.workspace) if getattr(args, "workspace", None) else default_workspace()


def _cache(args):
    from fashionrec.features import FeatureCache

    return FeatureCache(_workspace(args))


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _classifier_config(args):
    from fashionrec.training.finetune import FinetuneConfig
    from fashionrec.training.tasks import ClassifierConfig

    ft = FinetuneConfig(stages=tuple((s.split("=")[0], int(s.split("=")[1])) for s in args.stages.split(",")),
                        lr=args.lr, lr_decay=args.lr_decay, bn=args.bn, batch_size=args.batch_size, seed=args.seed,
                        max_steps_per_epoch=args.max_steps_per_epoch)
    return ClassifierConfig(method=args.method, backbone=args.backbone, input_size=args.input_size,
                            invert={"auto": None, "yes": True, "no": False}[args.invert], adapt_bn=args.adapt_bn,
                            taps=None if args.taps == "auto" else tuple(args.taps.split(",")), probe_C=args.probe_c,
                            seed=args.seed, finetune=ft)


def _resolve_input_size(args, data_dir=None) -> int:
    """--input-size auto (None): Fashion-MNIST arrays 96 px (measured); photo folders from the photos and the
    backbone (`auto_input_size`: the backbone's native size, or the photos' own size when they are smaller)."""
    if getattr(args, "input_size", None) is not None:
        return args.input_size
    if data_dir is None:
        args.input_size = 96
        return 96
    from fashionrec.backbones import create_backbone
    from fashionrec.features import auto_input_size
    from fashionrec.training.adapt import catalog_for_training

    cat = catalog_for_training(data_dir)
    native = create_backbone(args.backbone, pretrained=False).data_config.input_size
    args.input_size = auto_input_size(list(cat.image_paths.values()), native)
    log.info("input size %d px (auto: photos vs %s's native %d)", args.input_size, args.backbone, native)
    return args.input_size


def _add_model_args(p: argparse.ArgumentParser, input_size: int | None = None) -> None:
    p.add_argument("--method", choices=["linear-probe", "finetune"], default="linear-probe")
    p.add_argument("--backbone", default="efficientnet_lite0", help="registered name or any timm model name")
    p.add_argument("--input-size", type=int, default=input_size,
                   help="square input resolution in pixels (default auto: 96 for 28 px greyscale arrays; for photo "
                        "folders the backbone's native size, or the photos' own size when smaller)")
    p.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                   help="invert greyscale light-on-dark inputs to look like shop photos (auto: detect)")
    p.add_argument("--adapt-bn", action="store_true",
                   help="re-estimate BatchNorm statistics on unlabelled target images (AdaBN; measured to hurt the "
                        "Fashion-MNIST probe, so off by default)")
    p.add_argument("--taps", default="auto", help="layers to pool: 'final', block indices like '4,5', or 'auto'")
    p.add_argument("--probe-c", type=float, default=0.1, help="inverse L2 strength of the logistic-regression probe")
    p.add_argument("--stages", default="head=1,last:2=3,all=4", help="fine-tuning schedule: WHAT=EPOCHS,...")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning: the head's peak learning rate")
    p.add_argument("--lr-decay", type=float, default=0.5,
                   help="fine-tuning: each block's learning rate is the one above it times this (1 = no decay)")
    p.add_argument("--bn", choices=["train", "frozen"], default="train",
                   help="fine-tuning: BatchNorm uses batch statistics (train, re-estimated each epoch) or keeps its "
                        "running statistics (frozen)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------- classification
def load_labelled_photos(data_dir: Path, label_column: str, input_size: int, progress: bool):
    """Catalog rows that have the label and an image -> (ids, uint8 images, int labels, class names)."""
    from fashionrec.features import Preprocess, decode_images_to_array
    from fashionrec.training.adapt import catalog_for_training

    cat = catalog_for_training(data_dir)
    labels = cat.label_column(label_column).dropna().astype(str)
    labelled = {i: cat.image_paths[i] for i in labels.index if i in cat.image_paths}
    if not labelled:
        raise FashionrecError(f"{data_dir}: no item has both an image and a '{label_column}' value")
    pre = Preprocess(input_size, (0.5,) * 3, (0.5,) * 3)
    ids, x, failures = decode_images_to_array(labelled, pre, progress=progress)
    classes = sorted(labels.loc[ids].unique())
    y = labels.loc[ids].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return cat, ids, x, y, classes, failures


def cmd_train(args) -> int:
    import numpy as np

    from fashionrec.config import resolved_args
    from fashionrec.data.fashion_mnist import load_fashion_mnist, sample_per_class
    from fashionrec.io import write_json
    from fashionrec.training.tasks import evaluate_classifier, train_image_classifier, write_run

    _resolve_input_size(args, None if args.dataset == "fashion-mnist" else args.dataset)
    cfg = _classifier_config(args)
    out = Path(args.out)
    t0 = time.time()
    if args.dataset == "fashion-mnist":
        d = load_fashion_mnist(args.data_dir)
        k = None if args.labels_per_class in (None, "all") else int(args.labels_per_class)
        idx = sample_per_class(d.y_train, k, args.seed)
        x_tr, y_tr, classes = d.x_train[idx], d.y_train[idx], list(d.classes)
        x_te, y_te = d.x_test, d.y_test
        if args.test_size:
            x_te, y_te = x_te[: args.test_size], y_te[: args.test_size]
        unlabelled = d.x_train
    else:
        if not args.label_column:
            raise FashionrecError("--label-column is required when --dataset is a data folder")
        _, ids, x, y, classes, _ = load_labelled_photos(Path(args.dataset), args.label_column, args.input_size, _progress(args))
        rng = np.random.default_rng(args.seed)
        perm = rng.permutation(len(ids))
        n_test = len(ids) // 5  # a held-out fifth of the labelled articles
        te, tr = perm[:n_test], perm[n_test:]
        if args.labels_per_class not in (None, "all"):
            k = int(args.labels_per_class)
            keep = []
            for c in np.unique(y[tr]):
                members = tr[y[tr] == c]
                keep.extend(rng.permutation(members)[:k])
            tr = np.array(sorted(keep))
        x_tr, y_tr, x_te, y_te, unlabelled = x[tr], y[tr], x[te], y[te], x
    trained = train_image_classifier(x_tr, y_tr, classes, cfg, unlabelled=unlabelled, cache=_cache(args), progress=_progress(args))
    result = evaluate_classifier(trained, x_te, y_te, cache=_cache(args))
    metrics = write_run(out, trained, result, extra={"n_train": int(len(y_tr)), "wall_seconds": round(time.time() - t0, 1),
                                                      "dataset": args.dataset, "labels_per_class": args.labels_per_class})
    write_json(out / "args.json", resolved_args(args))
    print(f"test_accuracy {metrics['test_accuracy']:.4f}  macro_f1 {metrics['macro_f1']:.4f}  "
          f"({metrics['n_test']} test images, {len(y_tr)} labelled, {metrics['wall_seconds']:.0f}s) -> {out}/metrics.json")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from fashionrec.backbones.base import is_adapted_model_dir
    from fashionrec.data.images import ImageDecodeError, list_images, load_image

    if is_adapted_model_dir(args.model):
        return _predict_adapted(args)
    from fashionrec.training.checkpoint import load_classifier

    clf = load_classifier(args.model)
    paths = []
    for p in args.images:
        p = Path(p)
        paths.extend(list_images(p) if p.is_dir() else [p])
    rows = [("image", "rank", "label", "probability")]
    arrays, names = [], []
    for p in paths:
        try:
            img = load_image(p)
        except ImageDecodeError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        if clf.preprocess.invert:  # a greyscale-trained model gets the same input mapping
            img = img.convert("L")
        # Exactly the training preprocessing: pad to a white square, then resize (never stretch).
        arrays.append(clf.preprocess.pil_to_array(img))
        names.append(str(p))
    if not arrays:
        raise FashionrecError("no readable images given")
    proba = clf.predict_proba(np.stack(arrays))
    for name, pr in zip(names, proba):
        top = np.argsort(-pr)[: args.top_k]
        for r, j in enumerate(top, 1):
            rows.append((name, r, clf.classes[j], f"{pr[j]:.4f}"))
    import csv

    w = csv.writer(sys.stdout)
    w.writerows(rows)
    return 0


def _image_paths(items) -> list:
    from fashionrec.data.images import list_images

    paths = []
    for p in items:
        p = Path(p)
        paths.extend(list_images(p) if p.is_dir() else [p])
    return paths


def _predict_adapted(args) -> int:
    """An adapted model folder: every head's top-k, with the model's own preprocessing."""
    import csv

    import numpy as np

    from fashionrec.data.images import ImageDecodeError, load_image
    from fashionrec.training.adapt import load_adapted

    model = load_adapted(args.model)
    pre = model.preprocess
    arrays, names = [], []
    for p in _image_paths(args.images):
        try:
            arrays.append(pre.pil_to_array(load_image(p)))
            names.append(str(p))
        except ImageDecodeError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not arrays:
        raise FashionrecError("no readable images given")
    _, probs = model.predict_arrays(np.stack(arrays))
    w = csv.writer(sys.stdout)
    w.writerow(("image", "attribute", "rank", "label", "probability"))
    for i, name in enumerate(names):
        for head in model.head_names:
            pr = probs[head][i]
            for r, j in enumerate(np.argsort(-pr)[: args.top_k], 1):
                w.writerow((name, head, r, model.classes[head][j], f"{pr[j]:.4f}"))
    return 0


def _tag_columns(args) -> list[str]:
    cols = [c.strip() for c in (args.label_column or "").split(",") if c.strip()]
    if len(set(cols)) != len(cols):
        raise FashionrecError(f"--label-column lists a column twice: {args.label_column}")
    return cols


def _unsure(labels: list[str], conf, threshold: float) -> list[str]:
    return [lab if c >= threshold else "unsure" for lab, c in zip(labels, conf)]


def _tag_with_model(args, cols: list[str]) -> int:
    """Tag with an adapted model folder's heads: one forward pass per photo for every attribute."""
    import numpy as np
    import pandas as pd

    from fashionrec.features import decode_images_to_array
    from fashionrec.io import atomic_path
    from fashionrec.training.adapt import catalog_for_training, load_adapted

    model = load_adapted(args.model)
    cols = cols or list(model.head_names)
    missing = [c for c in cols if c not in model.head_names]
    if missing:
        raise FashionrecError(f"{args.model}: no head for {missing}; its heads are {model.head_names}")
    cat = catalog_for_training(args.data)
    rows = set(cat.metadata.index.astype(str)) if len(cat.metadata) else set()
    unl = {i: p for i, p in cat.image_paths.items() if i not in rows}
    if not unl:
        print("every image already has a catalog row: nothing to tag", file=sys.stderr)
    u_ids, u_x, failures = decode_images_to_array(unl, model.preprocess, progress=_progress(args), desc="decode unlabelled")
    _, probs = model.predict_arrays(u_x) if len(u_x) else (None, {c: np.zeros((0, len(model.classes[c]))) for c in cols})
    df = pd.DataFrame({"article_id": u_ids})
    for c in cols:
        p = probs[c]
        conf = p.max(1) if len(p) else np.zeros(0)
        df[c] = _unsure([model.classes[c][j] for j in p.argmax(1)], conf, args.min_confidence) if len(p) else []
        df[f"{c}_confidence"] = np.round(conf, 4)
    with atomic_path(args.out, suffix=".tmp.csv") as tmp:
        df.to_csv(tmp, index=False)
    print(f"tagged {len(df)} images with {', '.join(cols)} using {args.model} ({len(failures)} unreadable skipped) "
          f"-> {args.out}")
    return 0


def cmd_tag(args) -> int:
    cols = _tag_columns(args)
    if args.model:
        return _tag_with_model(args, cols)
    if not cols:
        raise FashionrecError("--label-column is required (or --model MODEL_DIR to tag with its heads)")
    _resolve_input_size(args, args.data)
    import pandas as pd

    from fashionrec.io import atomic_path

    merged = None
    for c in cols:
        df = _tag_one_column(args, c)
        merged = df if merged is None else merged.merge(df.drop(columns=["confidence"]), on="article_id", how="outer")
    if len(cols) > 1:
        merged = merged.drop(columns=["confidence"])
    with atomic_path(args.out, suffix=".tmp.csv") as tmp:
        merged.to_csv(tmp, index=False)
    print(f"-> {args.out}")
    return 0


def _tag_one_column(args, label_column: str):
    """Today's recipe for one column: a logistic head on frozen backbone features of the labelled photos."""
    import numpy as np
    import pandas as pd

    from fashionrec.features import Preprocess, decode_images_to_array
    from fashionrec.io import atomic_path
    from fashionrec.training.tasks import train_image_classifier

    cfg = _classifier_config(args)
    cat, ids, x, y, classes, _ = load_labelled_photos(Path(args.data), label_column, args.input_size, _progress(args))
    unl = {i: p for i, p in cat.image_paths.items() if i not in set(cat.metadata.index)}
    if not unl:
        print("every image already has a catalog row: nothing to tag", file=sys.stderr)
    pre = Preprocess(args.input_size, (0.5,) * 3, (0.5,) * 3)
    u_ids, u_x, failures = decode_images_to_array(unl, pre, progress=_progress(args), desc="decode unlabelled")
    trained = train_image_classifier(x, y, classes, cfg, unlabelled=np.concatenate([x, u_x]) if len(u_x) else x,
                                     cache=_cache(args), progress=_progress(args))
    proba = trained.predict_proba(u_x, cache=_cache(args)) if len(u_x) else np.zeros((0, len(classes)))
    conf = np.round(proba.max(1), 4) if len(u_ids) else np.zeros(0)
    labels = [classes[j] for j in proba.argmax(1)] if len(u_ids) else []
    df = pd.DataFrame({"article_id": u_ids, label_column: _unsure(labels, conf, args.min_confidence),
                       f"{label_column}_confidence": conf, "confidence": conf})
    print(f"tagged {len(df)} images with {label_column} ({len(classes)} classes, trained on {len(ids)} labelled; "
          f"{len(failures)} unreadable skipped)")
    return df


def cmd_adapt(args) -> int:
    import torch

    from fashionrec.config import resolved_args
    from fashionrec.io import write_json
    from fashionrec.training.adapt import DEFAULT_LABEL_COLUMNS, AdaptConfig, adapt_catalog

    if args.threads:
        torch.set_num_threads(args.threads)
    cols = DEFAULT_LABEL_COLUMNS if args.label_column in (None, "auto") else tuple(args.label_column.split(","))
    cfg = AdaptConfig(backbone=args.backbone, input_size=args.input_size, label_columns=cols,
                      group_column=args.group_column, holdout=args.holdout, embed_dim=args.embed_dim,
                      train_blocks=args.train_blocks, max_minutes=args.max_minutes, lr=args.lr, trunk_lr=args.trunk_lr,
                      temperature=args.temperature, metric_weight=args.metric_weight, max_steps=args.max_steps,
                      flips=not args.no_flips, seed=args.seed, init_from=args.init_from,
                      head_fraction=args.head_fraction)
    res = adapt_catalog(args.data, args.out, cfg, workspace=_workspace(args), progress=_progress(args))
    write_json(Path(args.out) / "args.json", resolved_args(args))
    return 0


def cmd_backbones(args) -> int:
    from fashionrec.backbones import list_backbones

    for name in list_backbones():
        print(name)
    print("...and any timm model name (pretrained=True needs network, or --weights PATH)")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fashionrec", description=__doc__)
    p.add_argument("--workspace", help="folder for caches and artifacts (default: $FASHIONREC_HOME or ~/.cache/fashionrec)")
    p.add_argument("--config", help="YAML/TOML/JSON file of option defaults; the command line overrides it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an image classifier and evaluate it")
    t.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist' or an H&M-layout/image folder")
    t.add_argument("--data-dir", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    t.add_argument("--label-column", help="for a data folder: the articles.csv column to learn")
    t.add_argument("--labels-per-class", default="all", help="K labelled examples per class, or 'all'")
    t.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test images only")
    t.add_argument("--out", required=True)
    _add_model_args(t)
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="top-k labels with probabilities for new images")
    pr.add_argument("--model", required=True, help="model.pt written by `fashionrec train`")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=3)
    pr.set_defaults(func=cmd_predict)

    tg = sub.add_parser("tag", help="auto-tag catalog images that have no catalog row")
    tg.add_argument("--data", required=True)
    tg.add_argument("--label-column", default=None,
                    help="comma-separated attributes, e.g. product_type_name,colour_group_name (with --model: default all heads)")
    tg.add_argument("--model", default=None, help="model folder from `fashionrec adapt`: tag with its heads")
    tg.add_argument("--min-confidence", type=float, default=0.0,
                    help="below this probability the tag is 'unsure' (default 0: always the best guess)")
    tg.add_argument("--out", required=True)
    _add_model_args(tg)
    tg.set_defaults(func=cmd_tag)

    a = sub.add_parser("adapt", help="fine-tune a backbone on the catalog's labels + same-product pairs -> model folder")
    a.add_argument("--data", required=True, help="H&M-layout folder (images + articles.csv) or images/ + labels.csv")
    a.add_argument("--out", required=True, help="model folder to write (usable as --backbone / --model)")
    a.add_argument("--backbone", default="efficientnet_lite0")
    a.add_argument("--input-size", type=int, default=128, help="square input in pixels (CPU cost grows with its square)")
    a.add_argument("--label-column", default="auto",
                   help="comma-separated columns to learn (auto: the H&M attribute columns present)")
    a.add_argument("--group-column", default="auto",
                   help="same value = same product (positives): auto = first 7 digits of H&M ids, else product_code")
    a.add_argument("--holdout", type=float, default=0.15, help="share of products held out for evaluation")
    a.add_argument("--embed-dim", type=int, default=256)
    a.add_argument("--train-blocks", type=int, default=3, help="top blocks that train; lower ones stay ImageNet (cached)")
    a.add_argument("--max-minutes", type=float, default=45.0, help="wall-clock budget of the whole run")
    a.add_argument("--lr", type=float, default=1e-3, help="heads and embedding learning rate")
    a.add_argument("--trunk-lr", type=float, default=3e-4, help="top block's learning rate (x0.7 per block below)")
    a.add_argument("--temperature", type=float, default=0.1, help="SupConLoss temperature")
    a.add_argument("--metric-weight", type=float, default=1.0)
    a.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    a.add_argument("--init-from", default=None, help="continue training an earlier model folder (same data and split)")
    a.add_argument("--head-fraction", type=float, default=0.1, help="share of the time with the trunk frozen (stage 1)")
    a.add_argument("--no-flips", action="store_true", help="no mirror-image augmentation (halves the caching pass)")
    a.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=cmd_adapt)

    b = sub.add_parser("backbones", help="list registered backbones")
    b.set_defaults(func=cmd_backbones)

    from fashionrec import cli_more, cli_rec, cli_serve

    cli_more.add_commands(sub, _add_model_args)
    cli_rec.add_commands(sub)
    cli_serve.add_commands(sub)
    return p


def _apply_config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    from fashionrec.config import load_config_file

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    data = load_config_file(known.config)
    if not data:
        return
    flat = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    for action in parser._subparsers._group_actions:
        for name, subp in action.choices.items():
            subp.set_defaults(**flat, **{k.replace("-", "_"): v for k, v in sections.get(name, {}).items()})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _apply_config_defaults(parser, argv)
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or 0)
    except FashionrecError as e:
        print(f"fashionrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
