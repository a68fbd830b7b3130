"""Held-out tagging of an adapted model folder, per photo vs as `fashionrec tag` does it (product-level columns
pooled over each product's photos), with 95% intervals from a bootstrap over products.

    python benchmarks/tagging.py --data ../shared/data/hm --model MODEL_DIR [--model MODEL_DIR2] --out docs/results

Photos: every photo of the products the folder held out (its `heldout_products`) that has the label. The
product-level columns are measured on the rows of the other (training) products (`product_level_columns`).
Re-measures folders made before `adapt` reported the pooled figures itself. Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def measure(data: str, model: str, progress: bool = True) -> tuple[list[str], float]:
    import torch

    from fashionrec.data.products import pool_by_product
    from fashionrec.evaluation.metrics import paired_bootstrap_by_group
    from fashionrec.training.adapt import heldout_tagging, load_heldout

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    h = load_heldout(model, data)
    m, meta, held = h.model, h.catalog.metadata, h.held
    plevel = h.product_level(m.head_names)
    ids, groups, probs, failures = h.predict_heldout(progress=progress)
    truth = {
        c: np.array([v if isinstance(v, str) else "" for v in meta[c].reindex(ids).to_numpy()], dtype=object)
        for c in m.head_names
        if c in meta.columns
    }
    by_product, per_photo = heldout_tagging(truth, {c: probs[c] for c in truth}, m.classes, groups, plevel)
    pooled = pool_by_product(probs, groups, plevel)
    lines = [
        f"**{Path(model).name}**: {len(ids)} photos of {len(held)} held-out products ({len(failures)} unreadable); "
        f"product-level columns (agreement within training products): "
        + (", ".join(f"{c} {a:.3f}" for c, a in plevel.items()) or "none"),
        "",
        "| attribute | n | per photo | as `tag` does it [95% CI] | difference [95% CI] | macro-F1 per photo / as `tag` |",
        "|---|---|---|---|---|---|",
    ]
    for c, raw in truth.items():
        has = raw != ""
        cls = np.array(m.classes[c], dtype=object)
        a = (cls[probs[c][has].argmax(1)] == raw[has]).astype(float)
        b = (cls[pooled[c][has].argmax(1)] == raw[has]).astype(float)
        ci, dci = paired_bootstrap_by_group(a, b, groups[has])
        mark = " *" if c in plevel else ""
        lines.append(
            f"| {c}{mark} | {int(has.sum())} | {per_photo[c]['accuracy']:.3f} | {by_product[c]['accuracy']:.3f} "
            f"[{ci[0]:.3f}, {ci[1]:.3f}] | {b.mean() - a.mean():+.3f} [{dci[0]:+.3f}, {dci[1]:+.3f}] | "
            f"{per_photo[c]['macro_f1']:.3f} / {by_product[c]['macro_f1']:.3f} |"
        )
    return lines, time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", action="append", required=True, help="adapted model folder (repeat to compare)")
    ap.add_argument("--out", default=None, help="folder for tagging_<data name>.md")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    md = [
        f"# Held-out tagging on {Path(args.data).name}: per photo vs by product",
        "",
        "`*`: product-level column, pooled over each product's photos by `fashionrec tag` (default; `--per-photo` "
        "turns it off). Intervals: bootstrap over products, 2,000 resamples.",
        "",
    ]
    for model in args.model:
        lines, secs = measure(args.data, model, progress=not args.quiet)
        md += lines + ["", f"({secs:.0f} s)", ""]
    text = "\n".join(md)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"tagging_{Path(args.data).name}.md").write_text(text)
        print(f"-> {out / f'tagging_{Path(args.data).name}.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
