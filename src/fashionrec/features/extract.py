"""Embedding in-memory images: uint8 arrays (`embed_arrays`, cached by the array's bytes), PIL images and uploaded
bytes (`embed_pil`, `embed_bytes`)."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from fashionrec.backbones.base import Backbone
from fashionrec.data.images import decode_image
from fashionrec.features.forward import model_key, prepare_for_path, run_backbone, to_device
from fashionrec.features.paths import InferencePath
from fashionrec.features.preprocess import Preprocess
from fashionrec.features.probe import PROBE_MAX_BATCH, resolve_path
from fashionrec.features.quantize import int8_calibration
from fashionrec.features.store import FeatureCache


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
    device=None,
) -> np.ndarray:
    """Embed an in-memory uint8 image array (greyscale or RGB). Returns float32 (N, embed_dim).
    `path=InferencePath.auto()` probes (or reuses the cached probe) on the first batch; see `resolve_path`.
    `device`: where the backbone runs (None: the CPU; 'auto', 'cuda', a torch.device: `forward.to_device`)."""
    pre = preprocess or Preprocess.for_backbone(backbone)
    dev = to_device(device)
    path = resolve_path(
        path,
        backbone,
        pre,
        batch_size,
        workspace=cache.root.parent if cache is not None else None,
        sample=lambda: pre.arrays_to_tensor(images[: min(batch_size, PROBE_MAX_BATCH)]),
        device=dev,
    )
    key = None
    cal = int8_calibration(backbone, path, lambda n: pre.arrays_to_tensor(images[:n]))
    if cache is not None:
        data_hash = hashlib.sha1(np.ascontiguousarray(images).view(np.uint8).data).hexdigest()[:16]
        key = f"arr-{model_key(backbone, pre, path, dev)}{cal}-{data_hash}"
        hit = cache.load(key)
        if hit is not None and hit["features"].shape[0] == len(images):
            return hit["features"]
    prepare_for_path(backbone, path, dev)
    out = np.empty((len(images), backbone.embed_dim), dtype=np.float32)
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        for s in range(0, len(images), batch_size):
            x = pre.arrays_to_tensor(images[s : s + batch_size])
            out[s : s + len(x)] = run_backbone(backbone, x, path, dev).numpy()
            bar.update(len(x))
    if cache is not None:
        cache.save(key, features=out)
    return out


def embed_pil(
    backbone: Backbone,
    images: list[Image.Image],
    preprocess: Preprocess | None = None,
    path: InferencePath = InferencePath(),
    device=None,
) -> np.ndarray:
    """Embed a few in-memory images (an upload, a new arrival)."""
    pre = preprocess or Preprocess.for_backbone(backbone)
    dev = to_device(device)
    x = pre.arrays_to_tensor(np.stack([pre.pil_to_array(im) for im in images]))
    path = resolve_path(path, backbone, pre, len(x), sample=lambda: x, device=dev)
    int8_calibration(backbone, path, lambda n: x[:n])
    return run_backbone(prepare_for_path(backbone, path, dev), x, path, dev).numpy()


def embed_bytes(
    backbone: Backbone, data: bytes, preprocess: Preprocess | None = None, source: str = "upload", device=None
) -> np.ndarray:
    return embed_pil(backbone, [decode_image(data, source=source)], preprocess, device=device)[0]
