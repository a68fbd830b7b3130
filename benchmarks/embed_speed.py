"""Feature-extraction speed: the eager fp32 PyTorch reference and each fast path, in one process and one run.

For each path: images/s, speed-up over the reference, cosine similarity of its features to the reference's,
linear-probe accuracy on Fashion-MNIST (100 labels per class, 2,000 test images) and its delta, and the
fraction of the machine's estimated peak FLOP/s it reaches. Last line:
    best speedup N.NNx (PATH), accuracy delta D.DDD
where the best path is the fastest one whose probe accuracy is within 0.005 of the reference (the acceptance
gate). The line before it names the fastest path whose features also match the reference (mean cosine >= 0.99):
that is the one `fashionrec.features.fastest_path()` picks automatically.

    .venv/bin/python benchmarks/embed_speed.py [--size 96] [--n 2048] [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch


def peak_flops() -> tuple[float, str]:
    """cores x GHz x FLOPs/cycle (fp32): 2 FMA units x 16 lanes x 2 with AVX-512, 2 x 8 x 2 with AVX2."""
    flags, ghz = "", 2.0
    try:
        info = open("/proc/cpuinfo").read()
        flags = next(l for l in info.splitlines() if l.startswith("flags"))
        import re

        m = re.search(r"@ ([0-9.]+)GHz", info) or re.search(r"cpu MHz\s*:\s*([0-9.]+)", info)
        if m:
            ghz = float(m.group(1)) / (1000 if "MHz" in m.group(0) else 1)
    except (OSError, StopIteration):
        pass
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 8
    cores = torch.get_num_threads()
    return cores * ghz * 1e9 * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle"


def model_flops(backbone, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        backbone(torch.zeros(1, 3, size, size))
    return float(fc.get_total_flops())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n", type=int, default=2048, help="images timed per path")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--paths", default="fp32,fp32-cl,bf16-cl,onnx-fp32,onnx-int8")
    args = ap.parse_args()

    from fashionrec.backbones import create_backbone
    from fashionrec.data.fashion_mnist import load_fashion_mnist, sample_per_class
    from fashionrec.features import InferencePath, Preprocess, embed_arrays
    from fashionrec.training.probe import fit_linear_probe

    d = load_fashion_mnist()
    rng = np.random.default_rng(0)
    timed = d.x_test[rng.permutation(len(d.x_test))[: args.n]]
    tr = sample_per_class(d.y_train, 100, seed=0)
    te = np.arange(2000)
    peak, how = peak_flops()
    bb = create_backbone(args.backbone, input_size=args.size)
    pre = Preprocess.for_backbone(bb, invert=True)
    flops = model_flops(bb, args.size)
    print(f"{args.backbone} at {args.size}px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{flops / 1e9:.3f} GFLOP/image; peak estimate {peak / 1e9:.0f} GFLOP/s ({how})")
    print(f"{'path':10s} {'img/s':>8s} {'speedup':>8s} {'cos min':>8s} {'cos mean':>9s} {'probe acc':>10s} {'delta':>7s} {'% peak':>7s}")
    results = {}
    ref_feats = None
    for name in args.paths.split(","):
        path = InferencePath.parse(name)
        b = create_backbone(args.backbone, input_size=args.size)
        embed_arrays(b, timed[: args.batch], preprocess=pre, path=path, batch_size=args.batch, progress=False)  # warm-up/export
        t = time.perf_counter()
        f_timed = embed_arrays(b, timed, preprocess=pre, path=path, batch_size=args.batch, progress=False)
        ips = len(timed) / (time.perf_counter() - t)
        f_tr = embed_arrays(b, d.x_train[tr], preprocess=pre, path=path, batch_size=args.batch, progress=False)
        f_te = embed_arrays(b, d.x_test[te], preprocess=pre, path=path, batch_size=args.batch, progress=False)
        acc = float((fit_linear_probe(f_tr, d.y_train[tr], C=0.1).predict(f_te) == d.y_test[te]).mean())
        if ref_feats is None:
            ref_feats, ref_ips, ref_acc = f_timed, ips, acc
        cos = (f_timed * ref_feats).sum(1) / np.linalg.norm(f_timed, axis=1) / np.linalg.norm(ref_feats, axis=1)
        results[name] = (ips / ref_ips, acc - ref_acc, float(cos.mean()))
        print(f"{name:10s} {ips:8.1f} {ips / ref_ips:7.2f}x {cos.min():8.4f} {cos.mean():9.4f} {acc:10.4f} "
              f"{acc - ref_acc:+7.4f} {100 * ips * flops / peak:6.1f}%", flush=True)
    exact = {k: v for k, v in results.items() if abs(v[1]) <= 0.005 and v[2] >= 0.99}
    e = max(exact, key=lambda k: exact[k][0])
    print(f"fastest with matching features (mean cosine >= 0.99): {exact[e][0]:.2f}x ({e}), accuracy delta {exact[e][1]:.3f}")
    ok = {k: v for k, v in results.items() if abs(v[1]) <= 0.005}
    best = max(ok, key=lambda k: ok[k][0])
    print(f"best speedup {ok[best][0]:.2f}x ({best}), accuracy delta {ok[best][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
