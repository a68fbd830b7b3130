"""Feature-cache reuse: embed ~300 H&M photos in folder A (the feature store empty), then the same photos as folder B
(hard links under other names, another path; copies where hard links are not possible), then folder A again after B.
Prints the three times and the ratio of B's to A's first run (the target: under 5%).

    .venv/bin/python benchmarks/feature_cache.py [--n 300] [--backbone efficientnet_lite0] [--size 96]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HM_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hm" / "images"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--images", type=Path, default=HM_IMAGES)
    args = ap.parse_args(argv)
    photos = sorted(args.images.rglob("*.jpg"))[: args.n]
    if not photos:
        print(f"no photos under {args.images} (the H&M sample lives in ../shared/data/hm)", file=sys.stderr)
        return 2

    from fashionrec.backbones import create_backbone
    from fashionrec.features import FeatureCache, embed_image_files

    bb = create_backbone(args.backbone, input_size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = tmp / "a", tmp / "b"
        a.mkdir()
        b.mkdir()
        for n, p in enumerate(photos):
            shutil.copyfile(p, a / p.name)
            try:
                os.link(a / p.name, b / f"photo{n:05d}.jpg")
            except OSError:
                shutil.copyfile(p, b / f"photo{n:05d}.jpg")
        ws = tmp / "ws"

        def run(folder: Path) -> tuple[float, int]:
            t0 = time.perf_counter()
            r = embed_image_files(bb, sorted(folder.glob("*.jpg")), cache=FeatureCache(ws), progress=False)
            return time.perf_counter() - t0, len(r.ids)

        first, n = run(a)
        again, m = run(b)
        back, k = run(a)
    print(f"backbone {args.backbone} at {args.size} px, {n} photos, {os.cpu_count()} cores")
    print(f"folder A, empty feature store: {first:.2f}s")
    print(f"folder B (same photos, other names and path): {again:.3f}s = {100 * again / first:.1f}% of the first run")
    print(f"folder A again after B: {back:.3f}s = {100 * back / first:.1f}% of the first run")
    return 0 if n == m == k else 1


if __name__ == "__main__":
    raise SystemExit(main())
