"""GPU check: embedding throughput on CPU and on a CUDA device, and whether both give the same features.

Embeds the same photos (the first --n catalog photos of --data, or seeded random images without it) with the
backbone on the CPU (eager fp32, the reference) and, when `torch.cuda.is_available()`, on the GPU (fp32, then
bf16 autocast), and prints photos/s of each and the cosine of the GPU features to the CPU ones (mean, min).
Without a CUDA device it prints the CPU figure and `no CUDA device`. Last line:
    cuda: N.N photos/s (Sx the CPU), cosine to CPU mean C.CCCCCC min C.CCCCCC
or
    no CUDA device: CPU only, N.N photos/s

    python benchmarks/gpu_check.py [--data ../shared/data/hm] [--n 512] [--backbone efficientnet_lite0] [--size 160]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def load_inputs(data: str | None, n: int, pre) -> torch.Tensor:
    if data:
        from fashionrec.data.catalog import load_catalog

        paths = list(load_catalog(data).image_paths.values())[:n]
        arrays = []
        for p in paths:
            try:
                arrays.append(pre.load(p))
            except Exception:  # an unreadable photo: skipped, as the embedder does
                continue
        if not arrays:
            raise SystemExit(f"{data}: no readable photos")
        return pre.arrays_to_tensor(np.stack(arrays))
    rng = np.random.default_rng(0)
    return pre.arrays_to_tensor(rng.integers(0, 256, size=(n, pre.input_size, pre.input_size, 3), dtype=np.uint8))


def embed(model, x: torch.Tensor, device: str, batch: int, bf16: bool = False) -> tuple[np.ndarray, float]:
    """Features of x (computed on `device`, returned on the CPU) and photos/s, after one warm-up batch."""
    outs = []
    with torch.inference_mode():
        model(x[:batch].to(device))
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            xb = x[i : i + batch].to(device, non_blocking=True)
            if bf16:
                with torch.autocast(device, dtype=torch.bfloat16):
                    outs.append(model(xb).float().cpu())
            else:
                outs.append(model(xb).float().cpu())
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return torch.cat(outs).numpy(), len(x) / seconds


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def main() -> None:
    from fashionrec.backbones import create_backbone
    from fashionrec.features import Preprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="catalog folder whose photos are embedded (default: random images)")
    ap.add_argument("--n", type=int, default=512, help="photos to embed")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="backbone name or adapt folder")
    ap.add_argument("--size", type=int, default=160, help="input size in pixels")
    ap.add_argument("--batch", type=int, default=64, help="photos per batch")
    args = ap.parse_args()

    bb = create_backbone(args.backbone, input_size=args.size).eval()
    pre = Preprocess.for_backbone(bb)
    x = load_inputs(args.data, args.n, pre)
    print(f"{args.backbone} at {args.size} px, {len(x)} photos, batch {args.batch}, torch {torch.__version__}")
    ref, cpu_speed = embed(bb, x, "cpu", args.batch)
    print(f"cpu fp32: {cpu_speed:.1f} photos/s ({torch.get_num_threads()} threads)")
    if not torch.cuda.is_available():
        print(f"no CUDA device: CPU only, {cpu_speed:.1f} photos/s")
        return
    print(f"device: {torch.cuda.get_device_name(0)}")
    bb.to("cuda")
    lines = []
    for label, bf16 in (("cuda bf16", True), ("cuda", False)):
        feats, speed = embed(bb, x, "cuda", args.batch, bf16=bf16)
        c = cosine(ref, feats)
        lines.append(
            f"{label}: {speed:.1f} photos/s ({speed / cpu_speed:.1f}x the CPU), cosine to CPU mean "
            f"{c.mean():.6f} min {c.min():.6f}"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
