"""Decoding shop-size photos: full JPEG decode vs libjpeg's reduced scale (`Preprocess.load`, what embed, adapt,
tag and predict use). The sample's H&M photos are 128x192; a shop's originals are about 1166x1750, so N of them are
upscaled to that size and saved as JPEG (quality 90) in a temporary folder first.

    python benchmarks/decode_speed.py --data ../shared/data/hm [--n 300] [--input-size 160]

Prints ms per photo on one core for both, and how far the reduced-scale arrays are from the full decode. Figures,
never asserts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--input-size", type=int, default=160)
    ap.add_argument("--size", default="1166x1750", help="W x H of the upscaled photos")
    args = ap.parse_args(argv)
    from PIL import Image

    from fashionrec.data.images import list_images, load_image
    from fashionrec.features import Preprocess

    w, h = (int(v) for v in args.size.split("x"))
    src = list_images(Path(args.data) / "images")[: args.n]
    pre = Preprocess(args.input_size, (0.5,) * 3, (0.5,) * 3)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for p in src:
            q = Path(tmp) / p.name
            Image.open(p).convert("RGB").resize((w, h), Image.BICUBIC).save(q, "JPEG", quality=90)
            paths.append(q)
        t = time.perf_counter()
        full = [pre.pil_to_array(load_image(p)) for p in paths]
        t_full = (time.perf_counter() - t) / len(paths) * 1000
        t = time.perf_counter()
        fast = [pre.load(p) for p in paths]
        t_fast = (time.perf_counter() - t) / len(paths) * 1000
    diff = np.abs(np.stack(full).astype(np.int16) - np.stack(fast)).astype(np.float32)
    print(f"{len(paths)} photos {w}x{h} -> {args.input_size} px, one core:")
    print(f"  full decode + resize:   {t_full:.1f} ms/photo")
    print(f"  reduced-scale decode:   {t_fast:.1f} ms/photo ({t_full / t_fast:.1f}x faster)")
    print(f"  pixel difference (0-255): mean {diff.mean():.2f}, 99th percentile {np.percentile(diff, 99):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
