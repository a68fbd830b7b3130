"""Image classifiers on a catalog's labelled photos or on Fashion-MNIST: train, predict, tag.

The one place that decides which photos are labelled, how they are decoded, and which fifth is held out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.config import DEFAULT_INPUT_SIZE, DEFAULT_MEAN, DEFAULT_STD, HELD_OUT_FRACTION
from fashionrec.errors import FashionrecError

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"


# ---------------------------------------------------------------- data
def resolve_input_size(input_size: int | None, data_dir: str | Path | None, backbone: str) -> int:
    """An explicit size wins. Auto (None): Fashion-MNIST arrays (`data_dir` None) get DEFAULT_INPUT_SIZE (measured);
    photo folders get `auto_input_size`: the backbone's native size, or the photos' own size when smaller."""
    if input_size is not None:
        return int(input_size)
    if data_dir is None:
        return DEFAULT_INPUT_SIZE
    from fashionrec.backbones import create_backbone
    from fashionrec.features import auto_input_size
    from fashionrec.training.adapt import catalog_for_training

    cat = catalog_for_training(data_dir)
    native = create_backbone(backbone, pretrained=False).data_config.input_size
    size = auto_input_size(list(cat.image_paths.values()), native)
    log.info("input size %d px (auto: photos vs %s's native %d)", size, backbone, native)
    return size


def photo_decoder(input_size: int):
    """Photos -> uint8 (S, S, 3) arrays: pad to a white square, then resize (never stretch). The backbone's own
    mean/std are applied later, when the arrays become model input."""
    from fashionrec.features import Preprocess

    return Preprocess(input_size, DEFAULT_MEAN, DEFAULT_STD)


@dataclass
class LabelledPhotos:
    """Catalog rows that have the label and a readable image, decoded."""

    catalog: object
    ids: list[str]
    images: np.ndarray  # uint8 (N, S, S, 3)
    labels: np.ndarray  # int class index per image
    classes: list[str]
    failures: dict[str, str]  # id -> why its image could not be read


def load_labelled_photos(
    data_dir: str | Path, label_column: str, input_size: int, progress: bool = True
) -> LabelledPhotos:
    from fashionrec.features import decode_images_to_array
    from fashionrec.training.adapt import catalog_for_training

    cat = catalog_for_training(data_dir)
    labels = cat.label_column(label_column).dropna().astype(str)
    labelled = {i: cat.image_paths[i] for i in labels.index if i in cat.image_paths}
    if not labelled:
        raise FashionrecError(f"{data_dir}: no item has both an image and a '{label_column}' value")
    ids, x, failures = decode_images_to_array(labelled, photo_decoder(input_size), progress=progress)
    classes = sorted(labels.loc[ids].unique())
    y = labels.loc[ids].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return LabelledPhotos(cat, ids, x, y, classes, failures)


def held_out_split(
    n: int, rng: np.random.Generator | int, fraction: float = HELD_OUT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a random `fraction` of the n labelled articles is held out for testing.

    `rng` is the run's seed or a Generator seeded with it (the caller may go on drawing from it, e.g. to sample
    k labels per class from the training part)."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    perm = rng.permutation(n)
    n_test = math.floor(n * fraction + 1e-9)
    return perm[n_test:], perm[:n_test]


def sample_per_class_of(indices: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to k of `indices` per class of y (sorted): the few-label training set."""
    keep = []
    for c in np.unique(y[indices]):
        members = indices[y[indices] == c]
        keep.extend(rng.permutation(members)[:k])
    return np.array(sorted(keep))


def parse_labels_per_class(value) -> int | None:
    """'all' or None -> None (every label), else a positive integer."""
    if value in (None, "all"):
        return None
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise FashionrecError(f"--labels-per-class must be a positive integer or 'all', not {value!r}") from None
    if k < 1:
        raise FashionrecError(f"--labels-per-class must be a positive integer or 'all', not {value!r}")
    return k


# ---------------------------------------------------------------- train
@dataclass
class TrainingSet:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    unlabelled: np.ndarray


