"""Transfer chain ImageNet -> fashion catalog -> a shop's own photos: a linear probe on a labelled folder with the
ImageNet backbone's features vs an adapted model folder's (e.g. one `fashionrec adapt` made on H&M).

    python benchmarks/transfer_chain.py --data ../shared/data/clothing --adapted runs/hm-adapted \
        --labels-per-class 10 --draws 10 --out docs/results

Split: the stratified held-out fifth of the folder (`held_out_split(..., y=labels)`, seed 0), the same for both
feature sets. Few labels: `--labels-per-class` photos per class drawn from the training part, once per draw (seeds
0..draws-1), the same photos for both feature sets; also one fit on every training photo. Probe: standardised
logistic regression (`training.probe.fit_linear_probe`). Interval: 95% paired bootstrap of the accuracy difference
(adapted - ImageNet), resampling held-out photos with all draws of a photo kept together
(`evaluation.metrics.paired_bootstrap_by_group`). Features are cached in `--workspace`. Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _embed(bb, items: dict, ws: str, desc: str) -> tuple[np.ndarray, float]:
    from fashionrec.features import FeatureCache, InferencePath, embed_image_files

    t0 = time.time()
    res = embed_image_files(bb, items, path=InferencePath.parse("fp32"), cache=FeatureCache(ws), desc=desc)
    if res.failures:
        raise SystemExit(f"{len(res.failures)} photos did not decode, e.g. {next(iter(res.failures.items()))}")
    return res.features, time.time() - t0


def _probe_runs(f: np.ndarray, y: np.ndarray, train_sets: list[np.ndarray], test: np.ndarray) -> np.ndarray:
    """(len(train_sets), len(test)) 0/1 hits of a linear probe fitted on each training set."""
    from fashionrec.training.probe import fit_linear_probe

    return np.stack([fit_linear_probe(f[tr], y[tr], seed=0).predict(f[test]) == y[test] for tr in train_sets])


def _compare(hits_a: np.ndarray, hits_b: np.ndarray, y_test: np.ndarray, classes: list[str]) -> dict:
    from fashionrec.evaluation.metrics import paired_bootstrap_by_group

    photo = np.tile(np.arange(hits_a.shape[1]), hits_a.shape[0])
    _, ci_diff = paired_bootstrap_by_group(hits_a.ravel().astype(float), hits_b.ravel().astype(float), photo)
    per_class = {
        c: [float(hits_a[:, y_test == i].mean()), float(hits_b[:, y_test == i].mean()), int((y_test == i).sum())]
        for i, c in enumerate(classes)
    }
    return {
        "imagenet": float(hits_a.mean()),
        "adapted": float(hits_b.mean()),
        "diff": float(hits_b.mean() - hits_a.mean()),
        "diff_ci95": [float(ci_diff[0]), float(ci_diff[1])],
        "diff_per_draw": (hits_b.mean(1) - hits_a.mean(1)).round(4).tolist(),
        "per_class": per_class,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="labelled folder: images/ + labels.csv")
    ap.add_argument("--adapted", required=True, help="adapted model folder (fashionrec adapt --out)")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--imagenet", default="efficientnet_lite0", help="ImageNet backbone (pre-logits, one view)")
    ap.add_argument("--input-size", type=int, default=None, help="ImageNet input size (default: the adapted model's)")
    ap.add_argument("--views", default=None, help="the adapted model's embedding_tta (default: the folder's)")
    ap.add_argument("--labels-per-class", type=int, default=10)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--out", default=None, help="folder for transfer_chain.json and transfer_chain.md")
    ap.add_argument("--machine", default="2-core CPU, shared", help="the machine, for the markdown")
    args = ap.parse_args(argv)

    from fashionrec.backbones import create_backbone
    from fashionrec.io import default_workspace
    from fashionrec.training.adapt import catalog_for_training
    from fashionrec.workflows.classify import held_out_split, sample_per_class_of

    ws = args.workspace or str(default_workspace())
    cat = catalog_for_training(args.data)
    labels = cat.label_column(args.label_column).dropna().astype(str)
    ids = [i for i in labels.index if i in cat.image_paths]
    classes = sorted(labels.loc[ids].unique())
    y = labels.loc[ids].map({c: i for i, c in enumerate(classes)}).to_numpy()
    items = {i: cat.image_paths[i] for i in ids}

    adapted = create_backbone(args.adapted)
    if args.views is not None:
        views = set(args.views.split("+")) - {"none"}
        adapted.flip_tta, adapted.gray_tta = "flip" in views, "gray" in views
    size = args.input_size or adapted.data_config.input_size
    imagenet = create_backbone(args.imagenet, input_size=size)
    views = "+".join(v for v, on in (("flip", adapted.flip_tta), ("gray", adapted.gray_tta)) if on) or "none"
    f_a, s_a = _embed(imagenet, items, ws, f"ImageNet {args.imagenet}@{size}")
    f_b, s_b = _embed(adapted, items, ws, f"adapted ({views})")

    train, test = held_out_split(len(ids), 0, y=y)
    few = [sample_per_class_of(train, y, args.labels_per_class, np.random.default_rng(s)) for s in range(args.draws)]
    rows = {}
    for name, sets in ((f"{args.labels_per_class} per class", few), ("all training photos", [train])):
        rows[name] = _compare(_probe_runs(f_a, y, sets, test), _probe_runs(f_b, y, sets, test), y[test], classes)
        rows[name]["n_train"] = int(np.mean([len(s) for s in sets]))
        rows[name]["draws"] = len(sets)

    cmd = "python benchmarks/transfer_chain.py " + " ".join(argv if argv is not None else sys.argv[1:])
    a_name = f"ImageNet {args.imagenet} @ {size} px (pre-logits, {f_a.shape[1]}-d, one view)"
    b_name = (
        f"adapted {Path(args.adapted).name} @ {adapted.data_config.input_size} px ({f_b.shape[1]}-d, views: {views})"
    )
    md = [
        "| training labels | draws | ImageNet | adapted | adapted - ImageNet | 95% interval |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        md.append(
            f"| {name} ({r['n_train']} photos) | {r['draws']} | {r['imagenet']:.3f} | {r['adapted']:.3f} | "
            f"{r['diff']:+.3f} | {r['diff_ci95'][0]:+.3f} .. {r['diff_ci95'][1]:+.3f} |"
        )
    few_name = next(iter(rows))
    md += ["", f"Per class, {few_name} (mean over draws): ImageNet / adapted accuracy, held-out photos", ""]
    md += ["| class | n | ImageNet | adapted | difference |", "|---|---|---|---|---|"]
    for c, (a, b, n) in sorted(rows[few_name]["per_class"].items(), key=lambda kv: kv[1][1] - kv[1][0]):
        md.append(f"| {c} | {n} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    head = [
        f"# Transfer chain: ImageNet -> {Path(args.adapted).name} -> {Path(args.data).name} (linear probe)",
        "",
        f"`{cmd}`",
        "",
        f"{len(ids)} photos, {len(classes)} classes; held out: {len(test)} (stratified fifth, seed 0). "
        f"Features: {a_name} vs {b_name}; embedding took {s_a:.0f} s and {s_b:.0f} s "
        f"(0 s: read from the feature cache). Machine: {args.machine}.",
        "",
    ]
    print("\n".join(head + md))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "transfer_chain.md").write_text("\n".join(head + md) + "\n")
        payload = {"command": cmd, "imagenet": a_name, "adapted": b_name, "n_test": len(test), "rows": rows}
        (out / "transfer_chain.json").write_text(json.dumps(payload, indent=1) + "\n")
        print(f"-> {out / 'transfer_chain.md'}, {out / 'transfer_chain.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
