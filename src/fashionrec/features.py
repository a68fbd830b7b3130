"""Batched feature extraction with progress, parallel decoding, and an on-disk cache.

The cache key is backbone (name + weights) + preprocessing + inference path + input data:
- arrays (Fashion-MNIST): a hash of the array bytes;
- image files: per photo, a hash of its bytes (`FeatureStore`, one SQLite database for every folder and model):
  a photo embedded before is reused under any path or name (a moved, copied or hard-linked folder), changed or
  new photos are computed, so adding ten images to a catalog of 100,000 embeds ten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from fashionrec.backbones.base import Backbone
from fashionrec.data.images import ImageDecodeError, decode_image, load_image
from fashionrec.io import atomic_path, default_workspace, write_json

log = logging.getLogger(__name__)


# Part of every feature-cache key: 2 = large JPEGs decoded at reduced scale (`Preprocess.load`)
DECODE_VERSION = 2


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become model input. `input_size`, `mean`, `std` come from the backbone's data config.

    `invert`: Fashion-MNIST is a light garment on black; ImageNet shop photos are dark-on-light. Inverting maps
    the greyscale digits-style images towards the photos the backbone learned from (a domain-shift fix).
    `pad_square`: product photos are portrait; padding with white keeps the whole garment and its shape.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    invert: bool = False
    pad_square: bool = True

    @classmethod
    def for_backbone(cls, backbone: Backbone, **overrides) -> Preprocess:
        cfg = backbone.data_config
        kw = {"input_size": cfg.input_size, "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def key(self) -> str:
        return json.dumps({**asdict(self), "decode": DECODE_VERSION}, sort_keys=True)

    def load(self, path: str | Path) -> np.ndarray:
        """An image file -> uint8 (S, S, 3), as `pil_to_array` makes it. A JPEG much larger than the input is
        decoded at libjpeg's 1/2, 1/4 or 1/8 scale that still covers `input_size` on both sides (`draft`): 5x faster
        for a 1166x1750 H&M original at 160 px (22 -> 4 ms, `benchmarks/decode_speed.py`), mean pixel difference
        0.45 of 255; a photo whose shorter side is under twice the input size decodes exactly as before."""
        return self.pil_to_array(load_image(path, draft_size=self.input_size))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 3, H, W) in [0, 1] -> resized, normalised model input."""
        if self.invert:
            x = 1.0 - x
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def arrays_to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W) greyscale or (B, H, W, 3) RGB -> normalised (B, 3, S, S)."""
        x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).float().div_(255.0)
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return self.normalize(x)

    def pil_to_array(self, img: Image.Image) -> np.ndarray:
        """Decode-side work done in loader workers: pad to square (white), resize, -> uint8 (S, S, 3)."""
        img = img.convert("RGB")
        if self.pad_square and img.width != img.height:
            side = max(img.size)
            canvas = Image.new("RGB", (side, side), (255, 255, 255))
            canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
            img = canvas
        img = img.resize((self.input_size, self.input_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


@dataclass(frozen=True)
class InferencePath:
    """How the forward pass runs. Eager fp32 PyTorch is the reference. Fast paths: channels-last memory format,
    bf16 autocast (fast where the CPU has AMX/AVX512-BF16), ONNX Runtime fp32, ONNX Runtime int8 (static QDQ
    quantisation; explicit opt-in only, its features drift from fp32's: see `Int8Recipe`).

    `InferencePath.auto()` (name 'auto') is not a path but a request: the embed functions resolve it with
    `resolve_path`, a short on-machine probe whose choice is cached in the workspace.
    """

    precision: str = "fp32"  # fp32 | bf16 | int8
    channels_last: bool = False
    engine: str = "torch"  # torch | onnx | auto

    def __post_init__(self):
        if self.engine not in {"torch", "onnx", "auto"} or self.precision not in {"fp32", "bf16", "int8"}:
            raise ValueError(f"bad inference path {self}")
        if self.engine == "torch" and self.precision == "int8":
            raise ValueError("int8 runs through ONNX Runtime: InferencePath('int8', engine='onnx')")
        if self.engine == "onnx" and self.precision == "bf16":
            raise ValueError("ONNX paths are fp32 or int8")
        if self.engine == "auto" and (self.precision != "fp32" or self.channels_last):
            raise ValueError("use InferencePath.auto() for the automatic choice")

    @classmethod
    def auto(cls) -> InferencePath:
        return cls(engine="auto")

    @property
    def is_auto(self) -> bool:
        return self.engine == "auto"

    def key(self) -> str:
        if self.is_auto:
            raise ValueError("InferencePath.auto() has no key: resolve it first (features.resolve_path)")
        return f"{self.engine}-{self.precision}-{'cl' if self.channels_last else 'nchw'}"

    def numerics_key(self) -> str:
        """What the feature cache keys on: which NUMBERS this path computes, not how fast.

        Every fp32 path (eager, channels-last, ONNX Runtime fp32) computes the same features up to fp32 rounding
        (measured cosine 1.0000, max abs difference ~1e-5, no larger than eager's own run-to-run and
        thread-count differences), so they share the eager key: switching between them (e.g. the probe choosing
        differently on another machine) reuses the cached features. bf16 and int8 change the numbers (cosine
        0.999, resp. much lower), so each keeps its own key; int8's also names its quantisation recipe.
        """
        if self.is_auto:
            self.key()  # raises: resolve first
        if self.precision == "fp32":
            return InferencePath().key()
        if self.precision == "int8":
            return f"{self.key()}-{INT8_RECIPE.key()}"
        return self.key()

    @property
    def name(self) -> str:
        """The name `parse` reads back: 'fp32', 'fp32-cl', 'bf16', 'bf16-cl', 'onnx-fp32', 'onnx-int8', 'auto'."""
        if self.is_auto:
            return "auto"
        if self.engine == "onnx":
            return f"onnx-{self.precision}"
        return self.precision + ("-cl" if self.channels_last else "")

    @classmethod
    def parse(cls, name: str) -> InferencePath:
        """'auto', 'fp32', 'fp32-cl', 'bf16', 'bf16-cl', 'onnx-fp32', 'onnx-int8'."""
        table = {
            "fp32": cls(),
            "fp32-cl": cls("fp32", True),
            "bf16": cls("bf16"),
            "bf16-cl": cls("bf16", True),
            "onnx-fp32": cls("fp32", engine="onnx"),
            "onnx-int8": cls("int8", engine="onnx"),
            "auto": cls.auto(),
        }
        if name not in table:
            raise ValueError(f"unknown inference path '{name}'; choose from {sorted(table)}")
        return table[name]


@dataclass(frozen=True)
class Int8Recipe:
    """How the ONNX Runtime int8 model is made (onnxruntime.quantization.quantize_static). Part of the int8 cache key.

    Measured on held-out H&M photos (docs/results/int8_calibration.md, `benchmarks/embed_speed.py --sweep-int8`): no
    recipe reaches mean cosine 0.99 to fp32. Fast recipes (uint8 activations, fused int8 kernels) reach 0.78-0.84
    whatever the calibration; symmetric int8 activations reach 0.97 but run no faster than ONNX Runtime fp32 (which
    is exact). The default is the fast recipe with the best cosine: Percentile on 512 photos, uint8 activations.
    """

    calibrate_method: str = "Percentile"  # MinMax | Entropy | Percentile
    percentile: float = 99.999
    calib_images: int = 512  # calibration photos (the first ones of the job, in order)
    activation_type: str = "QUInt8"  # QUInt8 (asymmetric) | QInt8 (symmetric)
    per_channel: bool = True
    exclude_first_last: bool = False  # True: stem conv, head conv (+ its activation, pooling) stay fp32
    quant_format: str = "QDQ"  # QDQ | QOperator (QOperator fails on this graph: "Graph is not a DAG")
    reduce_range: bool = False

    def key(self) -> str:
        return "q" + hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


INT8_RECIPE = Int8Recipe()
INT8_MEASURED_COSINE = "0.84"  # INT8_RECIPE's mean cosine to eager fp32 on held-out H&M photos (int8_calibration.md)


def quantize_int8(
    fp32_model: str | Path, out: str | Path, calib: np.ndarray, recipe: Int8Recipe = INT8_RECIPE, batch: int = 32
) -> Path:
    """Static int8 quantisation of an exported fp32 ONNX model, calibrated on `calib` ((N, 3, S, S) model inputs)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(
                [
                    {"x": np.ascontiguousarray(calib[i : i + batch], dtype=np.float32)}
                    for i in range(0, len(calib), batch)
                ]
            )

        def get_next(self):
            return next(self.items, None)

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="fashionrec-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_model), str(pre))
        graph = onnx.load(str(pre)).graph
        exclude = []
        if recipe.exclude_first_last:
            convs = [n.name for n in graph.node if n.op_type == "Conv"]
            tail = [n.name for n in graph.node if n.op_type in {"GlobalAveragePool", "Flatten", "Gemm", "MatMul"}]
            exclude = convs[:1] + convs[-1:] + tail
            # the activation right after the head conv (its Clip/Relu) too, so the head runs in fp32 end to end
            if convs:
                outs = {o for n in graph.node if n.name == convs[-1] for o in n.output}
                exclude += [n.name for n in graph.node if set(n.input) & outs and n.op_type in {"Clip", "Relu"}]
        extra = {"ActivationSymmetric": recipe.activation_type == "QInt8"}
        if recipe.calibrate_method == "Percentile":
            extra["CalibPercentile"] = recipe.percentile
        with atomic_path(out, suffix=".tmp.onnx") as tmp_out:
            quantize_static(
                str(pre),
                str(tmp_out),
                _Reader(),
                nodes_to_exclude=exclude,
                quant_format=getattr(QuantFormat, recipe.quant_format),
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=getattr(QuantType, recipe.activation_type),
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
                extra_options=extra,
            )
    return out


def export_onnx(backbone: Backbone, x: torch.Tensor, out: str | Path) -> Path:
    """Export the backbone (eval mode) to ONNX with a dynamic batch axis."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            backbone.eval(),
            x[:2],
            str(out),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
            opset_version=17,
            dynamo=False,
        )
    return Path(out)


class _Method(nn.Module):
    """`fn` (a method of `owner`, with its settings bound) as a module's forward, so `owner`'s weights are the
    exported graph's parameters."""

    def __init__(self, owner: nn.Module, fn: Callable):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def onnx_function(
    owner: nn.Module, fn: Callable, example: torch.Tensor, *, rtol: float = 1e-3
) -> Callable[[np.ndarray], list[np.ndarray]] | None:
    """`fn(x)` (a tensor or a tuple of tensors from `owner`'s weights, in eval mode) run by ONNX Runtime fp32:
    returns run(x: float32 array) -> [outputs as arrays]. The exported graph is checked against torch on `example`
    (largest difference <= rtol x the largest output); None where onnxruntime is missing, the export fails or the
    check does, and the caller runs torch. Measured on 2 cores, Lite0 at 160 px, real photos: the layers below block
    4, 143 -> 445 photos/s; blocks 4-6 + tail, 684 -> 671 (no gain); the whole network, 98 -> 269
    (`benchmarks/onnx_speed.py`, `docs/results/onnx_speed.txt`)."""
    import importlib.util
    import tempfile
    import warnings

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return None
    import onnxruntime as ort

    owner.eval()
    mod = _Method(owner, fn).eval()
    try:
        with torch.no_grad():
            ref = fn(example)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        names = [f"y{i}" for i in range(len(refs))]
        with tempfile.TemporaryDirectory(prefix="fashionrec-onnx-") as tmp:
            path = Path(tmp) / "fn.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    mod,
                    (example[:2],),
                    str(path),
                    input_names=["x"],
                    output_names=names,
                    dynamic_axes={"x": {0: "b"}, **{n: {0: "b"} for n in names}},
                    opset_version=17,
                    dynamo=False,
                )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x0 = np.ascontiguousarray(example.float().numpy())
        got = sess.run(names, {"x": x0})
        for r, g in zip(refs, got):
            r = r.float().numpy()
            if r.shape != g.shape or np.abs(r - g).max() > rtol * max(1.0, float(np.abs(r).max())):
                log.warning("ONNX Runtime output differs from torch (%s); running torch", r.shape)
                return None
    except Exception as e:  # an op the exporter or the runtime lacks: torch runs it
        log.warning("ONNX Runtime unavailable for this model (%s: %s); running torch", type(e).__name__, e)
        return None

    def run(x: np.ndarray) -> list[np.ndarray]:
        return sess.run(names, {"x": np.ascontiguousarray(x, dtype=np.float32)})

    return run