def training_set(
    dataset: str,
    *,
    cfg,
    labels_per_class=None,
    label_column: str | None = None,
    data_dir: str | Path | None = None,
    test_size: int | None = None,
    progress: bool = True,
) -> TrainingSet:
    """Fashion-MNIST (its own train/test files) or a photo folder (held-out fifth, split with the run's seed)."""
    k = parse_labels_per_class(labels_per_class)
    if dataset == FASHION_MNIST:
        from fashionrec.data.fashion_mnist import load_fashion_mnist, sample_per_class

        d = load_fashion_mnist(data_dir)
        idx = sample_per_class(d.y_train, k, cfg.seed)
        x_te, y_te = d.x_test, d.y_test
        if test_size:
            x_te, y_te = x_te[:test_size], y_te[:test_size]
        return TrainingSet(d.x_train[idx], d.y_train[idx], x_te, y_te, list(d.classes), d.x_train)
    if not label_column:
        raise FashionrecError("--label-column is required when --data is a data folder")
    photos = load_labelled_photos(Path(dataset), label_column, cfg.input_size, progress)
    x, y = photos.images, photos.labels
    rng = np.random.default_rng(cfg.seed)
    tr, te = held_out_split(len(photos.ids), rng)
    if k is not None:
        tr = sample_per_class_of(tr, y, k, rng)
    return TrainingSet(x[tr], y[tr], x[te], y[te], photos.classes, x)


def train_and_evaluate(
    data: TrainingSet,
    cfg,
    out: str | Path,
    *,
    cache=None,
    progress: bool = True,
    extra: dict | None = None,
    started: float | None = None,
    device=None,
) -> dict:
    """Train, evaluate on the held-out images, write metrics.json, config.json, confusion.png and model.pt to `out`.
    Returns the metrics (with n_train, and wall_seconds since `started`, e.g. before the data was loaded).
    `device`: where the image model runs (None: the CPU)."""
    from fashionrec.training.tasks import evaluate_classifier, train_image_classifier, write_run

    t0 = time.time() if started is None else started
    trained = train_image_classifier(
        data.x_train,
        data.y_train,
        data.classes,
        cfg,
        unlabelled=data.unlabelled,
        cache=cache,
        progress=progress,
        device=device,
    )
    if trained.probe is not None:  # a fine-tuned one was calibrated on its validation split
        groups = np.arange(len(data.y_train))
        t, fit = probe_temperature(trained, data.x_train, data.y_train, groups, cache=cache, device=device)
        if t is not None:
            trained.temperature = t
            trained.metrics["calibration_fit"] = {
                "on": "20% of the labelled images, the probe refit on the rest",
                "n": fit["n"],
                "temperature": round(t, 4),
            }
    t, trained.temperature = trained.temperature, 1.0
    result = evaluate_classifier(trained, data.x_test, data.y_test, cache=cache, device=device)  # raw confidences
    trained.temperature = t
    if t != 1.0:  # the test images' confidences before and after (the best class, so accuracy, is unchanged)
        from fashionrec.evaluation.calibration import apply_temperature, calibration_report

        raw = result["_proba"]
        result["_proba"] = apply_temperature(raw, t)
        result["calibration_test"] = {
            "temperature": round(t, 4),
            "before": calibration_report(raw, data.y_test),
            "after": calibration_report(result["_proba"], data.y_test),
        }
    return write_run(
        Path(out),
        trained,
        result,
        extra={"n_train": int(len(data.y_train)), "wall_seconds": round(time.time() - t0, 1), **(extra or {})},
    )


