"""Feature-extraction speed: the eager fp32 PyTorch reference and each fast path, in one process and one run.

For each path: images/s, speed-up over the reference (each path timed between two runs of the reference, best of
`--repeat`, so a change in machine load hits both), cosine of its features to the reference's (mean, 5th
percentile, min), and the fraction of the machine's estimated peak FLOP/s. Then the automatic choice: what the
on-machine probe (`fashionrec.features.resolve_path`, the `auto` path) picks here, with its own measurements.

Data: real H&M photos (`--data hm`, default): the evaluation photos are disjoint from the int8 calibration photos.
`--data fmnist` uses Fashion-MNIST test images (inverted) instead: no photos needed, but not what a shop embeds.
`--sweep-int8` quantises with every recipe in INT8_SWEEP and prints the calibration table
(docs/results/int8_calibration.md). Last line:
    best speedup N.NNx (PATH), mean cosine C.CCCC
the fastest path whose features match the reference (mean cosine >= 0.99).

    nice -n 10 .venv/bin/python benchmarks/embed_speed.py [--size 96] [--n 512] [--batch 64] [--sweep-int8]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HM_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hm" / "images"

# Int8 recipes the sweep tries (fields of fashionrec.features.Int8Recipe); the first is the old default.
INT8_SWEEP = [
    dict(calibrate_method="MinMax", calib_images=64, activation_type="QUInt8", exclude_first_last=False),
    dict(calibrate_method="MinMax", calib_images=512, activation_type="QUInt8", exclude_first_last=False),
    dict(calibrate_method="Percentile", calib_images=512, activation_type="QUInt8", exclude_first_last=False),
    dict(calibrate_method="Entropy", calib_images=256, activation_type="QUInt8", exclude_first_last=False),
    dict(
        calibrate_method="MinMax",
        calib_images=256,
        activation_type="QUInt8",
        exclude_first_last=False,
        reduce_range=True,
    ),
    dict(calibrate_method="Percentile", calib_images=512, activation_type="QUInt8", exclude_first_last=True),
    dict(
        calibrate_method="Percentile",
        calib_images=512,
        activation_type="QUInt8",
        exclude_first_last=True,
        quant_format="QOperator",
    ),
    dict(
        calibrate_method="Percentile",
        calib_images=512,
        activation_type="QUInt8",
        exclude_first_last=False,
        quant_format="QOperator",
    ),
    dict(calibrate_method="MinMax", calib_images=256, activation_type="QInt8", exclude_first_last=False),
    dict(calibrate_method="Percentile", calib_images=512, activation_type="QInt8", exclude_first_last=False),
    dict(calibrate_method="Percentile", calib_images=512, activation_type="QInt8", exclude_first_last=True),
]


def peak_flops() -> tuple[float, str]:
    """cores x GHz x FLOPs/cycle (fp32): 2 FMA units x 16 lanes x 2 with AVX-512, 2 x 8 x 2 with AVX2."""
    flags, ghz = "", 2.0
    try:
        info = open("/proc/cpuinfo").read()
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
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


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def run_batches(fn, x: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([fn(x[s : s + batch]) for s in range(0, len(x), batch)])


def timed(fn, x: torch.Tensor, batch: int) -> float:
    t = time.perf_counter()
    run_batches(fn, x, batch)
    return time.perf_counter() - t


def speed_vs_ref(fn, ref_fn, x, batch, repeat) -> tuple[float, float]:
    """(images/s of fn, images/s of the reference), each the best of `repeat`, runs interleaved ref, fn, ref, fn."""
    t_fn, t_ref = [], []
    for _ in range(repeat):
        t_ref.append(timed(ref_fn, x, batch))
        t_fn.append(timed(fn, x, batch))
    return len(x) / min(t_fn), len(x) / min(t_ref)


def load_hm(pre, n_eval: int, n_calib: int, seed: int = 0):
    """Disjoint calibration and evaluation photos (a seeded shuffle of the sorted file list), normalised."""
    from fashionrec.features import decode_images_to_array

    if not HM_IMAGES.is_dir():
        sys.exit(f"H&M photos not found at {HM_IMAGES} (see the data README); use --data fmnist")
    paths = sorted(HM_IMAGES.glob("*.jpg"))
    order = np.random.default_rng(seed).permutation(len(paths))
    cal = {paths[i].stem: paths[i] for i in order[:n_calib]}
    ev = {paths[i].stem: paths[i] for i in order[n_calib : n_calib + n_eval]}
    assert not set(cal) & set(ev)
    _, a_cal, _ = decode_images_to_array(cal, pre, num_workers=0, desc="decode calibration photos")
    _, a_ev, _ = decode_images_to_array(ev, pre, num_workers=0, desc="decode evaluation photos")
    return pre.arrays_to_tensor(a_cal), pre.arrays_to_tensor(a_ev)


def sweep_int8(bb, cal: torch.Tensor, ev: torch.Tensor, ref: np.ndarray, eager, args) -> list[dict]:
    import onnxruntime as ort

    from fashionrec.features import Int8Recipe, export_onnx, quantize_int8

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="embed-speed-int8-"))
    fp32 = export_onnx(bb, ev[:2], tmp / "model.onnx")
    print(f"\nint8 calibration sweep: {len(cal)} calibration photos available, {len(ev)} held-out photos")
    print(
        f"{'method':11s} {'calib':>5s} {'act':>6s} {'fp32 1st/last':>13s} {'format':>9s} {'rr':>3s} "
        f"{'cos mean':>9s} {'cos p5':>7s} {'cos min':>8s} {'speedup':>8s}"
    )
    for i, kw in enumerate(INT8_SWEEP):
        if args.sweep_only and i not in args.sweep_only:
            continue
        r = Int8Recipe(**kw)
        try:
            q = quantize_int8(fp32, tmp / f"q{i}.onnx", cal[: r.calib_images].numpy(), r)
        except Exception as e:  # an onnxruntime.quantization failure is a row of the table too
            print(
                f"{r.calibrate_method:11s} {min(r.calib_images, len(cal)):5d} {r.activation_type:>6s} "
                f"{'yes' if r.exclude_first_last else 'no':>13s} {r.quant_format:>9s} "
                f"{'yes' if r.reduce_range else 'no':>3s}  failed: {type(e).__name__}: {e}",
                flush=True,
            )
            continue
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(q), opts, providers=["CPUExecutionProvider"])
        fn = lambda x, sess=sess: sess.run(None, {"x": x.numpy()})[0]
        f = run_batches(fn, ev, args.batch)
        c = cosines(f, ref)
        ips, ref_ips = speed_vs_ref(fn, eager, ev, args.batch, args.repeat)
        row = dataclasses.asdict(r) | {
            "cos_mean": float(c.mean()),
            "cos_p5": float(np.percentile(c, 5)),
            "cos_min": float(c.min()),
            "speedup": ips / ref_ips,
        }
        rows.append(row)
        print(
            f"{r.calibrate_method:11s} {min(r.calib_images, len(cal)):5d} {r.activation_type:>6s} "
            f"{'yes' if r.exclude_first_last else 'no':>13s} {r.quant_format:>9s} {'yes' if r.reduce_range else 'no':>3s} "
            f"{row['cos_mean']:9.4f} {row['cos_p5']:7.4f} {row['cos_min']:8.4f} {row['speedup']:7.2f}x",
            flush=True,
        )
    good = [r for r in rows if r["cos_mean"] >= 0.99 and r["speedup"] >= 4.0]
    print("int8 recipes with mean cosine >= 0.99 and >= 4x eager: " + (str(len(good)) if good else "none"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--data", choices=["hm", "fmnist"], default="hm")
    ap.add_argument("--n", type=int, default=512, help="images timed and compared per path")
    ap.add_argument("--calib", type=int, default=512, help="H&M calibration photos (disjoint from the --n timed ones)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per path (best counts)")
    ap.add_argument("--paths", default="fp32-cl,bf16-cl,onnx-fp32,onnx-int8")
    ap.add_argument("--sweep-int8", action="store_true")
    ap.add_argument(
        "--sweep-only",
        type=lambda v: {int(i) for i in v.split(",")},
        default=None,
        help="rows of INT8_SWEEP to run (0-based, comma-separated)",
    )
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("fashionrec").setLevel(logging.INFO)
    from fashionrec import features as FT
    from fashionrec.backbones import create_backbone
    from fashionrec.features import InferencePath, Preprocess

    torch.manual_seed(0)
    bb = create_backbone(args.backbone, input_size=args.size).eval()
    if args.data == "hm":
        pre = Preprocess.for_backbone(bb)
        cal, ev = load_hm(pre, args.n, args.calib)
    else:
        from fashionrec.data.fashion_mnist import load_fashion_mnist

        d = load_fashion_mnist()
        pre = Preprocess.for_backbone(bb, invert=True)
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(d.x_test))
        ev = pre.arrays_to_tensor(d.x_test[perm[: args.n]])
        cal = pre.arrays_to_tensor(d.x_train[rng.permutation(len(d.x_train))[: args.calib]])
    peak, how = peak_flops()
    flops = model_flops(bb, args.size)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.backbone} at {args.size}px, batch {args.batch}, {torch.get_num_threads()} threads, {len(ev)} "
        f"{'H&M photos' if args.data == 'hm' else 'Fashion-MNIST images'}, {flops / 1e9:.3f} GFLOP/image; peak "
        f"estimate {peak / 1e9:.0f} GFLOP/s ({how}); load average {load:.1f} at start"
    )

    def runner(b, path):
        FT.prepare_for_path(b, path)
        return lambda x: FT.run_backbone(b, x, path).numpy()

    eager = runner(bb, InferencePath())
    ref = run_batches(eager, ev, args.batch)
    results = {}
    print(f"{'path':10s} {'img/s':>8s} {'speedup':>8s} {'cos mean':>9s} {'cos p5':>7s} {'cos min':>8s} {'% peak':>7s}")
    for name in ["fp32"] + [p for p in args.paths.split(",") if p and p != "fp32"]:
        path = InferencePath.parse(name)
        b = create_backbone(args.backbone, input_size=args.size).eval()
        if path.precision == "int8":  # calibrated on the calibration photos only
            FT.int8_calibration(b, path, lambda n: cal[:n])
        fn = runner(b, path)
        fn(ev[: args.batch])  # warm-up / export / quantise
        f = run_batches(fn, ev, args.batch)
        ips, ref_ips = speed_vs_ref(fn, eager, ev, args.batch, args.repeat)
        c = cosines(f, ref)
        results[name] = (ips / ref_ips, float(c.mean()))
        print(
            f"{name:10s} {ips:8.1f} {ips / ref_ips:7.2f}x {c.mean():9.4f} {np.percentile(c, 5):7.4f} {c.min():8.4f} "
            f"{100 * ips * flops / peak:6.1f}%",
            flush=True,
        )
    if args.data == "fmnist":
        print("(Fashion-MNIST cosines: features of inverted 28 px digits-style images, not the shop's photos)")

    if args.sweep_int8:
        sweep_int8(bb, cal, ev, ref, eager, args)

    with tempfile.TemporaryDirectory() as ws:  # a fresh probe, not this machine's cached choice
        t = time.perf_counter()
        chosen = FT.resolve_path(
            InferencePath.auto(),
            create_backbone(args.backbone, input_size=args.size),
            pre,
            args.batch,
            sample=lambda: ev[: args.batch],
            workspace=ws,
        )
        import json

        (rec,) = json.loads((Path(ws) / FT.PROBE_FILE).read_text()).values()
        print(f"probe: {rec['summary']}")
        print(
            f"probe picks {chosen.name} in {time.perf_counter() - t:.1f} s (candidates here: "
            f"{', '.join(FT.auto_candidates())}; int8 is never a candidate)"
        )
    exact = {k: v for k, v in results.items() if v[1] >= 0.99}
    e = max(exact, key=lambda k: exact[k][0])
    print(f"best speedup {exact[e][0]:.2f}x ({e}), mean cosine {exact[e][1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
