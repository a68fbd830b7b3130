"""How far can colour_group_name be read from H&M photos at all? Colour-histogram probes vs the adapted colour head.

    python benchmarks/colour_ceiling.py --data ../shared/data/hm [--model MODEL_DIR]

Same split as `fashionrec adapt` (products held out with its seed and share). Features without any CNN: a joint
HSV histogram (8x4x4) and an RGB histogram (4x4x4) of the pixels that are not near-white background, plus their
mean, median and spread; a logistic regression on them, trained on the labelled photos of the training products and
scored on those of the held-out products. If pixels alone stop far below a target, the labels (48 colour groups,
many near-synonyms, photos that show more than the garment) are the limit, not the network. Prints figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def colour_features(path: str) -> np.ndarray:
    from PIL import Image

    im = Image.open(path)
    im.draft("RGB", (64, 64))
    im = im.convert("RGB").resize((32, 48))
    rgb = np.asarray(im).reshape(-1, 3).astype(np.float32) / 255
    fg = rgb.min(1) < 0.92  # not the white studio background
    if fg.sum() < 20:
        fg = np.ones(len(rgb), bool)
    hsv = np.asarray(im.convert("HSV")).reshape(-1, 3)[fg].astype(np.float32) / 255
    h_hsv, _ = np.histogramdd(hsv, bins=(8, 4, 4), range=((0, 1),) * 3)
    h_rgb, _ = np.histogramdd(rgb[fg], bins=(4, 4, 4), range=((0, 1),) * 3)
    f = rgb[fg]
    return np.concatenate(
        [h_hsv.ravel() / len(hsv), h_rgb.ravel() / len(f), f.mean(0), np.median(f, 0), f.std(0), [fg.mean()]]
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--column", default="colour_group_name")
    ap.add_argument("--model", default=None, help="an adapted folder: its held-out accuracy for the column is shown")
    ap.add_argument("--holdout", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fashionrec.training.adapt import catalog_for_training, encode_labels, product_groups, split_products

    t0 = time.time()
    cat = catalog_for_training(args.data)
    ids = list(cat.item_ids)
    held = split_products(product_groups(ids, cat.metadata), args.holdout, args.seed)
    heads, labels = encode_labels(ids, cat.metadata, [args.column], ~held, 2)
    y = labels[args.column]
    with ProcessPoolExecutor(args.workers) as ex:
        X = np.array(list(ex.map(colour_features, [str(cat.image_paths[i]) for i in ids], chunksize=256)))
    tr, te = np.flatnonzero(~held & (y >= 0)), np.flatnonzero(held & (y >= 0))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500)).fit(X[tr], y[tr])
    acc = float((clf.predict(X[te]) == y[te]).mean())
    classes = np.array(heads[args.column], dtype=object)
    majority = collections.Counter(y[tr]).most_common(1)[0][0]
    print(f"{args.column}: {len(classes)} classes, {len(tr)} train / {len(te)} held-out labelled photos")
    print(f"  majority class ({classes[majority]}): {float((y[te] == majority).mean()):.3f}")
    print(f"  colour histograms of the garment pixels + logistic regression: {acc:.3f}")
    if args.model:
        m = json.loads((Path(args.model) / "metrics.json").read_text())
        t = m["tagging_heldout"].get(args.column)
        if t:
            print(f"  adapted head ({args.model}): {t['accuracy']:.3f}")
    print(f"  ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