_ONNX_SESSIONS: dict = {}
_INT8_WARNED: list = []
_INT8_CALIB: dict = {}  # id(backbone) -> (hash, calibration inputs) registered by the embed functions


def _int8_calibration(backbone: Backbone, path: InferencePath, calib_fn) -> str:
    """int8 only: take the job's first INT8_RECIPE.calib_images inputs as the calibration set, register it for the
    session, and return a suffix naming it for the feature-cache key (the quantised model, hence the features,
    depend on it). '' for every other path."""
    if path.precision != "int8":
        return ""
    c = calib_fn(INT8_RECIPE.calib_images)
    if c is None or len(c) == 0:
        return ""
    h = hashlib.sha1(np.ascontiguousarray(c.numpy()).tobytes()).hexdigest()[:12]
    _INT8_CALIB[id(backbone)] = (h, c)
    return f"-cal{h}"


def _onnx_session(backbone: Backbone, x: torch.Tensor, path: InferencePath, calib: torch.Tensor | None = None):
    """Export once per (model, input size, precision). int8 is calibrated on `calib` (else the first batch `x`)
    with INT8_RECIPE; it is an explicit opt-in only (warned once): its features are not fp32's."""
    import tempfile

    import onnxruntime as ort

    if path.precision == "int8" and calib is None:
        h, calib = _INT8_CALIB.get(id(backbone), (None, None))
        if calib is None or tuple(calib.shape[1:]) != tuple(x.shape[1:]):
            calib = x
            h = hashlib.sha1(np.ascontiguousarray(x.numpy()).tobytes()).hexdigest()[:12]
    elif calib is not None:
        h = hashlib.sha1(np.ascontiguousarray(calib.numpy()).tobytes()).hexdigest()[:12]
    key = (
        id(backbone),
        backbone.feature_key(),
        tuple(x.shape[1:]),
        path.precision,
        h if path.precision == "int8" else None,
    )
    sess = _ONNX_SESSIONS.get(key)
    if sess is not None:
        return sess
    # the session holds the model in memory: its files go once it is built (they piled up in /tmp before)
    with tempfile.TemporaryDirectory(prefix="fashionrec-onnx-") as tmp_dir:
        tmp = Path(tmp_dir)
        model_path = export_onnx(backbone, x, tmp / "model.onnx")
        if path.precision == "int8":
            if not _INT8_WARNED:
                _INT8_WARNED.append(1)
                log.warning(
                    "onnx-int8: features differ from fp32 (mean cosine about %s on H&M photos, see "
                    "docs/results/int8_calibration.md); never chosen automatically, use it only knowingly",
                    INT8_MEASURED_COSINE,
                )
            model_path = quantize_int8(model_path, tmp / "model.int8.onnx", calib[: INT8_RECIPE.calib_images].numpy())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    _ONNX_SESSIONS[key] = sess
    return sess


