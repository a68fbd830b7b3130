"""Same-product retrieval on products held out from `fashionrec adapt`: ImageNet features vs adapted models.

    python benchmarks/retrieval.py --data ../shared/data/hm --model runs/hm_lite0 \
        --imagenet efficientnet_lite0@128 --workspace /tmp/ws11 --out docs/results

Queries: photos of held-out products (the model folder lists them) whose product has 2+ photos. Gallery: every
photo (the query excluded). Recall@k: another photo of the same product among the k nearest (cosine).
same-type P@10: among the 10 nearest photos with a known product type, the share of the query's type.
Also prints the model's held-out tagging accuracy / macro-F1 (from its metrics.json). Prints figures, never asserts.
Features come from the feature cache (`--workspace`), so a second run only computes the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _features(spec: str, ids: list[str], paths: dict, ws: str, path_name: str):
    from fashionrec.backbones import create_backbone
    from fashionrec.features import FeatureCache, InferencePath, embed_image_files, fastest_path

    # NAME@SIZE+flip[+gray]: each photo averaged with its mirror image [and their greyscale versions], as adapted
    # folders do
    base, *tta = spec.split("+")
    if "@" in base and not Path(base).is_dir():
        name, size = base.rsplit("@", 1)
        bb = create_backbone(name, input_size=int(size))
    else:
        bb = create_backbone(base)
    bb.flip_tta = bb.flip_tta or "flip" in tta
    bb.gray_tta = bb.gray_tta or "gray" in tta
    path = fastest_path() if path_name == "auto" else InferencePath.parse(path_name)
    t0 = time.time()
    res = embed_image_files(
        bb, {i: paths[i] for i in ids}, path=path, cache=FeatureCache(ws), progress=True, desc=f"embed {spec}"
    )
    row = {i: j for j, i in enumerate(res.ids)}
    f = np.zeros((len(ids), res.features.shape[1]), dtype=np.float32)
    for j, i in enumerate(ids):
        if i in row:
            f[j] = res.features[row[i]]
    return f, bb, time.time() - t0


def _grid(
    out_png: Path,
    ids,
    paths,
    groups,
    queries,
    neighbours: dict[str, np.ndarray],
    n_queries: int = 6,
    k: int = 5,
    seed: int = 0,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(queries), min(n_queries, len(queries)), replace=False)
    names = list(neighbours)
    rows = len(pick) * len(names)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.3 * (k + 1), 1.9 * rows))
    axes = np.atleast_2d(axes)
    r = 0
    for qi in pick:
        q = queries[qi]
        for name in names:
            nn = neighbours[name][qi][:k]
            for c, j in enumerate([q, *nn]):
                ax = axes[r, c]
                ax.imshow(Image.open(paths[ids[j]]).convert("RGB"))
                ax.set_xticks([])
                ax.set_yticks([])
                colour = "black" if c == 0 else ("green" if groups[j] == groups[q] else "lightgrey")
                for s in ax.spines.values():
                    s.set_edgecolor(colour)
                    s.set_linewidth(3 if c else 1)
                if c == 0:
                    ax.set_ylabel(name, fontsize=7)
                    ax.set_title(f"query {ids[q]}", fontsize=6)
            r += 1
    fig.suptitle("held-out queries and their 5 nearest photos (green = same product, other colour)", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument(
        "--model", action="append", required=True, help="adapted model folder(s) (the first defines the split)"
    )
    ap.add_argument(
        "--imagenet",
        action="append",
        default=None,
        help="NAME@SIZE baselines, NAME@SIZE+flip averaged with the mirror image (default efficientnet_lite0@128)",
    )
    ap.add_argument("--imagenet-path", default="auto", help="inference path for the baselines (auto: fastest here)")
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="docs/results", help="folder for retrieval_hm.md and retrieval_hm.png")
    ap.add_argument("--name", default="retrieval_hm")
    args = ap.parse_args(argv)
    import torch

    from fashionrec.evaluation.retrieval import nearest_neighbours, retrieval_metrics
    from fashionrec.io import default_workspace
    from fashionrec.training.adapt import catalog_for_training, load_adapted, product_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    ws = args.workspace or str(default_workspace())
    first = load_adapted(args.model[0])
    cat = catalog_for_training(args.data)
    ids = list(cat.item_ids)
    meta = cat.metadata
    groups = product_groups(ids, meta, first.config.get("group_column", "auto"))
    held_products = set(first.config["heldout_products"])
    held = np.array([g in held_products for g in groups])
    uniq, counts = np.unique(groups, return_counts=True)
    multi = set(uniq[counts >= 2].tolist())
    queries = np.flatnonzero(held & np.array([g in multi for g in groups]))
    types = np.array(
        [
            str(meta.at[i, "product_type_name"])
            if i in meta.index
            and "product_type_name" in meta.columns
            and isinstance(meta.at[i, "product_type_name"], str)
            else ""
            for i in ids
        ],
        dtype=object,
    )
    print(f"{len(ids)} photos, {len(queries)} queries (held-out photos of products with 2+ photos)", file=sys.stderr)

    rows, neighbours = [], {}
    specs = [("imagenet", s) for s in (args.imagenet or ["efficientnet_lite0@128"])] + [
        ("adapted", m) for m in args.model
    ]
    for kind, spec in specs:
        f, bb, secs = _features(spec, ids, cat.image_paths, ws, args.imagenet_path if kind == "imagenet" else "fp32")
        m = retrieval_metrics(f, groups, queries, types)
        views = (
            ", photo + mirror image + their greyscale versions averaged"
            if bb.flip_tta and bb.gray_tta
            else ", photo + mirror image averaged"
            if bb.flip_tta
            else ""
        )
        label = (
            f"ImageNet {bb.name} @ {bb.data_config.input_size} px (pre-logits, {f.shape[1]}-d{views})"
            if kind == "imagenet"
            else f"adapted {bb.name} @ {bb.data_config.input_size} px ({Path(spec).name}, {f.shape[1]}-d{views})"
        )
        rows.append((label, m, secs))
        short = ("ImageNet " if kind == "imagenet" else "adapted ") + f"{bb.data_config.input_size}px"
        short += ("+flip" if bb.flip_tta else "") + ("+gray" if bb.gray_tta else "") if kind == "imagenet" else ""
        neighbours[short if short not in neighbours else f"{short} {len(neighbours)}"] = nearest_neighbours(
            f, queries, 10
        )
        print(
            f"{label}: R@1 {m['recall@1']:.3f} R@10 {m['recall@10']:.3f} type P@10 {m['type_precision@10']:.3f} "
            f"(features {secs:.0f}s)",
            file=sys.stderr,
        )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        "# Same-product retrieval on held-out H&M products",
        "",
        f"`{cmd}`",
        "",
        f"{len(queries)} queries: photos of the {len(held_products)} products held out from fine-tuning that have "
        f"2+ photos (other colours); gallery: all {len(ids)} photos, query excluded; cosine.",
        "",
        "| features | Recall@1 | Recall@10 | same-type P@10 |",
        "|---|---|---|---|",
    ]
    for label, m, _ in rows:
        md.append(f"| {label} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | {m['type_precision@10']:.3f} |")
    for spec in args.model:
        mp = Path(spec) / "metrics.json"
        if mp.exists():
            mm = json.loads(mp.read_text())
            md += [
                "",
                f"Held-out tagging with {Path(spec).name}'s heads (photos of held-out products that have the "
                f"label, tagged as `fashionrec tag` does: product-level columns pooled over each product's photos; per photo "
                f"in `benchmarks/tagging.py`; from its metrics.json; adapt took {mm['wall_seconds'] / 60:.1f} min):",
                "",
                "| attribute | classes | n | accuracy | macro-F1 |",
                "|---|---|---|---|---|",
            ]
            for a, t in mm["tagging_heldout"].items():
                md.append(f"| {a} | {t['n_classes']} | {t['n']} | {t['accuracy']:.3f} | {t['macro_f1']:.3f} |")
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    _grid(out / f"{args.name}.png", ids, cat.image_paths, groups, queries, neighbours)
    print("\n".join(md))
    print(f"-> {out / (args.name + '.md')}, {out / (args.name + '.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
