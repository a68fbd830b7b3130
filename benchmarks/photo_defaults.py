"""Which classifier settings suit a folder of photos: a linear probe on frozen features, per input size, taps and
flip averaging, on `fashionrec train`'s held-out split (stratified fifth, seed 0), at 10 labels per class (3 draws
of the labels) and with every training photo. Prints one line per setting.

    python benchmarks/photo_defaults.py --data ../shared/data/clothing --label-column label --input-size 256
    python benchmarks/photo_defaults.py --data ../shared/data/clothing --label-column label --input-size 224 \\
        --taps "final;5,final;5,6,final" --modes plain,tta

Modes: plain (one view), tta (the probe's probabilities averaged over the photo and its mirror image), favg (the
probe trained and read on the mean of both views' features, what `--flip-tta yes` does). The features are embedded
once through ONNX Runtime (blocks 3-6 and the pre-logits; mirror images of the test photos, and of the training
photos for favg) and kept in --cache.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np


def embed(args, ids, x, te):
    """(features, mirror-image features) of every photo; the mirror images only where a mode needs them."""
    from fashionrec.backbones import create_backbone
    from fashionrec.features import InferencePath, Preprocess, embed_arrays

    bb = create_backbone(args.backbone, input_size=args.input_size, taps=(3, 4, 5, 6, "final"))
    bb.eval()
    pre = Preprocess.for_backbone(bb, input_size=args.input_size)
    path = InferencePath.parse("onnx-fp32")
    f = embed_arrays(bb, x, preprocess=pre, path=path, batch_size=64, progress=False)
    flip_rows = np.arange(len(x)) if "favg" in args.modes else te
    ff = f.copy()
    ff[flip_rows] = embed_arrays(
        bb, np.ascontiguousarray(x[flip_rows][:, :, ::-1]), preprocess=pre, path=path, batch_size=64, progress=False
    )
    dims = [int(bb.blocks[t][-1].conv_pwl.out_channels) for t in (3, 4, 5, 6)]
    return f, ff, dims


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/clothing")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--taps", default="final;5,final;5,6,final", help="';'-separated tap sets")
    ap.add_argument("--modes", default="plain,tta", help="plain,tta,favg")
    ap.add_argument("--probe-c", default="0.1", help="comma-separated C values")
    ap.add_argument("--draws", type=int, default=3, help="draws of the 10 labels per class")
    ap.add_argument("--cache", default="runs/photo_defaults_cache")
    args = ap.parse_args(argv)
    args.modes = args.modes.split(",")
    import torch

    from fashionrec.training.probe import fit_linear_probe
    from fashionrec.workflows.classify import held_out_split, load_labelled_photos

    torch.set_num_threads(2)
    photos = load_labelled_photos(Path(args.data), args.label_column, args.input_size, progress=False)
    y, n_cls = photos.labels, len(photos.classes)
    tr, te = held_out_split(len(y), 0, y=y)
    cache = Path(args.cache) / f"{args.backbone}_{args.input_size}_{'favg' in args.modes}.npz"
    t0 = time.time()
    if cache.exists():
        z = np.load(cache)
        f, ff, dims = z["f"], z["ff"], list(z["dims"])
    else:
        f, ff, dims = embed(args, photos.ids, photos.images, te)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, f=f, ff=ff, dims=np.array(dims))
    print(
        f"{args.backbone} {args.input_size} px: {len(tr)} train / {len(te)} test photos; embedded in "
        f"{time.time() - t0:.0f}s"
    )
    off = np.cumsum([0, *dims])
    cols = {3: slice(off[0], off[1]), 4: slice(off[1], off[2]), 5: slice(off[2], off[3]), 6: slice(off[3], off[4])}
    cols["final"] = slice(off[4], None)

    def run(taps, c, idx) -> dict:
        """Accuracy per mode of one probe (two for favg) trained on the photos `idx`."""
        x, xf = (np.concatenate([a[:, cols[t]] for t in taps], 1) for a in (f, ff))
        out = {}
        if {"plain", "tta"} & set(args.modes):
            clf = fit_linear_probe(x[idx], y[idx], C=c)
            p = clf.predict_proba(x[te])
            out["plain"] = float((clf.classes_[p.argmax(1)] == y[te]).mean())
            p = (p + clf.predict_proba(xf[te])) / 2
            out["tta"] = float((clf.classes_[p.argmax(1)] == y[te]).mean())
        if "favg" in args.modes:
            xa = (x + xf) / 2
            clf = fit_linear_probe(xa[idx], y[idx], C=c)
            out["favg"] = float((clf.predict(xa[te]) == y[te]).mean())
        return out

    tap_sets = [tuple(t if t == "final" else int(t) for t in g.split(",")) for g in args.taps.split(";")]
    for taps, c in itertools.product(tap_sets, [float(v) for v in args.probe_c.split(",")]):
        t1 = time.time()
        ks = []
        for s in range(args.draws):
            rng = np.random.default_rng(s)
            ks.append(run(taps, c, np.concatenate([rng.permutation(tr[y[tr] == k])[:10] for k in range(n_cls)])))
        a = run(taps, c, tr)
        for mode in a:
            k10 = [r[mode] for r in ks]
            print(
                f"taps {','.join(map(str, taps)):12s} {mode:5s} C={c:<5} 10 per class {np.mean(k10):.3f} "
                f"(sd {np.std(k10):.3f}, {args.draws} draws)  all {a[mode]:.3f}  ({time.time() - t1:.0f}s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
