"""The offline ImageNet backbones compared on H&M photos: tagging accuracy, same-product retrieval, time per image.

    python benchmarks/backbones.py --data ../shared/data/hm --out docs/results

For each backbone (and input size: `auto` is the size `fashionrec` picks for these photos) it embeds a seeded
sample of photos (labelled catalog photos + every photo of some products sold in 2+ colours), then:
- tagging: a logistic probe (the one `fashionrec train` uses) on product_group_name and product_type_name, trained
  on 75% of the products and scored on the other 25% (split by product, never by photo);
- retrieval: same-product Recall@1/@10 over the sample (cosine; the query excluded);
- speed: images/s of the model alone on one batch of 64 preprocessed photos (best of the probe's repetitions), on
  eager fp32 channels-last and on the inference path `fashionrec` picks here; and the whole embed (decode + model)
  when the features were not cached.
Writes backbones_hm.md, .json and .png (accuracy against time per image). Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_BACKBONES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,mobilenetv2"


def _sample(cat, n_labelled: int, n_products: int, seed: int):
    from fashionrec.training.adapt import product_groups

    ids = list(cat.item_ids)
    meta = cat.metadata
    groups = product_groups(ids, meta)
    rng = np.random.default_rng(seed)
    labelled = [i for i, g in enumerate(ids) if g in meta.index and isinstance(meta.at[g, "product_type_name"], str)]
    uniq, counts = np.unique(groups, return_counts=True)
    multi = uniq[counts >= 2]
    pick_products = set(rng.choice(multi, min(n_products, len(multi)), replace=False).tolist())
    rows = set(rng.choice(labelled, min(n_labelled, len(labelled)), replace=False).tolist())
    rows |= {i for i, g in enumerate(groups) if g in pick_products}
    rows = np.array(sorted(rows))
    return [ids[i] for i in rows], groups[rows]


def _label(meta, ids, col):
    return np.array(
        [str(meta.at[i, col]) if i in meta.index and isinstance(meta.at[i, col], str) else "" for i in ids],
        dtype=object,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--backbones", default=DEFAULT_BACKBONES, help="comma-separated names (offline or timm)")
    ap.add_argument("--sizes", default="auto", help="comma-separated input sizes; auto = what fashionrec picks")
    ap.add_argument("--n-labelled", type=int, default=2500, help="labelled catalog photos in the sample")
    ap.add_argument("--n-products", type=int, default=500, help="products in 2+ colours whose photos join it")
    ap.add_argument("--workspace", default=None, help="feature cache (a rerun then only scores)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--name", default="backbones_hm")
    args = ap.parse_args(argv)
    import torch

    from fashionrec.backbones import create_backbone
    from fashionrec.data.images import load_image
    from fashionrec.evaluation.retrieval import classification_report, retrieval_metrics
    from fashionrec.features import (
        FeatureCache,
        InferencePath,
        Preprocess,
        auto_input_size,
        embed_image_files,
        fastest_path,
        measure_path,
    )
    from fashionrec.io import default_workspace
    from fashionrec.training.adapt import catalog_for_training, split_products
    from fashionrec.training.probe import fit_linear_probe

    if args.threads:
        torch.set_num_threads(args.threads)
    ws = args.workspace or str(default_workspace())
    cat = catalog_for_training(args.data)
    ids, groups = _sample(cat, args.n_labelled, args.n_products, args.seed)
    paths = {i: cat.image_paths[i] for i in ids}
    held = split_products(groups, 0.25, args.seed)
    uniq, counts = np.unique(groups, return_counts=True)
    queries = np.flatnonzero(np.isin(groups, uniq[counts >= 2]))
    labels = {c: _label(cat.metadata, ids, c) for c in ("product_group_name", "product_type_name")}
    print(
        f"{len(ids)} photos ({int(held.sum())} of held-out products), {len(queries)} retrieval queries; "
        f"torch threads {torch.get_num_threads()}",
        file=sys.stderr,
    )
    rows = []
    for name in args.backbones.split(","):
        for size_s in args.sizes.split(","):
            native = create_backbone(name).data_config.input_size
            size = auto_input_size(list(paths.values()), native) if size_s == "auto" else int(size_s)
            bb = create_backbone(name, input_size=size)
            pre = Preprocess.for_backbone(bb)
            x = pre.arrays_to_tensor(np.stack([pre.pil_to_array(load_image(paths[i])) for i in ids[:64]]))
            secs_cl, _ = measure_path(bb, x, InferencePath.parse("fp32-cl"))
            path = fastest_path(bb, pre, sample=lambda x=x: x, workspace=ws)
            secs_auto, _ = measure_path(bb, x, path)
            t0 = time.time()
            res = embed_image_files(bb, paths, path=path, cache=FeatureCache(ws), progress=True, desc=f"{name}@{size}")
            embed_s = time.time() - t0
            at = {i: j for j, i in enumerate(res.ids)}
            f = np.zeros((len(ids), res.features.shape[1]), np.float32)
            for j, i in enumerate(ids):
                if i in at:
                    f[j] = res.features[at[i]]
            row = {
                "backbone": name,
                "input_size": size,
                "dim": int(f.shape[1]),
                "path": path.name,
                "img_s_fp32_cl": round(len(x) / secs_cl, 1),
                "img_s_auto": round(len(x) / secs_auto, 1),
                "ms_per_image_auto": round(1000 * secs_auto / len(x), 2),
                "embed_img_s": round(len(ids) / embed_s, 1) if embed_s > 5 else None,  # None: read from the cache
            }
            for col, y in labels.items():
                tr, te = np.flatnonzero(~held & (y != "")), np.flatnonzero(held & (y != ""))
                clf = fit_linear_probe(f[tr], y[tr], C=0.05, max_iter=1000, seed=args.seed)
                rep = classification_report(y[te], clf.predict(f[te]), sorted(set(y[tr])))
                row[col.replace("_name", "")] = round(rep["accuracy"], 3)
                row[col.replace("_name", "") + "_f1"] = round(rep["macro_f1"], 3)
                row["n_test"] = int(len(te))
            ret = retrieval_metrics(f, groups, queries)
            row["recall@1"], row["recall@10"] = round(ret["recall@1"], 3), round(ret["recall@10"], 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/backbones.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Offline ImageNet backbones on H&M photos",
        "",
        f"`{cmd}`",
        "",
        f"{len(ids)} photos (seed {args.seed}): {args.n_labelled} labelled catalog photos + every photo of "
        f"{args.n_products} products sold in 2+ colours. Probe: logistic regression (C=0.05) on 75% of the "
        f"products, scored on the other 25% ({rows[0]['n_test'] if rows else 0} labelled photos). Retrieval: "
        f"{len(queries)} queries over the sample. Speed: the model alone on 64 photos, 2 cores.",
        "",
        "| backbone | input | dim | group acc | type acc | type macro-F1 | R@1 | R@10 | img/s fp32-cl | img/s auto "
        "(path) | ms/image auto |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['input_size']} | {r['dim']} | {r['product_group']:.3f} | "
            f"{r['product_type']:.3f} | {r['product_type_f1']:.3f} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | "
            f"{r['img_s_fp32_cl']:.0f} | {r['img_s_auto']:.0f} ({r['path']}) | {r['ms_per_image_auto']:.2f} |"
        )
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1) + "\n")
    _plot(out / f"{args.name}.png", rows)
    print("\n".join(lines))
    return 0


def _plot(png: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "product_type", "type accuracy (probe)"), (axes[1], "recall@10", "R@10")):
        for r in rows:
            ax.scatter(r["ms_per_image_auto"], r[key])
            ax.annotate(
                f"{r['backbone'].replace('efficientnet_', '')}@{r['input_size']}",
                (r["ms_per_image_auto"], r[key]),
                fontsize=7,
            )
        ax.set_xlabel("ms per image (model alone, 2 cores, auto path)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
