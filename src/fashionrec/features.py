"""Batched feature extraction with progress, parallel decoding, and an on-disk cache.

The cache key is backbone (name + weights) + preprocessing + inference path + input data:
- arrays (Fashion-MNIST): a hash of the array bytes;
- image files: per file `path, size, mtime`; rows whose file is unchanged are reused, changed or new files are
  recomputed, so adding ten images to a catalog of 100,000 embeds ten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from fashionrec.backbones.base import Backbone
from fashionrec.data.images import ImageDecodeError, decode_image, load_image
from fashionrec.io import atomic_path, default_workspace

log = logging.getLogger(__name__)


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
    def for_backbone(cls, backbone: Backbone, **overrides) -> "Preprocess":
        cfg = backbone.data_config
        kw = {"input_size": cfg.input_size, "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 3, H, W) in [0, 1] -> resized, normalised model input."""
        if self.invert:
            x = 1.0 - x
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
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
    quantisation calibrated on the first batch; fast where the CPU has AVX512-VNNI)."""

    precision: str = "fp32"  # fp32 | bf16 | int8
    channels_last: bool = False
    engine: str = "torch"    # torch | onnx

    def __post_init__(self):
        if self.engine not in {"torch", "onnx"} or self.precision not in {"fp32", "bf16", "int8"}:
            raise ValueError(f"bad inference path {self}")
        if (self.engine == "torch") == (self.precision == "int8"):
            if self.precision == "int8":
                raise ValueError("int8 runs through ONNX Runtime: InferencePath('int8', engine='onnx')")
        if self.engine == "onnx" and self.precision == "bf16":
            raise ValueError("ONNX paths are fp32 or int8")

    def key(self) -> str:
        return f"{self.engine}-{self.precision}-{'cl' if self.channels_last else 'nchw'}"

    @classmethod
    def parse(cls, name: str) -> "InferencePath":
        """'fp32', 'fp32-cl', 'bf16-cl', 'onnx-fp32', 'onnx-int8'."""
        table = {"fp32": cls(), "fp32-cl": cls("fp32", True), "bf16": cls("bf16"), "bf16-cl": cls("bf16", True),
                 "onnx-fp32": cls("fp32", engine="onnx"), "onnx-int8": cls("int8", engine="onnx")}
        if name not in table:
            raise ValueError(f"unknown inference path '{name}'; choose from {sorted(table)}")
        return table[name]


_ONNX_SESSIONS: dict = {}


def _onnx_session(backbone: Backbone, x: torch.Tensor, path: InferencePath):
    """Export once per (model, input size, precision); int8 is calibrated on the first batch it sees."""
    import tempfile

    import onnxruntime as ort

    key = (id(backbone), backbone.feature_key(), tuple(x.shape[1:]), path.precision)
    sess = _ONNX_SESSIONS.get(key)
    if sess is not None:
        return sess
    tmp = Path(tempfile.mkdtemp(prefix="fashionrec-onnx-"))
    fp32 = tmp / "model.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(backbone.eval(), x[:2], str(fp32), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    model_path = fp32
    if path.precision == "int8":
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class _Reader(CalibrationDataReader):
            def __init__(self, batch):
                self.items = iter([{"x": batch[i : i + 16].numpy()} for i in range(0, len(batch), 16)])

            def get_next(self):
                return next(self.items, None)

        pre = tmp / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        model_path = tmp / "model.int8.onnx"
        quantize_static(str(pre), str(model_path), _Reader(x), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
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


def fastest_path() -> InferencePath:
    """The inference path chosen automatically for this machine (benchmarks/embed_speed.py measures the options).

    ONNX Runtime fp32 where it is installed: same features (cosine 1.0000), several times eager PyTorch on these
    CPUs (EfficientNet's depthwise convolutions are much faster there). Else bf16 autocast where the CPU has native
    bf16 (AMX / AVX512-BF16), else fp32 channels-last. int8 is not chosen automatically: its features drift
    (mean cosine ~0.8 to fp32) even where probe accuracy holds.
    """
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None:
        return InferencePath("fp32", engine="onnx")
    return InferencePath("bf16", channels_last=True) if cpu_supports_bf16() else InferencePath("fp32", channels_last=True)


def _forward(backbone: Backbone, x: torch.Tensor, path: InferencePath) -> torch.Tensor:
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
    raw = "|".join([backbone.name, backbone.feature_key(), pre.key(), path.key()])
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


class FeatureCache:
    """Feature files under `<workspace>/features`. Writes are atomic."""

    def __init__(self, workspace: str | Path | None = None):
        self.root = Path(workspace or default_workspace()) / "features"

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
        p = self.path(key)
        with atomic_path(p, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        return p


def embed_arrays(backbone: Backbone, images: np.ndarray, *, preprocess: Preprocess | None = None,
                 path: InferencePath = InferencePath(), batch_size: int = 128, cache: FeatureCache | None = None,
                 desc: str = "embed", progress: bool = True) -> np.ndarray:
    """Embed an in-memory uint8 image array (greyscale or RGB). Returns float32 (N, embed_dim)."""
    pre = preprocess or Preprocess.for_backbone(backbone)
    key = None
    if cache is not None:
        data_hash = hashlib.sha1(np.ascontiguousarray(images).view(np.uint8).data).hexdigest()[:16]
        key = f"arr-{_model_key(backbone, pre, path)}-{data_hash}"
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
            return i, self.pre.pil_to_array(load_image(self.paths[i])), None
        except ImageDecodeError as e:
            return i, None, str(e)


def _collate(batch):
    return batch


def file_fingerprint(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


@dataclass
class EmbeddedImages:
    ids: list[str]               # ids whose image decoded, in input order
    features: np.ndarray         # (len(ids), dim) float32
    failures: dict[str, str]     # id -> reason, for images that were skipped


def embed_image_files(backbone: Backbone, items: dict[str, Path] | Iterable[Path], *, preprocess: Preprocess | None = None,
                      path: InferencePath = InferencePath(), batch_size: int = 64, num_workers: int | None = None,
                      cache: FeatureCache | None = None, progress: bool = True, desc: str = "embed images") -> EmbeddedImages:
    """Embed image files (id -> path). Corrupt/empty/truncated files are reported in `failures` and skipped."""
    if not isinstance(items, dict):
        items = {Path(p).stem: Path(p) for p in items}
    ids = list(items)
    pre = preprocess or Preprocess.for_backbone(backbone)
    fps = []
    for i in ids:
        try:
            fps.append(file_fingerprint(items[i]))
        except OSError:
            fps.append(f"{items[i]}|missing")
    feats = np.zeros((len(ids), backbone.embed_dim), dtype=np.float32)
    done = np.zeros(len(ids), dtype=bool)
    failures: dict[str, str] = {}
    key = f"files-{_model_key(backbone, pre, path)}"
    if cache is not None:
        hit = cache.load(key)
        if hit is not None and hit["features"].shape[1:] == (backbone.embed_dim,):
            lookup = {fp: r for r, fp in enumerate(hit["fingerprints"].tolist())}
            for j, fp in enumerate(fps):
                r = lookup.get(fp)
                if r is not None:
                    feats[j], done[j] = hit["features"][r], True
    todo = np.flatnonzero(~done)
    if len(todo):
        _prepare(backbone, path)
        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        ds = _ImageFiles([items[ids[j]] for j in todo], pre)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                             persistent_workers=False)
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
                bar.update(len(batch))
        if cache is not None:
            ok = np.flatnonzero(done)
            cache.save(key, fingerprints=np.array([fps[j] for j in ok]), features=feats[ok])
    ok = np.flatnonzero(done)
    return EmbeddedImages([ids[j] for j in ok], feats[ok], failures)


def embed_pil(backbone: Backbone, images: list[Image.Image], preprocess: Preprocess | None = None,
              path: InferencePath = InferencePath()) -> np.ndarray:
    """Embed a few in-memory images (an upload, a new arrival)."""
    pre = preprocess or Preprocess.for_backbone(backbone)
    x = pre.arrays_to_tensor(np.stack([pre.pil_to_array(im) for im in images]))
    return _forward(_prepare(backbone, path), x, path).numpy()


def embed_bytes(backbone: Backbone, data: bytes, preprocess: Preprocess | None = None, source: str = "upload") -> np.ndarray:
    return embed_pil(backbone, [decode_image(data, source=source)], preprocess)[0]


def decode_images_to_array(items: dict[str, Path], preprocess: Preprocess, *, num_workers: int | None = None,
                           progress: bool = True, desc: str = "decode images") -> tuple[list[str], np.ndarray, dict[str, str]]:
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