def cpu_supports_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 autocast is fast on CPU (elsewhere it is emulated and slower)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# ---------------------------------------------------------------------------------------------------------------
# The automatic choice: a short on-machine probe, cached in the workspace
# ---------------------------------------------------------------------------------------------------------------

PROBE_VERSION = 1
PROBE_FILE = "inference_probe.json"
PROBE_MIN_MEAN_COSINE = 0.99  # a candidate's features vs eager fp32 on the probe batch: mean cosine at least this
PROBE_MIN_COSINE = 0.95  # ... and no single image below this (bf16 on H&M photos: min 0.97, p5 0.99)
PROBE_MAX_BATCH = 32  # the probe times one batch of min(batch_size, 32) images at the real input size
PROBE_REPS = 3  # timed runs per candidate after one warm-up; the fastest run counts (robust to load)


@dataclass(frozen=True)
class ProbeResult:
    """One candidate's probe measurement: seconds for one batch (best of PROBE_REPS) and features cosine to eager."""

    seconds: float | None
    cos_mean: float | None = None
    cos_min: float | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.cos_mean is not None
            and self.cos_mean >= PROBE_MIN_MEAN_COSINE
            and self.cos_min >= PROBE_MIN_COSINE
        )


def auto_candidates() -> list[str]:
    """Paths the probe tries on this machine. Eager fp32 (the reference) and fp32 channels-last always; bf16
    channels-last where the CPU has native bf16 (elsewhere autocast emulates it, several times slower); ONNX
    Runtime fp32 where onnxruntime and onnx are installed. ONNX Runtime int8 is never a candidate: no quantisation
    recipe reached the feature-fidelity bar (docs/results/int8_calibration.md); it stays an explicit opt-in."""
    import importlib.util

    names = ["fp32", "fp32-cl"]
    if cpu_supports_bf16():
        names.append("bf16-cl")
    if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None:
        names.append("onnx-fp32")
    return names


