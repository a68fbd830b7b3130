"""An adapted model folder's test-time views (`embedding_tta`): embedding speed and same-product retrieval.

    python benchmarks/adapted_views.py --data ../shared/data/hm --model runs/hm-adapted --n 256 --out docs/results

Speed: photos/s of the folder's backbone on `--n` photos of its held-out products, decoded beforehand (the network
only), batches of 64, torch fp32 on the CPU (`--path` for another inference path), best of `--repeat` runs per
setting, the settings interleaved so that a change in machine load hits all of them. Retrieval: Recall@1/@10 of each
setting from the folder's metrics.json (`retrieval_heldout_views`: held-out photos of products with 2+ photos as
queries, every photo as the gallery; `fashionrec adapt` measures it). Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SETTINGS = ("none", "flip", "gray", "flip+gray")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="adapted model folder")
    ap.add_argument("--n", type=int, default=256, help="photos timed per setting")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--path", default="fp32", help="inference path (features.InferencePath.parse)")
    ap.add_argument("--out", default=None, help="folder for adapted_views.md")
    args = ap.parse_args(argv)
    import torch

    from fashionrec.backbones import create_backbone
    from fashionrec.data.products import product_groups
    from fashionrec.features import InferencePath, Preprocess, decode_images_to_array
    from fashionrec.features.forward import prepare_for_path, run_backbone
    from fashionrec.training.adapt import catalog_for_training

    model = Path(args.model)
    conf = json.loads((model / "fashionrec_model.json").read_text())
    metrics = json.loads((model / "metrics.json").read_text())
    cat = catalog_for_training(args.data)
    ids = list(cat.item_ids)
    groups = product_groups(ids, cat.metadata, conf.get("group_column", "auto"))
    held = set(conf["heldout_products"])
    pick = [i for i, g in zip(ids, groups) if g in held][: args.n]
    bb = create_backbone(str(model))
    pre = Preprocess.for_backbone(bb)
    _, arr, _ = decode_images_to_array({i: cat.image_paths[i] for i in pick}, pre, progress=False)
    path = InferencePath.parse(args.path)
    prepare_for_path(bb, path)
    best = {s: 0.0 for s in SETTINGS}
    for _ in range(args.repeat):
        for s in SETTINGS:
            bb.flip_tta, bb.gray_tta = "flip" in s, "gray" in s
            run_backbone(bb, pre.arrays_to_tensor(arr[:8]), path)  # warm-up (ONNX: export for this view count)
            t0 = time.perf_counter()
            for b in range(0, len(arr), 64):
                run_backbone(bb, pre.arrays_to_tensor(arr[b : b + 64]), path)
            best[s] = max(best[s], len(arr) / (time.perf_counter() - t0))
    views = metrics.get("retrieval_heldout_views") or {}
    n_q = metrics["retrieval_heldout"]["adapted"]["n_queries"]
    cmd = "python benchmarks/adapted_views.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()[0]
    md = [
        f"`{cmd}`",
        "",
        f"{bb.name} @ {pre.input_size} px, folder `{model.name}` (its `embedding_tta`: {conf['embedding_tta']}); "
        f"speed: {len(arr)} held-out photos, batches of 64, {args.path}, {torch.get_num_threads()} threads, best of "
        f"{args.repeat}, load average {load:.1f} at the end; retrieval: {n_q} queries, gallery {len(ids)} photos.",
        "",
        "| embedding_tta | views | photos/s | Recall@1 | Recall@10 |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        r = views.get(s) or {}
        cells = [r.get("recall@1"), r.get("recall@10")]
        rec = " | ".join("-" if v is None else f"{v:.3f}" for v in cells)
        md.append(f"| {s} | {(1 + ('flip' in s)) * (1 + ('gray' in s))} | {best[s]:.1f} | {rec} |")
    print("\n".join(md))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "adapted_views.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
