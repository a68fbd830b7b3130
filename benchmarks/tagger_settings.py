"""Photo tagger settings on a shop: held-out accuracy of each setting on the server's tag columns.

Loads a shop (image features cached in the workspace), deals its photos into 4 folds at random (seed 0, the dealing
`recommend.attributes.predict_attributes` uses) and tags the photos of fold 0 with taggers fitted on the other
three; accuracy on the fold-0 photos that have a catalog row. Settings (`--settings`, ';'-separated):
`knn` (the neighbour vote of `predict_attributes` on the recommenders' PCA features), `raw-C` / `pca-C`
(`fashionrec.tagging.Tagger`, logistic regression at C, on the raw backbone features or the PCA features).
Figures, never assertions.

    .venv/bin/python benchmarks/tagger_settings.py --data ../shared/data/hm --settings "knn;raw-0.05;raw-1.0"
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--settings", default="knn;pca-0.05;pca-1.0;raw-0.05;raw-1.0")
    args = ap.parse_args()

    from fashionrec.config import SERVED_TAG_COLUMNS
    from fashionrec.recommend.attributes import predict_attributes
    from fashionrec.tagging import Tagger, _labels
    from fashionrec.workflows.shop import load_shop

    shop = load_shop(args.data, workspace=args.workspace, progress=False)
    meta = shop.catalog.metadata
    ids = pd.Index(list(shop.image_features.ids))
    cols = list(SERVED_TAG_COLUMNS)
    fold = np.random.default_rng(0).integers(0, 4, size=len(ids))
    q = np.flatnonzero(fold == 0)
    print(f"{len(ids):,} photos, {len(q):,} in the held-out fold")
    for setting in args.settings.split(";"):
        t = time.time()
        out = {}
        if setting == "knn":
            pred = predict_attributes(list(ids), shop.image_features.vectors, meta, cols)
        else:
            space, c_value = setting.split("-")
            x = shop.raw_features.vectors if space == "raw" else shop.image_features.vectors
        for c in cols:
            y = _labels(meta, c, ids)
            if setting == "knn":
                p = pred[c].to_numpy()[q]
            else:
                tg = Tagger.fit(c, x[fold != 0], y[fold != 0], C=float(c_value))
                p = tg.classes[tg.probabilities(x[q]).argmax(1)]
            m = pd.notna(y[q])
            out[c] = round(float((p[m] == y[q][m].astype(str)).mean()), 4)
        print(setting, out, f"{time.time() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