def _machine_id() -> str:
    """CPU model + a hash of its feature flags (what makes one path faster than another here)."""
    model, flags = "unknown", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return f"{model}|flags:{hashlib.sha1(flags.encode()).hexdigest()[:12]}"


def probe_key(backbone: Backbone, pre: Preprocess, batch_size: int, candidates: Sequence[str]) -> dict:
    """Everything that can change which path is fastest or whether it passes: machine (CPU model + flags, threads),
    library versions, backbone weights, input size, batch size, the candidates and the thresholds."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "version": PROBE_VERSION,
        "machine": _machine_id(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "backbone": backbone.name,
        "weights": backbone.feature_key(),
        "input_size": int(pre.input_size),
        "batch_size": int(batch_size),
        "candidates": list(candidates),
        "min_mean_cosine": PROBE_MIN_MEAN_COSINE,
        "min_cosine": PROBE_MIN_COSINE,
        "int8_recipe": INT8_RECIPE.key() if "onnx-int8" in candidates else None,
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _measure(backbone: Backbone, x: torch.Tensor, path: InferencePath) -> tuple[float, np.ndarray]:
    """Best-of-PROBE_REPS seconds for one forward of batch `x` (after one warm-up that exports/compiles), + features."""
    import copy
    import time

    bb = copy.deepcopy(backbone) if (path.channels_last and path.engine == "torch") else backbone
    _prepare(bb, path)
    feats = _forward(bb, x, path).numpy()
    best = float("inf")
    for _ in range(PROBE_REPS):
        t = time.perf_counter()
        _forward(bb, x, path)
        best = min(best, time.perf_counter() - t)
    return best, feats


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def probe_paths(
    backbone: Backbone, x: torch.Tensor, candidates: Sequence[str], measure=_measure
) -> dict[str, ProbeResult]:
    """Time each candidate on batch `x` and compare its features with eager fp32 (measured first, the reference).
    `measure(backbone, x, path) -> (seconds, features)` is injectable so the choice can be tested deterministically."""
    names = ["fp32"] + [c for c in candidates if c != "fp32"]
    results: dict[str, ProbeResult] = {}
    ref = None
    for name in names:
        try:
            sec, feats = measure(backbone, x, InferencePath.parse(name))
        except Exception as e:  # a path that cannot run here (export failure, missing kernel) is reported, not chosen
            if name == "fp32":
                raise
            log.warning("inference probe: %s failed (%s: %s)", name, type(e).__name__, e)
            results[name] = ProbeResult(None, error=f"{type(e).__name__}: {e}")
            continue
        feats = np.asarray(feats, dtype=np.float32)
        if ref is None:
            ref = feats
        cos = _cosines(feats, ref)
        results[name] = ProbeResult(float(sec), float(cos.mean()), float(cos.min()))
    return results


def choose_path(results: dict[str, ProbeResult]) -> str:
    """The fastest candidate whose features pass the cosine check (eager fp32 always passes)."""
    ok = {k: r for k, r in results.items() if r.passed}
    if not ok:
        return "fp32"
    return min(ok, key=lambda k: ok[k].seconds)


def _describe(results: dict[str, ProbeResult]) -> str:
    parts = []
    for k, r in results.items():
        if r.error is not None:
            parts.append(f"{k} failed")
        else:
            parts.append(
                f"{k} {1000 * r.seconds:.0f} ms cos {r.cos_mean:.4f}/{r.cos_min:.4f}"
                + ("" if r.passed else " (fails cosine check)")
            )
    return ", ".join(parts)


def _read_probe_file(p: Path) -> dict:
    try:
        data = json.loads(p.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # a damaged probe cache is re-probed, never fatal
        log.warning("%s: unreadable inference probe cache (%s); probing again", p, e)
        return {}


def _probed_busy_now_idle(rec: dict) -> bool:
    """True when a cached probe ran while other jobs loaded every core (its timings measured the contention: e.g.
    onnx-fp32 looked 2x faster than bf16 under load, bf16 is faster when idle) and the machine is idle now."""
    then = rec.get("load_average")
    if not isinstance(then, (int, float)) or not hasattr(os, "getloadavg"):
        return False
    cores = os.cpu_count() or 1
    return then > cores and os.getloadavg()[0] < cores / 2


def resolve_path(
    path: InferencePath | str | None,
    backbone: Backbone,
    pre: Preprocess,
    batch_size: int,
    *,
    sample=None,
    workspace: str | Path | None = None,
    candidates: Sequence[str] | None = None,
    measure=_measure,
    reprobe: bool = False,
) -> InferencePath:
    """An explicit path is returned as is. `auto` (or None) is resolved by a probe: each candidate path runs one
    batch of min(batch_size, 32) real inputs at the real input size; the fastest whose features match eager fp32
    (mean cosine >= 0.99, min >= 0.95) wins. The choice and the measured times are cached in
    `<workspace>/inference_probe.json` under `probe_key` (machine, versions, weights, input size, batch size), so
    later runs reuse it without probing; change any of those and it is probed again.

    `sample()` returns the probe batch (a normalised (B, 3, S, S) tensor); it is only called when probing.
    `reprobe=True` ignores the cached choice and replaces it; a choice probed while every core was busy (the record
    keeps the load average) is probed again, once, when the machine is idle.
    """
    if isinstance(path, str):
        path = InferencePath.parse(path)
    if path is not None and not path.is_auto:
        return path
    candidates = list(candidates if candidates is not None else auto_candidates())
    key = probe_key(backbone, pre, batch_size, candidates)
    h = _key_hash(key)
    p = Path(workspace or default_workspace()) / PROBE_FILE
    rec = _read_probe_file(p).get(h)
    if isinstance(rec, dict) and _probed_busy_now_idle(rec):
        log.info(
            "inference path auto: the cached probe ran under load average %.1f, the machine is idle now: probing again",
            rec["load_average"],
        )
        reprobe = True
    if not reprobe and isinstance(rec, dict) and rec.get("key") == key and rec.get("chosen") in candidates + ["fp32"]:
        log.info(
            "inference path auto: %s (cached probe of %s in %s: %s)",
            rec["chosen"],
            rec.get("when", "?"),
            p,
            rec.get("summary", ""),
        )
        return InferencePath.parse(rec["chosen"])
    if sample is None:
        raise ValueError("resolve_path: no cached probe and no sample batch to probe with")
    x = sample()
    if x is None or len(x) == 0:
        log.info("inference path auto: fp32 (nothing to probe with)")
        return InferencePath()
    x = x[:PROBE_MAX_BATCH]
    import datetime

    results = probe_paths(backbone, x, candidates, measure=measure)
    chosen = choose_path(results)
    summary = _describe(results)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    log.info(
        "inference path auto: chose %s, the fastest whose features match eager fp32 (probe on %s, load "
        "average %s: %s); cached in %s",
        chosen,
        "x".join(map(str, x.shape)),
        f"{load:.1f}" if load is not None else "?",
        summary,
        p,
    )
    rec = {
        "key": key,
        "chosen": chosen,
        "summary": summary,
        "load_average": load,
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "results": {k: asdict(r) | {"passed": r.passed} for k, r in results.items()},
    }
    try:
        data = _read_probe_file(p)  # re-read: another process may have added its own machine's record
        data[h] = rec
        write_json(p, data)
    except OSError as e:
        log.warning("could not cache the inference probe in %s (%s); it will run again next time", p, e)
    return InferencePath.parse(chosen)


def fastest_path(
    backbone: Backbone | None = None,
    pre: Preprocess | None = None,
    batch_size: int = 64,
    *,
    sample=None,
    workspace: str | Path | None = None,
) -> InferencePath:
    """The automatic inference path. Without a backbone: `InferencePath.auto()`, which the embed functions resolve
    with the backbone, input size and batch size they actually use (probe or cached choice). With one: resolved
    now (see `resolve_path`). benchmarks/embed_speed.py prints every path's speed and cosine and the probe's pick."""
    if backbone is None:
        return InferencePath.auto()
    return resolve_path(
        InferencePath.auto(),
        backbone,
        pre or Preprocess.for_backbone(backbone),
        batch_size,
        sample=sample,
        workspace=workspace,
    )


def _forward(backbone: Backbone, x: torch.Tensor, path: InferencePath) -> torch.Tensor:
    if path.is_auto:
        raise ValueError("InferencePath.auto() must be resolved before the forward pass (features.resolve_path)")
    if path.engine == "onnx":
        sess = _onnx_session(backbone, x, path)
        return torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]).float()
    if path.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if path.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = backbone(x)
        else:
            out = backbone(x)
    return out.float()


def _prepare(backbone: Backbone, path: InferencePath) -> Backbone:
    backbone.eval()
    if path.channels_last and path.engine == "torch":
        backbone.to(memory_format=torch.channels_last)
    return backbone


def _model_key(backbone: Backbone, pre: Preprocess, path: InferencePath) -> str:
    raw = "|".join([backbone.name, backbone.feature_key(), pre.key(), path.numerics_key()])
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


FEATURE_DB = "features.sqlite"
_HASH_CHUNK = 1 << 20
_SQL_BATCH = 500  # ids per `IN (...)` query (SQLite allows 32,766 variables; smaller keeps statements cheap)


def content_hash(path: str | Path) -> str:
    """A photo's identity in the feature store: BLAKE2b-128 of its bytes (its path, name and time play no part)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FeatureStore:
    """Image features keyed by (model key, content hash of the photo), in one SQLite database (WAL mode): every
    folder's photos, under any path, for every model; several processes read and write it at once (each write is
    one transaction; readers never wait for writers). A `files` table remembers the hash of each path by size,
    modification time and inode, so unchanged photos are not read again.

    A damaged database is set aside (`features.sqlite.corrupt-<time>`, named in the log) and a new one started:
    features are derived data, recomputed when missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._broken = False
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS features (model TEXT NOT NULL, content TEXT NOT NULL, "
                "vector BLOB NOT NULL, PRIMARY KEY (model, content)) WITHOUT ROWID"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                "mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, content TEXT NOT NULL) WITHOUT ROWID"
            )
        except BaseException:
            con.close()
            raise
        return con

    def _run(self, fn, default):
        """fn(connection) in a transaction; a damaged database is set aside once and fn retried on a new one; any
        other failure (read-only workspace, disk full) logs and returns `default`: the caller computes instead."""
        if self._broken:
            return default
        for attempt in (0, 1):
            try:
                con = self._open()
                try:
                    con.execute("BEGIN")
                    out = fn(con)
                    con.execute("COMMIT")
                    return out
                finally:
                    con.close()
            except sqlite3.DatabaseError as e:
                damaged = "malformed" in str(e) or "not a database" in str(e) or "file is not" in str(e)
                if attempt == 0 and damaged:
                    self._set_aside(e)
                    continue
                log.warning("feature store %s unusable (%s); features are computed without it", self.path, e)
            except OSError as e:
                log.warning("feature store %s unusable (%s); features are computed without it", self.path, e)
            self._broken = True
            return default
        return default

    def _set_aside(self, why) -> None:
        with self._lock:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            for suffix in ("", "-wal", "-shm"):
                p = Path(f"{self.path}{suffix}")
                if p.exists():
                    try:
                        os.replace(p, f"{self.path}.corrupt-{stamp}{suffix}")
                    except OSError:
                        pass
            log.warning(
                "feature store %s is damaged (%s): set aside as %s.corrupt-%s", self.path, why, self.path, stamp
            )

    def hashes(self, paths: Sequence[str | Path]) -> list[str | None]:
        """The content hash of each file (None: missing or unreadable), read again only when its size,
        modification time or inode changed since it was last hashed."""
        stats: list[tuple | None] = []
        for p in paths:
            try:
                st = os.stat(p)
                stats.append((str(Path(p).absolute()), st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError:
                stats.append(None)
        keys = [s[0] for s in stats if s is not None]

        def lookup(con):
            memo = {}
            for b in range(0, len(keys), _SQL_BATCH):
                part = keys[b : b + _SQL_BATCH]
                q = f"SELECT path, size, mtime_ns, inode, content FROM files WHERE path IN ({','.join('?' * len(part))})"
                for row in con.execute(q, part):
                    memo[row[0]] = row
            return memo

        memo = self._run(lookup, {})
        out: list[str | None] = []
        fresh = []
        for s in stats:
            if s is None:
                out.append(None)
                continue
            m = memo.get(s[0])
            if m is not None and tuple(m[1:4]) == s[1:4]:
                out.append(m[4])
                continue
            try:
                h = content_hash(s[0])
            except OSError:
                out.append(None)
                continue
            out.append(h)
            fresh.append((*s, h))
        if fresh:
            self._run(
                lambda con: con.executemany(
                    "INSERT OR REPLACE INTO files (path, size, mtime_ns, inode, content) VALUES (?, ?, ?, ?, ?)", fresh
                ),
                None,
            )
        return out

    def get(self, model: str, contents: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """{content hash: vector} of the stored features of `model` among `contents` (vectors of another size,
        written by a damaged or foreign entry, are ignored)."""
        want = sorted(set(contents))

        def read(con):
            got = {}
            for b in range(0, len(want), _SQL_BATCH):
                part = want[b : b + _SQL_BATCH]
                q = f"SELECT content, vector FROM features WHERE model = ? AND content IN ({','.join('?' * len(part))})"
                for c, blob in con.execute(q, [model, *part]):
                    if isinstance(blob, bytes) and len(blob) == 4 * dim:
                        got[c] = np.frombuffer(blob, dtype=np.float32).copy()
            return got

        return self._run(read, {})

    def put(self, model: str, rows: Iterable[tuple[str, np.ndarray]]) -> None:
        data = [(model, c, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for c, v in rows if c]
        if data:
            self._run(
                lambda con: con.executemany(
                    "INSERT OR REPLACE INTO features (model, content, vector) VALUES (?, ?, ?)", data
                ),
                None,
            )

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self._run(lambda con: con.execute("SELECT COUNT(*) FROM features").fetchone()[0], 0)
        return self._run(
            lambda con: con.execute("SELECT COUNT(*) FROM features WHERE model = ?", (model,)).fetchone()[0], 0
        )


class FeatureCache:
    """Features under `<workspace>/features`: image files' features in the SQLite `FeatureStore` (keyed by model
    and photo content), in-memory arrays' features in one `.npz` per key. Writes are atomic."""

    def __init__(self, workspace: str | Path | None = None):
        self.root = Path(workspace or default_workspace()) / "features"
        self._store: FeatureStore | None = None

    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore(self.root / FEATURE_DB)
        return self._store

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # a damaged cache is recomputed, never fatal
            log.warning("%s: unreadable feature cache (%s); recomputing", p, e)
            return None

    def save(self, key: str, **arrays: np.ndarray) -> Path:
        if key.startswith("files-") and "fingerprints" in arrays:
            # image files' features (`file_fingerprint` strings: path|size|mtime): into the store, by content
            paths = [str(fp).rsplit("|", 2)[0] for fp in np.asarray(arrays["fingerprints"]).tolist()]
            store = self.store()
            store.put(key, zip(store.hashes(paths), np.asarray(arrays["features"], np.float32)))
            return store.path
        p = self.path(key)
        with atomic_path(p, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        return p


def embed_arrays(
    backbone: Backbone,
    images: np.ndarray,
    *,
    preprocess: Preprocess | None = None,
    path: InferencePath = InferencePath(),
    batch_size: int = 128,
    cache: FeatureCache | None = None,
    desc: str = "embed",
    progress: bool = True,
) -> np.ndarray:
    """Embed an in-memory uint8 image array (greyscale or RGB). Returns float32 (N, embed_dim).
    `path=InferencePath.auto()` probes (or reuses the cached probe) on the first batch; see `resolve_path`."""
    pre = preprocess or Preprocess.for_backbone(backbone)
    path = resolve_path(
        path,
        backbone,
        pre,
        batch_size,
        workspace=cache.root.parent if cache is not None else None,
        sample=lambda: pre.arrays_to_tensor(images[: min(batch_size, PROBE_MAX_BATCH)]),
    )
    key = None
    cal = _int8_calibration(backbone, path, lambda n: pre.arrays_to_tensor(images[:n]))
    if cache is not None:
        data_hash = hashlib.sha1(np.ascontiguousarray(images).view(np.uint8).data).hexdigest()[:16]
        key = f"arr-{_model_key(backbone, pre, path)}{cal}-{data_hash}"
        hit = cache.load(key)
        if hit is not None and hit["features"].shape[0] == len(images):
            return hit["features"]
    _prepare(backbone, path)
    out = np.empty((len(images), backbone.embed_dim), dtype=np.float32)
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        for s in range(0, len(images), batch_size):
            x = pre.arrays_to_tensor(images[s : s + batch_size])
            out[s : s + len(x)] = _forward(backbone, x, path).numpy()
            bar.update(len(x))
    if cache is not None:
        cache.save(key, features=out)
    return out


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], pre: Preprocess):
        self.paths, self.pre = list(paths), pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.pre.load(self.paths[i]), None
        except ImageDecodeError as e:
            return i, None, str(e)


