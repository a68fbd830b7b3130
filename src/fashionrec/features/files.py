"""Embedding image files: decoded in parallel loader workers, each photo's features kept in the feature store by
its content (`embed_image_files`), and decoding photos to one array for training (`decode_images_to_array`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from fashionrec.backbones.base import Backbone
from fashionrec.data.images import ImageDecodeError
from fashionrec.features.forward import model_key, prepare_for_path, run_backbone, to_device
from fashionrec.features.paths import InferencePath
from fashionrec.features.preprocess import Preprocess
from fashionrec.features.probe import PROBE_MAX_BATCH, resolve_path
from fashionrec.features.quantize import int8_calibration
from fashionrec.features.store import FeatureCache

log = logging.getLogger(__name__)


class ImageFileDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], pre: Preprocess):
        self.paths, self.pre = list(paths), pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.pre.load(self.paths[i]), None
        except ImageDecodeError as e:
            return i, None, str(e)


def collate_images(batch):
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
    device=None,
) -> EmbeddedImages:
    """Embed image files (id -> path). Corrupt/empty/truncated files are reported in `failures` and skipped.
    `path=InferencePath.auto()` probes (or reuses the cached probe) on the first photos; see `resolve_path`.
    `device`: where the backbone runs (None: the CPU; 'auto', 'cuda', a torch.device: `forward.to_device`)."""
    if not isinstance(items, dict):
        items = {Path(p).stem: Path(p) for p in items}
    ids = list(items)
    pre = preprocess or Preprocess.for_backbone(backbone)
    dev = to_device(device)

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
        device=dev,
    )
    cal = int8_calibration(backbone, path, _sample)
    feats = np.zeros((len(ids), backbone.embed_dim), dtype=np.float32)
    done = np.zeros(len(ids), dtype=bool)
    key = f"files-{model_key(backbone, pre, path, dev)}{cal}"
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
    failures: dict[str, str] = {}
    if len(todo):
        prepare_for_path(backbone, path, dev)

        def keep(rows: np.ndarray, f: np.ndarray) -> None:
            feats[todo[rows]], done[todo[rows]] = f, True
            if store is not None:  # stored per batch: an interrupted run keeps what it computed
                store.put(key, [(contents[todo[i]], row) for i, row in zip(rows, f)])

        bad = _embed_batches(
            backbone, [items[ids[j]] for j in todo], pre, path, dev, keep, batch_size, num_workers, (desc, progress)
        )
        failures = {ids[todo[i]]: err for i, err in bad.items()}
    ok = np.flatnonzero(done)
    return EmbeddedImages([ids[j] for j in ok], feats[ok], failures)


def _embed_batches(backbone, paths, pre, path, device, keep, batch_size, num_workers, label) -> dict[int, str]:
    """Decode `paths` in loader workers and embed them batch by batch: keep(rows, features) for the photos that
    decoded (rows index `paths`); returns {row: reason} for those that did not."""
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(paths, pre),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
        persistent_workers=False,
    )
    failures: dict[int, str] = {}
    desc, progress = label
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        for batch in loader:
            good = [(i, a) for i, a, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    failures[i] = err
                    log.warning("skipping %s", err)
            if good:
                x = pre.arrays_to_tensor(np.stack([a for _, a in good]))
                keep(np.array([i for i, _ in good]), run_backbone(backbone, x, path, device).numpy())
            bar.update(len(batch))
    return failures


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
    ds = ImageFileDataset([items[i] for i in ids], preprocess)
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers, collate_fn=collate_images)
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
