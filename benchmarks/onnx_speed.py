"""The inference passes of `fashionrec adapt` and `tag --model`: torch (channels-last, what ran before) vs ONNX
Runtime fp32 (`features.onnx_function`, now the default where it matches torch).

    python benchmarks/onnx_speed.py --data ../shared/data/hm [--n 512] [--input-size 160] [--threads 2]

Times, on N real photos of the folder (decoded once, as adapt and tag decode them): the frozen lower part that
`adapt` caches in four views (stem + blocks below the split), the upper pass its evaluation runs on the cached maps
(blocks from the split + tail + embedding + pooled taps), and the whole network as `tag --model` runs it on the
photo and its mirror image. Prints photos per second for each engine and the largest difference between them.
Figures, never asserts; best of --repeat runs per pass.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat: int) -> float:
    fn()  # warm-up (oneDNN and ONNX Runtime pick their kernels on the first call)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _compare(name: str, owner, fn, inp, repeat: int) -> str:
    """One pass, torch vs ONNX Runtime: the line to print."""
    import torch

    from fashionrec.features import onnx_function

    owner.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    run = onnx_function(owner, fn, inp[:8])
    t_export = time.perf_counter() - t0
    batches = [inp[s : s + 64] for s in range(0, len(inp), 64)]

    def torch_all():
        with torch.no_grad():
            return [fn(b.contiguous(memory_format=torch.channels_last)) for b in batches]

    t_torch = _best(torch_all, repeat)
    line = f"{name}: torch {len(inp) / t_torch:.0f} photos/s"
    if run is None:
        return line + "; ONNX Runtime: not available or did not match torch"
    arrays = [b.numpy() for b in batches]
    t_ort = _best(lambda: [run(a) for a in arrays], repeat)
    ref = np.concatenate([(r if isinstance(r, torch.Tensor) else r[0]).numpy() for r in torch_all()])
    got = np.concatenate([run(a)[0] for a in arrays])
    rel = np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12)
    return line + (
        f", ONNX Runtime {len(inp) / t_ort:.0f} photos/s ({t_torch / t_ort:.1f}x; export + check {t_export:.1f} s; "
        f"largest difference {rel:.1e} of the largest output)"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--input-size", type=int, default=160)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--train-blocks", type=int, default=3, help="adapt's split: blocks trained from the top")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    from fashionrec.backbones import create_backbone
    from fashionrec.backbones.adapted import AdaptedBackbone
    from fashionrec.data.images import list_images
    from fashionrec.features import Preprocess
    from fashionrec.training.adapt import AdaptedModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    trunk = create_backbone(args.backbone, input_size=args.input_size).eval()
    k = len(trunk.blocks) - args.train_blocks
    pre = Preprocess.for_backbone(trunk)
    paths = list_images(Path(args.data) / "images")[: args.n]
    x = pre.arrays_to_tensor(np.stack([pre.load(p) for p in paths]))
    model = AdaptedModel(AdaptedBackbone(trunk, 256, weights_id="bench"), {"h": ["a", "b"]}, head_taps=(3, 4, 5))
    model.eval()
    with torch.no_grad():
        maps = trunk.forward_lower(x, k)
    both = torch.cat([x, x.flip(-1)])  # tag: the photo and its mirror image

    passes = [
        (f"lower part (stem + blocks[:{k}]), adapt's caching", trunk, lambda t: trunk.forward_lower(t, k), x),
        (
            f"upper pass (blocks[{k}:] + embedding + taps), adapt's evaluation",
            model,
            lambda t: model.head_inputs(t, k),
            maps,
        ),
        (
            "whole network, photo + mirror (tag --model)",
            model,
            lambda t: model.head_inputs(trunk.forward_lower(t, 0), 0),
            both,
        ),
    ]
    print(f"{args.backbone} at {args.input_size} px, {len(paths)} photos, {args.threads} threads, batches of 64:")
    for name, owner, fn, inp in passes:
        print("  " + _compare(name, owner, fn, inp, args.repeat), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