def _collate(batch):
    return batch


def _import_legacy_file_features(cache: FeatureCache, key: str, paths, contents, feats, done) -> None:
    """Features of fashionrec 0.1's per-model `.npz` (rows keyed by path|size|mtime): rows whose file is unchanged
    fill `feats` and go into the store; the file is then renamed `.npz.imported` (kept, never read again)."""
    legacy = cache.load(key)
    if legacy is not None and "fingerprints" in legacy and legacy["features"].shape[1:] == feats.shape[1:]:
        lookup = {fp: r for r, fp in enumerate(legacy["fingerprints"].tolist())}
        rows = []
        for j in np.flatnonzero(~done):
            try:
                r = lookup.get(file_fingerprint(Path(paths[j])))
            except OSError:
                continue
            if r is not None and contents[j]:
                feats[j], done[j] = legacy["features"][r], True
                rows.append((contents[j], feats[j]))
        cache.store().put(key, rows)
        log.info("%s: %d features of an older fashionrec moved into the feature store", cache.path(key), len(rows))
    try:
        os.replace(cache.path(key), cache.path(key).with_suffix(".npz.imported"))
    except OSError:
        pass


def file_fingerprint(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


@dataclass
class EmbeddedImages:
    ids: list[str]  # ids whose image decoded, in input order
    features: np.ndarray  # (len(ids), dim) float32
    failures: dict[str, str]  # id -> reason, for images that were skipped


def embed_image_files(
    backbone: Backbone,
    items: dict[str, Path] | Iterable[Path],
    *,
    preprocess: Preprocess | None = None,
    path: InferencePath = InferencePath(),
    batch_size: int = 64,
    num_workers: int | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
    desc: str = "embed images",
) -> EmbeddedImages:
    """Embed image files (id -> path). Corrupt/empty/truncated files are reported in `failures` and skipped.
    `path=InferencePath.auto()` probes (or reuses the cached probe) on the first photos; see `resolve_path`."""
    if not isinstance(items, dict):
        items = {Path(p).stem: Path(p) for p in items}
    ids = list(items)
    pre = preprocess or Preprocess.for_backbone(backbone)

    def _sample(n: int):
        arrays = []
        for i in ids:
            if len(arrays) >= n:
                break
            try:
                arrays.append(pre.load(items[i]))
            except (ImageDecodeError, OSError):
                continue
        return pre.arrays_to_tensor(np.stack(arrays)) if arrays else None

    path = resolve_path(
        path,
        backbone,
        pre,
        batch_size,
        sample=lambda: _sample(min(batch_size, PROBE_MAX_BATCH)),
        workspace=cache.root.parent if cache is not None else None,
    )
    cal = _int8_calibration(backbone, path, _sample)
    feats = np.zeros((len(ids), backbone.embed_dim), dtype=np.float32)
    done = np.zeros(len(ids), dtype=bool)
    failures: dict[str, str] = {}
    key = f"files-{_model_key(backbone, pre, path)}{cal}"
    store = cache.store() if cache is not None else None
    contents: list[str | None] = [None] * len(ids)
    if store is not None:  # photos seen before, under any path or name, by their bytes
        contents = store.hashes([items[i] for i in ids])
        hit = store.get(key, [c for c in contents if c], backbone.embed_dim)
        for j, c in enumerate(contents):
            if c in hit:
                feats[j], done[j] = hit[c], True
        if not done.all() and cache.path(key).exists():
            _import_legacy_file_features(cache, key, [items[i] for i in ids], contents, feats, done)
    todo = np.flatnonzero(~done)
    if len(todo):
        _prepare(backbone, path)
        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        ds = _ImageFiles([items[ids[j]] for j in todo], pre)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate, persistent_workers=False
        )
        with tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
            for batch in loader:
                good = [(i, a) for i, a, err in batch if err is None]
                for i, _, err in batch:
                    if err is not None:
                        failures[ids[todo[i]]] = err
                        log.warning("skipping %s", err)
                if good:
                    x = pre.arrays_to_tensor(np.stack([a for _, a in good]))
                    f = _forward(backbone, x, path).numpy()
                    for (i, _), row in zip(good, f):
                        feats[todo[i]], done[todo[i]] = row, True
                    if store is not None:  # stored per batch: an interrupted run keeps what it computed
                        store.put(key, [(contents[todo[i]], row) for (i, _), row in zip(good, f)])
                bar.update(len(batch))
    ok = np.flatnonzero(done)
    return EmbeddedImages([ids[j] for j in ok], feats[ok], failures)