# ---------------------------------------------------------------- predict
def image_paths(items: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their images."""
    from fashionrec.data.images import list_images

    paths: list[Path] = []
    for p in map(Path, items):
        paths.extend(list_images(p) if p.is_dir() else [p])
    return paths


@dataclass
class Predictions:
    header: tuple[str, ...]
    rows: list[tuple] = field(default_factory=list)


def predict_images(
    model: str | Path, images: Sequence[str | Path], top_k: int = 3, on_skip: Callable[[str], None] | None = None
) -> Predictions:
    """Top-k labels for each image, with the model's own preprocessing (pad to a square, then resize).

    `model`: a model.pt from `fashionrec train` (one label per image) or a `fashionrec adapt` folder (every head).
    Unreadable images are skipped, each reported to `on_skip`; none readable is an error."""
    from fashionrec.backbones.base import is_adapted_model_dir
    from fashionrec.data.images import ImageDecodeError, load_image

    if is_adapted_model_dir(model):
        from fashionrec.training.adapt import load_adapted

        adapted = load_adapted(model)
        pre, greyscale = adapted.preprocess, False
    else:
        from fashionrec.training.checkpoint import load_classifier

        clf = load_classifier(model)
        pre, greyscale = clf.preprocess, bool(clf.preprocess.invert)
    arrays, names = [], []
    for p in image_paths(images):
        try:
            img = load_image(p, draft_size=pre.input_size)  # decoded as training decoded it (`Preprocess.load`)
        except ImageDecodeError as e:
            if on_skip is not None:
                on_skip(str(e))
            continue
        if greyscale:  # a greyscale-trained model gets the same input mapping
            img = img.convert("L")
        arrays.append(pre.pil_to_array(img))
        names.append(str(p))
    if not arrays:
        raise FashionrecError("no readable images given")
    x = np.stack(arrays)
    if is_adapted_model_dir(model):
        _, probs = adapted.predict_arrays(x, embed=False)
        out = Predictions(("image", "attribute", "rank", "label", "probability"))
        for i, name in enumerate(names):
            for head in adapted.head_names:
                pr = probs[head][i]
                for r, j in enumerate(np.argsort(-pr)[:top_k], 1):
                    out.rows.append((name, head, r, adapted.classes[head][j], f"{pr[j]:.4f}"))
        return out
    proba = clf.predict_proba(x)
    out = Predictions(("image", "rank", "label", "probability"))
    for name, pr in zip(names, proba):
        for r, j in enumerate(np.argsort(-pr)[:top_k], 1):
            out.rows.append((name, r, clf.classes[j], f"{pr[j]:.4f}"))
    return out


# ---------------------------------------------------------------- tag
def tag_columns(spec: str | None, required: bool = False) -> list[str]:
    """'a,b' -> ['a', 'b']; a column named twice is an error, and so is none when `required` (tagging with a
    probe: only a model folder's heads can stand in for the column list)."""
    cols = [c.strip() for c in (spec or "").split(",") if c.strip()]
    if len(set(cols)) != len(cols):
        raise FashionrecError(f"--label-column lists a column twice: {spec}")
    if required and not cols:
        raise FashionrecError("--label-column is required (or --model MODEL_DIR to tag with its heads)")
    return cols


def _unsure(labels: list[str], conf, threshold: float) -> list[str]:
    return [lab if c >= threshold else "unsure" for lab, c in zip(labels, conf)]


@dataclass
class ColumnTagging:
    """How one column was tagged (for the report line)."""

    column: str
    n_tagged: int
    n_classes: int
    n_labelled: int
    n_unreadable: int
    n_from_siblings: int | None = None  # None: the column was tagged per photo (not product-level, or by_product off)
    colour_booster: bool = False  # the probabilities were multiplied by the colour booster
    # the temperature that calibrates the confidences (`probe_temperature`); None: not calibrated
    temperature: float | None = None
    calibration: dict | None = None  # `calibration_report` on the labelled photos that fitted it: before, after


@dataclass
class Tags:
    table: pd.DataFrame  # article_id, <column>, <column>_confidence, ...
    n_unlabelled: int  # images without a catalog row (0: nothing to tag)
    n_unreadable: int
    columns: list[str]
    per_column: list[ColumnTagging] = field(default_factory=list)
    # column -> photos whose tag came from labelled photos of the same product
    from_siblings: dict[str, int] = field(default_factory=dict)


def tag_with_model(
    data_dir: str | Path,
    model: str | Path,
    columns: list[str] | None = None,
    *,
    min_confidence: float = 0.0,
    by_product: bool = True,
    colour_booster: bool = True,
    progress: bool = True,
    device=None,
) -> Tags:
    """Tag the images without a catalog row with an adapted model folder's heads (one forward pass per photo);
    `colour_booster` False: its colour heads without their boosters. An adapted folder runs on the CPU (`device`
    CUDA: said in the log).

    `by_product`: the columns that describe a product, not a photo (type, group, department, ...: measured on the
    catalog's rows, `product_level_columns`) agree within a product: taken from the product's labelled photos where
    it has some, else pooled over its photos (`tag_by_product`)."""
    from fashionrec.data.products import tag_by_product
    from fashionrec.features import decode_images_to_array
    from fashionrec.training.adapt import catalog_for_training, load_adapted

    if device is not None and str(device).startswith("cuda"):
        log.warning("%s: an adapted model folder predicts on the CPU (its heads have no device option)", model)
    adapted = load_adapted(model)
    if not colour_booster and adapted.colour_boosters:
        adapted = adapted.without_colour_boosters()  # a shallow copy: the cached model keeps its boosters
    cols = list(columns or adapted.head_names)
    missing = [c for c in cols if c not in adapted.head_names]
    if missing:
        raise FashionrecError(f"{model}: no head for {missing}; its heads are {adapted.head_names}")
    cat = catalog_for_training(data_dir)
    rows = set(cat.metadata.index.astype(str)) if len(cat.metadata) else set()
    unl = {i: p for i, p in cat.image_paths.items() if i not in rows}
    u_ids, u_x, failures = decode_images_to_array(unl, adapted.preprocess, progress=progress, desc="decode unlabelled")
    if len(u_x):
        _, probs = adapted.predict_arrays(u_x, embed=False, progress=progress)
    else:
        probs = {c: np.zeros((0, len(adapted.classes[c]))) for c in cols}
    probs = {c: probs[c] for c in cols}
    from_siblings = {}
    if by_product and len(u_ids):
        probs, from_siblings = tag_by_product(
            u_ids,
            probs,
            adapted.classes,
            cat.metadata,
            list(cat.image_paths),
            group_column=adapted.config.get("group_column", "auto"),
            fallback=adapted.config.get("product_level_columns"),
        )
    df = pd.DataFrame({"article_id": u_ids})
    for c in cols:
        p = probs[c]
        conf = p.max(1) if len(p) else np.zeros(0)
        df[c] = _unsure([adapted.classes[c][j] for j in p.argmax(1)], conf, min_confidence) if len(p) else []
        df[f"{c}_confidence"] = np.round(conf, 4)
    return Tags(df, len(unl), len(failures), cols, from_siblings=from_siblings)


def tag_with_probe(
    data_dir: str | Path,
    columns: list[str],
    cfg,
    *,
    min_confidence: float = 0.0,
    by_product: bool = True,
    colour_booster: bool = True,
    cache=None,
    progress: bool = True,
    device=None,
) -> Tags:
    """Per column, a classifier (cfg) trained on the labelled photos tags the images without a catalog row
    (`by_product` as in `tag_with_model`). `colour_booster`: a colour column's probabilities are also multiplied by
    a LightGBM model of the garment's colour descriptor fitted on the same labelled photos (`boost_colour_probs`,
    as `adapt` does for its colour heads)."""
    from fashionrec.training.adapt import is_colour_column

    tag_columns(",".join(columns), required=True)
    merged, per_column, n_unl, n_bad, from_siblings = None, [], 0, 0, {}
    for c in columns:
        boost = colour_booster and is_colour_column(c)
        df, info, n_unl, n_bad = _tag_one_column(
            data_dir, c, cfg, min_confidence, cache, progress, by_product, boost, device
        )
        per_column.append(info)
        if info.n_from_siblings is not None:
            from_siblings[c] = info.n_from_siblings
        merged = df if merged is None else merged.merge(df.drop(columns=["confidence"]), on="article_id", how="outer")
    if len(columns) > 1:
        merged = merged.drop(columns=["confidence"])
    return Tags(merged, n_unl, n_bad, list(columns), per_column, from_siblings)


def _tag_one_column(
    data_dir,
    label_column: str,
    cfg,
    min_confidence: float,
    cache,
    progress: bool,
    by_product: bool,
    boost: bool,
    device=None,
):
    """A classifier on the labelled photos (frozen-backbone features + logistic head by default); `boost`: times the
    colour booster (a colour column)."""
    from fashionrec.data.products import tag_by_product
    from fashionrec.features import decode_images_to_array
    from fashionrec.training.tasks import train_image_classifier

    photos = load_labelled_photos(Path(data_dir), label_column, cfg.input_size, progress)
    x, classes, cat = photos.images, photos.classes, photos.catalog
    unl = {i: p for i, p in cat.image_paths.items() if i not in set(cat.metadata.index)}
    u_ids, u_x, failures = decode_images_to_array(
        unl, photo_decoder(cfg.input_size), progress=progress, desc="decode unlabelled"
    )
    trained = train_image_classifier(
        x,
        photos.labels,
        classes,
        cfg,
        unlabelled=np.concatenate([x, u_x]) if len(u_x) else x,
        cache=cache,
        progress=progress,
        device=device,
    )
    proba = trained.predict_proba(u_x, cache=cache, device=device) if len(u_x) else np.zeros((0, len(classes)))
    colour = None  # the labelled photos' colour descriptors: computed once, for the booster and its calibration
    if boost and x.ndim == 4:
        import torch

        from fashionrec.training.colour import boost_colour_probs, colour_features

        colour = colour_features(x)
        proba = boost_colour_probs(
            proba, x, photos.labels, u_x, seed=cfg.seed, threads=torch.get_num_threads(), train_features=colour
        )
    temperature, calibration = None, None
    if len(u_ids):
        from fashionrec.data.products import product_groups
        from fashionrec.evaluation.calibration import apply_temperature

        groups = product_groups(photos.ids, cat.metadata)
        temperature, calibration = probe_temperature(
            trained, x, photos.labels, groups, colour=colour, cache=cache, device=device
        )
        proba = apply_temperature(proba, temperature or 1.0)
    n_sib = None
    if by_product and len(u_ids):
        pooled, sib = tag_by_product(
            u_ids, {label_column: proba}, {label_column: classes}, cat.metadata, list(cat.image_paths)
        )
        proba, n_sib = pooled[label_column], sib.get(label_column)
    conf = np.round(proba.max(1), 4) if len(u_ids) else np.zeros(0)
    labels = [classes[j] for j in proba.argmax(1)] if len(u_ids) else []
    df = pd.DataFrame(
        {
            "article_id": u_ids,
            label_column: _unsure(labels, conf, min_confidence),
            f"{label_column}_confidence": conf,
            "confidence": conf,
        }
    )
    info = ColumnTagging(
        label_column, len(df), len(classes), len(photos.ids), len(failures), n_sib, boost, temperature, calibration
    )
    return df, info, len(unl), len(failures)


def probe_temperature(
    trained,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    colour: np.ndarray | None = None,
    cache=None,
    fraction: float = 0.2,
    device=None,
) -> tuple[float | None, dict | None]:
    """The temperature that calibrates a linear-probe classifier's confidences (times the colour booster when
    `colour`, the photos' `colour_features`, is given), as `tag` without `--model` reports them: the probe (and
    booster) refit on the labelled photos of 80% of the products (`groups`), the photos of the other 20% fit T
    (`evaluation.calibration`). The backbone features
    come from `cache` when the classifier's training put them there. -> (T, {"n", "before", "after"}: the
    `calibration_report` of those photos, so "after" is measured on the photos that fitted T); (None, None) for a
    fine-tuned classifier or fewer than 10 photos to fit on."""
    from fashionrec.data.products import split_products
    from fashionrec.evaluation.calibration import apply_temperature, calibration_report, fit_temperature
    from fashionrec.features import embed_arrays
    from fashionrec.training.classifier import ProbeHead
    from fashionrec.training.probe import fit_linear_probe

    cfg = trained.config
    held = split_products(np.asarray(groups), fraction, cfg.seed)
    if trained.probe is None or held.sum() < 10 or len(np.unique(y[~held])) < 2:
        return None, None
    feats = embed_arrays(trained.backbone, x, preprocess=trained.preprocess, cache=cache, progress=False, device=device)
    probe = ProbeHead.from_sklearn(fit_linear_probe(feats[~held], y[~held], C=cfg.probe_C, seed=cfg.seed))
    p = probe.predict_proba(feats[held], len(trained.classes))  # as the classifier itself predicts
    if colour is not None:
        import torch

        from fashionrec.training.colour import boost_colour_probs

        p = boost_colour_probs(
            p,
            x[~held],
            y[~held],
            x[held],
            seed=cfg.seed,
            threads=torch.get_num_threads(),
            train_features=colour[~held],
            features=colour[held],
        )
    t = fit_temperature(p, y[held])
    before, after = calibration_report(p, y[held]), calibration_report(apply_temperature(p, t), y[held])
    return t, {"n": int(held.sum()), "before": before, "after": after}
