"""How well can colour_group_name be read from H&M photos? The garment's colour descriptor alone (logistic
regression, and the LightGBM booster), the adapted network's head inputs alone, both together, and both times the
booster (what `fashionrec adapt` fits by default).

    python benchmarks/colour_ceiling.py --data ../shared/data/hm [--model MODEL_DIR] [--input-size 160]
    python benchmarks/colour_ceiling.py --data ../shared/data/hm --probe

`--probe` (no model folder): the classifier `fashionrec tag --label-column colour_group_name` trains without
`--model` (frozen ImageNet backbone + logistic head, default settings, input size chosen as `tag` chooses it), alone
and times the booster fitted on the same training photos (what `tag` does by default); then its confidences before
and after the calibration `tag` applies (a temperature fitted on held-back *training* products, `probe_temperature`),
scored on the held-out photos.

Photos: the labelled photos; split by product (a folder's own held-out products with `--model`, else `--holdout`
and `--seed` as `adapt` splits). The colour descriptor is `fashionrec.training.colour.colour_features` (a Lab
histogram of the pixels unlike the backdrop, plus their statistics; no CNN), computed on the photos as the model's
preprocessing makes them. With `--model`, the colour head is refit exactly as `adapt` refits it (`refit_heads`:
logistic regression on the photo and its mirror image, the folder's C) on the network's inputs alone and with the
descriptor, then combined with the booster (`fit_colour_booster` on the training photos' descriptors); each
paired difference gets a 95% interval from a bootstrap over products. Prints figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--column", default="colour_group_name")
    ap.add_argument("--model", default=None, help="an adapted folder: refit its colour head with and without")
    ap.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="without --model (with it: the folder's); default 160, --probe: auto",
    )
    ap.add_argument("--probe", action="store_true", help="the classifier `tag` trains without --model, x the booster")
    ap.add_argument("--holdout", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.probe and args.model:
        ap.error("--probe measures the classifier `tag` trains without a model folder: leave out --model")
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fashionrec.config import DEFAULT_BACKBONE
    from fashionrec.evaluation.metrics import paired_bootstrap_by_group
    from fashionrec.features import Preprocess, decode_images_to_array
    from fashionrec.training.adapt import (
        AdaptedModel,
        catalog_for_training,
        encode_labels,
        head_probs,
        load_adapted,
        product_groups,
        refit_heads,
        split_products,
    )
    from fashionrec.training.colour import colour_features, combine_with_booster, fit_colour_booster
    from fashionrec.workflows.classify import photo_decoder, resolve_input_size

    t0 = time.time()
    m = load_adapted(args.model) if args.model else None
    cat = catalog_for_training(args.data)
    meta = cat.metadata
    lab = [i for i in cat.item_ids if i in meta.index and isinstance(meta.at[i, args.column], str)]
    groups = product_groups(lab, meta, m.config.get("group_column", "auto") if m else "auto")
    if m is not None:
        held_products = set(m.config["heldout_products"])
        held = np.array([g in held_products for g in groups])
        pre = m.preprocess
    else:
        held = split_products(product_groups(list(cat.item_ids), meta), args.holdout, args.seed)
        held = held[np.isin(np.array(list(cat.item_ids)), lab)]
        size = args.input_size or (resolve_input_size(None, args.data, DEFAULT_BACKBONE) if args.probe else 160)
        pre = photo_decoder(size) if args.probe else Preprocess(size, (0.5,) * 3, (0.5,) * 3)
        print(f"input size {size} px")
    ids, imgs, failures = decode_images_to_array({i: cat.image_paths[i] for i in lab}, pre, progress=False)
    keep = np.isin(np.array(lab), ids)
    groups, held = groups[keep], held[keep]
    heads, labels = encode_labels(ids, meta, [args.column], ~held, 2)
    y = labels[args.column]
    H = colour_features(imgs)
    tr, te = ~held & (y >= 0), held & (y >= 0)
    classes = np.array(heads[args.column], dtype=object)
    majority = collections.Counter(y[tr]).most_common(1)[0][0]
    print(f"{args.column}: {len(classes)} classes, {int(tr.sum())} train / {int(te.sum())} held-out labelled photos")
    print(f"  majority class ({classes[majority]}): {float((y[te] == majority).mean()):.3f}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500)).fit(H[tr], y[tr])
    print(f"  colour descriptor alone + logistic regression: {float((clf.predict(H[te]) == y[te]).mean()):.3f}")
    t_b = time.time()
    booster = fit_colour_booster(H[tr], y[tr], len(classes), seed=args.seed)
    p_tree = booster.predict(H[te])
    print(f"  colour descriptor alone + LightGBM booster: {float((p_tree.argmax(1) == y[te]).mean()):.3f}", end="")
    print(f" (fit {time.time() - t_b:.0f}s)")
    if args.probe and m is None:
        from fashionrec.evaluation.calibration import apply_temperature, calibration_report
        from fashionrec.training.tasks import ClassifierConfig, train_image_classifier
        from fashionrec.workflows.classify import probe_temperature

        t_p = time.time()
        clf = train_image_classifier(imgs[tr], y[tr], list(classes), ClassifierConfig(input_size=size), progress=False)
        p = clf.predict_proba(imgs[te])
        right = {"the probe alone": (p.argmax(1) == y[te]).astype(float)}
        print(f"  ImageNet probe as `tag` trains it without --model: {right['the probe alone'].mean():.3f}", end="")
        print(f" (mean confidence {p.max(1).mean():.3f}; {time.time() - t_p:.0f}s)")
        p = combine_with_booster(p, booster, H[te])
        right["the probe x the booster"] = b = (p.argmax(1) == y[te]).astype(float)
        print(f"  the probe x the booster (as `tag` does by default): {b.mean():.3f}", end="")
        print(f" (mean confidence {p.max(1).mean():.3f}; booster alone {p_tree.max(1).mean():.3f})")
        _, (lo, hi) = paired_bootstrap_by_group(right["the probe alone"], b, groups[te])
        d = b.mean() - right["the probe alone"].mean()
        print(f"  the probe x the booster vs the probe alone: {d:+.3f} [95% CI over products {lo:+.3f}, {hi:+.3f}]")
        # calibration as `tag` does it: T from a refit on 80% of the *training* products, scored on held-out ones
        t, cal = probe_temperature(clf, imgs[tr], y[tr], groups[tr], colour=H[tr])
        before, after = calibration_report(p, y[te]), calibration_report(apply_temperature(p, t), y[te])
        print(f"  calibrated as `tag` does (T={t:.2f}, fitted on {cal['n']} photos of held-back training products):")
        for name, r in (("raw", before), ("calibrated", after)):
            keep = ", ".join(
                f">= {k}: {v['coverage']:.2f} kept at {v['accuracy'] or 0:.3f}"
                for k, v in r["at_min_confidence"].items()
            )
            print(
                f"    {name}: mean confidence {r['mean_confidence']:.3f} for accuracy {r['accuracy']:.3f}, "
                f"ECE {r['ece']:.3f}, log-loss {r['log_loss']:.3f}; {keep}"
            )
    if m is not None:
        c = float(m.config.get("adapt_config", {}).get("head_c", 0.05))
        bb, views = m.backbone, ([], [])
        with torch.no_grad():
            for s in range(0, len(imgs), 128):
                x = pre.arrays_to_tensor(imgs[s : s + 128])
                _, xh = m.head_inputs(bb.forward_lower(torch.cat([x, x.flip(-1)]), 0), 0)
                views[0].append(xh[: len(x)].numpy())
                views[1].append(xh[len(x) :].numpy())
        X = [np.concatenate(v) for v in views]
        right = {}
        for name, col in (("the network's inputs alone", None), ("the network's inputs + the descriptor", H)):
            head = AdaptedModel(bb, {args.column: heads[args.column]}, head_taps=m.head_taps)
            refit_heads(head, X, {args.column: y}, tr, c=c, colour=col)
            p = np.mean([head_probs(head, x[te], None if col is None else col[te])[args.column] for x in X], 0)
            right[name] = (p.argmax(1) == y[te]).astype(float)
            print(f"  colour head refit on {name}: {right[name].mean():.3f}")
        p = combine_with_booster(p, booster, H[te])
        right["the network's inputs + the descriptor, x the booster"] = b = (p.argmax(1) == y[te]).astype(float)
        print(f"  colour head refit on the network's inputs + the descriptor, x the booster: {b.mean():.3f}")
        names = list(right)
        for a, b in ((names[0], names[1]), (names[1], names[2]), (names[0], names[2])):
            _, (lo, hi) = paired_bootstrap_by_group(right[a], right[b], groups[te])
            d = right[b].mean() - right[a].mean()
            print(f"  {b} vs {a}: {d:+.3f} [95% CI over products {lo:+.3f}, {hi:+.3f}]")
        t = json.loads((Path(args.model) / "metrics.json").read_text())["tagging_heldout"].get(args.column)
        if t:
            print(f"  the folder's own held-out figure (metrics.json): {t['accuracy']:.3f}")
    print(f"  ({time.time() - t0:.0f}s, {len(failures)} unreadable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
