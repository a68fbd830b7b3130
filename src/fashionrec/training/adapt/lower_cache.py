"""The frozen lower part (stem + blocks[:k]) of every photo in each view, computed once and cached in the workspace
(float16): training and evaluation then run only the upper part."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fashionrec.backbones.base import Backbone
from fashionrec.errors import FashionrecError
from fashionrec.features import Preprocess
from fashionrec.training.adapt.runner import _runner, model_device

log = logging.getLogger(__name__)


def _fingerprints(paths: list[Path]) -> str:
    from fashionrec.features import file_fingerprint

    h = hashlib.sha1()
    for p in paths:
        h.update(file_fingerprint(p).encode())
    return h.hexdigest()[:16]


def view_names(flips: bool, gray: bool) -> tuple[str, ...]:
    """The cached views of each photo, in `Backbone.views`' order: photo, [grey], then [their mirror images]."""
    base = ("photo", "gray") if gray else ("photo",)
    return base + tuple(f"{v}_flip" for v in base) if flips else base


def lower_maps(
    trunk: Backbone,
    paths: list[Path],
    pre: Preprocess,
    k: int,
    workspace: Path,
    *,
    views: tuple[str, ...] = ("photo", "photo_flip"),
    batch_size: int = 64,
    progress: Callable[[str, int, int, dict], None] | bool | None = None,
    onnx: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The frozen lower part's output for every photo in each view (`view_names`: the photo, its greyscale version,
    and their mirror images), float16, cached in the workspace. `onnx`: run it through ONNX Runtime where it
    matches torch (`features.onnx_function`; 3.1x faster on 2 cores), the time going to training steps.

    `progress(stage, done, total, info)` (`AdaptCallbacks.progress`) hears of every batch, as stage "cache".
    Returns ({view: maps}, ok mask); undecodable photos are reported and left out (ok False)."""
    from fashionrec.features.files import ImageFileDataset, collate_images

    report = progress if callable(progress) else None
    trunk.to(memory_format=torch.channels_last)  # NHWC: measured 1.7x faster CNN inference on these CPUs
    run = _runner(onnx, trunk, lambda x: trunk.forward_lower(x, k), (3, pre.input_size, pre.input_size))
    key = hashlib.sha1(
        "|".join(
            [trunk.name, trunk.feature_key(), pre.key(), str(k), ",".join(views), _fingerprints(paths)]
            + (["ort"] if run.engine == "onnx" else [])
            + ([model_device(trunk).type] if model_device(trunk).type != "cpu" else [])  # CUDA: mixed precision
        ).encode()
    ).hexdigest()[:16]
    cache = workspace / "adapt" / f"lower-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                return {v: z[v] for v in views}, z["ok"]
        except Exception as e:  # a damaged cache is recomputed
            log.warning("%s: unreadable (%s); recomputing", cache, e)
    ds = ImageFileDataset(paths, pre)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=0 if len(paths) < 256 else min(2, os.cpu_count() or 1),
        collate_fn=collate_images,
    )
    out: dict[str, np.ndarray] = {}
    ok = np.zeros(len(paths), dtype=bool)
    t0, done = time.time(), 0
    with torch.inference_mode():
        for batch in loader:
            good = [(i, a) for i, a, err in batch if err is None]
            for _, _, err in batch:
                if err is not None:
                    log.warning("skipping %s", err)
            if good:
                x = pre.arrays_to_tensor(np.stack([a for _, a in good]))
                rows = [i for i, _ in good]
                for v in views:
                    xv = trunk.to_gray(x) if v.startswith("gray") else x
                    xv = xv.flip(-1) if v.endswith("_flip") else xv
                    h = run(xv.numpy())[0].astype(np.float16)
                    if v not in out:
                        out[v] = np.zeros((len(paths),) + h.shape[1:], dtype=np.float16)
                    out[v][rows] = h
                ok[rows] = True
            done += len(batch)
            if report is not None:
                report("cache", done, len(paths), {"views": len(views), "seconds": time.time() - t0})
    if not out:
        raise FashionrecError("no photo could be decoded")
    cache.parent.mkdir(parents=True, exist_ok=True)
    from fashionrec.io import atomic_path

    with atomic_path(cache, suffix=".tmp.npz") as tmp:
        np.savez(tmp, ok=ok, **out)
    return out, ok


@torch.no_grad()
def trunk_prelogits(
    trunk: Backbone, maps: list[np.ndarray], k: int, batch_size: int = 256, onnx: bool = True
) -> list[np.ndarray]:
    """ImageNet pre-logits of each array of cached lower maps (one export for all of them)."""
    run = _runner(onnx, trunk, lambda h: trunk.forward_upper(h, k), maps[0].shape[1:])
    return [np.concatenate([run(m[s : s + batch_size])[0] for s in range(0, len(m), batch_size)]) for m in maps]