def embed_pil(
    backbone: Backbone,
    images: list[Image.Image],
    preprocess: Preprocess | None = None,
    path: InferencePath = InferencePath(),
    device=None,
) -> np.ndarray:
    """Embed a few in-memory images (an upload, a new arrival); `device` (a torch.device or name; None: where the
    backbone is) runs the eager torch forward pass there (the backbone is moved to it)."""
    pre = preprocess or Preprocess.for_backbone(backbone)
    x = pre.arrays_to_tensor(np.stack([pre.pil_to_array(im) for im in images]))
    path = resolve_path(path, backbone, pre, len(x), sample=lambda: x)
    _int8_calibration(backbone, path, lambda n: x[:n])
    if device is not None and path.engine == "torch":
        backbone.to(device)
        x = x.to(device)
    return _forward(_prepare(backbone, path), x, path).cpu().numpy()


def embed_bytes(
    backbone: Backbone, data: bytes, preprocess: Preprocess | None = None, source: str = "upload"
) -> np.ndarray:
    return embed_pil(backbone, [decode_image(data, source=source)], preprocess)[0]


def decode_images_to_array(
    items: dict[str, Path],
    preprocess: Preprocess,
    *,
    num_workers: int | None = None,
    progress: bool = True,
    desc: str = "decode images",
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Decode image files in parallel workers into one uint8 (N, S, S, 3) array (for training on photos).

    Returns (ids that decoded, array, failures id -> reason); bad files are reported and skipped.
    """
    ids = list(items)
    ds = _ImageFiles([items[i] for i in ids], preprocess)
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers, collate_fn=_collate)
    arrays: dict[int, np.ndarray] = {}
    failures: dict[str, str] = {}
    with tqdm(total=len(ids), desc=desc, unit="img", disable=not progress) as bar:
        for batch in loader:
            for i, a, err in batch:
                if err is None:
                    arrays[i] = a
                else:
                    failures[ids[i]] = err
                    log.warning("skipping %s", err)
            bar.update(len(batch))
    order = sorted(arrays)
    s = preprocess.input_size
    arr = np.stack([arrays[i] for i in order]) if order else np.zeros((0, s, s, 3), dtype=np.uint8)
    return [ids[i] for i in order], arr, failures


def auto_input_size(paths: Sequence[Path], native: int, sample: int = 64, seed: int = 0) -> int:
    """An input size that fits the photos and the backbone: its native size (e.g. 224, what it was trained at),
    or the photos' own padded-square side when they are smaller (no upsampling of small studio shots), rounded
    to a multiple of 32, at least 64. Reads image headers only (a sample of `sample` files)."""
    paths = list(paths)
    if not paths:
        return int(native)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), min(sample, len(paths)), replace=False)
    sides = []
    for j in pick:
        try:
            with Image.open(paths[j]) as im:
                sides.append(max(im.size))
        except Exception:  # unreadable files are reported where they are decoded
            continue
    if not sides:
        return int(native)
    side = float(np.median(sides))
    return int(max(64, min(int(native), 32 * int(round(side / 32)))))
