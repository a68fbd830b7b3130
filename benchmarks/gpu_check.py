"""GPU check: embedding photos/s on the CPU and on CUDA, the parity of their features, and a fine-tune step on each.

Runs fashionrec's own code paths (`features.embed_arrays(device=...)`: mixed precision on CUDA, eager fp32 on the
CPU; a fine-tune step as `train --method finetune` / `adapt` take it: the top blocks + a linear head, AdamW, under
`fashionrec.device.autocast`) on the same inputs (the first --n catalog photos of --data, or seeded random images
without it) and prints:
    cpu embed: N.N photos/s
    cuda embed: N.N photos/s (Sx the CPU)
    parity cuda vs cpu: max abs diff D (features up to M), cosine mean C min C
    cpu fine-tune step: T ms (batch B)
    cuda fine-tune step: T ms (Sx faster)
Without a CUDA device it prints the CPU figures and `no CUDA device: CPU figures only`, and exits 0.

    python benchmarks/gpu_check.py [--data ../shared/data/hm] [--n 256] [--backbone efficientnet_lite0] [--size 160]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def load_images(data: str | None, n: int, pre) -> np.ndarray:
    """uint8 (n, S, S, 3): decoded catalog photos, or seeded random images."""
    if data:
        from fashionrec.data.catalog import load_catalog
        from fashionrec.features import decode_images_to_array

        items = dict(list(load_catalog(data).image_paths.items())[:n])
        _, arr, _ = decode_images_to_array(items, pre, progress=False)
        if not len(arr):
            raise SystemExit(f"{data}: no readable photos")
        return arr
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, pre.input_size, pre.input_size, 3), dtype=np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embed_speed(backbone, images: np.ndarray, pre, device, batch: int) -> tuple[np.ndarray, float]:
    """Features of `images` on `device` (fashionrec's extraction path) and photos/s, after one warm-up batch."""
    from fashionrec.features import embed_arrays

    kw = dict(preprocess=pre, batch_size=batch, progress=False, device=device)
    embed_arrays(backbone, images[:batch], **kw)
    sync(device)
    t0 = time.perf_counter()
    feats = embed_arrays(backbone, images, **kw)
    sync(device)
    return feats, len(images) / (time.perf_counter() - t0)


def finetune_step_ms(backbone_name: str, size: int, images: np.ndarray, pre, device, batch: int, steps: int) -> float:
    """Mean milliseconds of one training step (forward, loss, backward, AdamW) of the top 3 blocks + a linear head,
    after two warm-up steps."""
    from fashionrec.backbones import create_backbone
    from fashionrec.device import autocast
    from fashionrec.training.finetune import ImageClassifier

    bb = create_backbone(backbone_name, input_size=size)
    model = ImageClassifier(bb, 10).to(device).train()
    for p in model.backbone.parameters():
        p.requires_grad = False
    trainable = list(model.head.parameters()) + [p for b in bb.blocks[-3:] for p in b.parameters()]
    for p in trainable:
        p.requires_grad = True
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    rng = np.random.default_rng(0)
    x = pre.arrays_to_tensor(images[:batch]).to(device)
    y = torch.as_tensor(rng.integers(0, 10, len(x)), dtype=torch.long, device=device)
    times = []
    for i in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.mean(times))


def parity(a: np.ndarray, b: np.ndarray) -> str:
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (
        f"max abs diff {np.abs(a - b).max():.4g} (features up to {np.abs(a).max():.3g}), "
        f"cosine mean {cos.mean():.6f} min {cos.min():.6f}"
    )


def main() -> None:
    from fashionrec.backbones import create_backbone
    from fashionrec.features import Preprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="catalog folder whose photos are embedded (default: random images)")
    ap.add_argument("--n", type=int, default=256, help="photos to embed")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="backbone name")
    ap.add_argument("--size", type=int, default=160, help="input size in pixels")
    ap.add_argument("--batch", type=int, default=64, help="photos per batch (embedding)")
    ap.add_argument("--train-batch", type=int, default=32, help="photos per fine-tune step")
    ap.add_argument("--steps", type=int, default=5, help="timed fine-tune steps per device")
    args = ap.parse_args()

    bb = create_backbone(args.backbone, input_size=args.size).eval()
    pre = Preprocess.for_backbone(bb)
    images = load_images(args.data, args.n, pre)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.backbone} at {args.size} px, {len(images)} photos, batch {args.batch}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, load average {load:.1f}"
    )
    cpu = torch.device("cpu")
    ref, cpu_speed = embed_speed(bb, images, pre, cpu, args.batch)
    print(f"cpu embed: {cpu_speed:.1f} photos/s")
    cpu_ms = finetune_step_ms(args.backbone, args.size, images, pre, cpu, args.train_batch, args.steps)
    print(f"cpu fine-tune step: {cpu_ms:.0f} ms (batch {args.train_batch})")
    if not torch.cuda.is_available():
        print("no CUDA device: CPU figures only")
        return
    cuda = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}")
    feats, speed = embed_speed(bb, images, pre, cuda, args.batch)
    print(f"cuda embed: {speed:.1f} photos/s ({speed / cpu_speed:.1f}x the CPU)")
    print(f"parity cuda vs cpu: {parity(ref, feats)}")
    ms = finetune_step_ms(args.backbone, args.size, images, pre, cuda, args.train_batch, args.steps)
    print(f"cuda fine-tune step: {ms:.1f} ms ({cpu_ms / ms:.1f}x faster)")


if __name__ == "__main__":
    main()
