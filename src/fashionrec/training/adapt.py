"""Fashion-adapted backbones: fine-tune on a catalog's own labels plus a same-product metric loss.

One backbone, several classification heads (product type, group, colour, ...; missing labels masked) and a
supervised-contrastive objective (pytorch-metric-learning's `SupConLoss`) in which photos of the same product
(`product_code`, the first 7 digits of an H&M `article_id`) are positives. Products, never photos, are split
into training and held-out parts.

CPU budget: the backbone is split at block `k`. The lower part (stem + blocks[:k]) stays ImageNet and is
computed once per photo in four views (the photo, its greyscale version and their mirror images) and cached in
the workspace; only blocks[k:], the final conv, the embedding layer and the heads train, each photo in a random
view (colour heads skip the grey ones). Training is time-boxed (`max_minutes`): the learning rate follows the wall
clock (warm-up, cosine decay), so a busy machine trains fewer steps rather than overrunning. At the end the heads
are refit by logistic regression on the pooled outputs of blocks k-1..n-2 plus the pre-logits (`refit_heads`), the
colour heads also on a colour descriptor of the garment, times a LightGBM model of that descriptor alone
(`training/colour.py`), and the folder embeds every photo as the average of its four views (`embedding_tta`
"flip+gray"): grey views make another colour of the same product the nearest neighbour more often.

The result is a model folder:
- `weights.safetensors`: every tensor (no pickle: loading runs no code);
- `fashionrec_model.json`: format version, base backbone, input size and preprocessing, embedding size,
  heads and their class lists, the held-out products, training settings;
- `colour_booster.<head index>.txt`: the colour heads' LightGBM models (LightGBM's text format; SHA-256 in the JSON);
- `metrics.json`: held-out tagging accuracy / macro-F1 and same-product retrieval, ImageNet vs adapted.

`create_backbone(folder)` gives its embedding backbone (L2-normalised, used by embed/similar/recommenders);
`load_adapted(folder)` gives the backbone plus the heads (tagging, predict).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashionrec.artifacts.keys import file_sha256
from fashionrec.artifacts.registry import REGISTRY, register_adapted
from fashionrec.backbones.adapted import AdaptedBackbone  # the folder's backbone part lives in backbones/
from fashionrec.backbones.base import Backbone
from fashionrec.config import ADAPT_MAX_INPUT_SIZE, ADAPTED_MODEL_JSON, CATALOG_TAG_COLUMNS, DEFAULT_BACKBONE
from fashionrec.data.products import pool_by_product, product_groups, product_level_columns, split_products
from fashionrec.errors import FashionrecError
from fashionrec.evaluation.calibration import (
    THRESHOLDS,
    apply_temperature,
    calibration_report,
    crossfit_temperature,
    fit_temperature,
)
from fashionrec.features import Preprocess
from fashionrec.training.colour import (
    COLOUR_FEATURES_DIM,
    colour_features,
    colour_features_of_files,
    combine_with_booster,
    fit_colour_booster,
)

log = logging.getLogger(__name__)

FORMAT = "fashionrec-adapted-model"
FORMAT_VERSION = 1
CONFIG_FILE = ADAPTED_MODEL_JSON
WEIGHTS_FILE = "weights.safetensors"
DEFAULT_LABEL_COLUMNS = CATALOG_TAG_COLUMNS
ONNX_MIN_IMAGES = 512  # `predict_arrays` exports the network to ONNX Runtime from this many photos on


# ---------------------------------------------------------------- the model
class AdaptedModel(nn.Module):
    """Backbone + one linear head per attribute.

    The heads read the pre-logits (so colour survives the metric loss), and with `head_taps` also the pooled outputs
    of those blocks: `adapt` refits the heads on them after training (`refit_heads`), which measured +3 points on
    held-out colour groups."""

    def __init__(
        self,
        backbone: AdaptedBackbone,
        heads: dict[str, list[str]],
        dropout: float = 0.2,
        head_taps: tuple[int, ...] = (),
        colour_heads: tuple[str, ...] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self.head_names = list(heads)
        self.classes = {k: list(v) for k, v in heads.items()}
        self.head_taps = tuple(int(t) for t in head_taps)
        self.colour_heads = tuple(n for n in colour_heads if n in self.classes)
        d = backbone.prelogits_dim + backbone.tap_dims(self.head_taps)
        self.heads = nn.ModuleList(
            [nn.Linear(d + (COLOUR_FEATURES_DIM if n in self.colour_heads else 0), len(c)) for n, c in heads.items()]
        )
        self.dropout = nn.Dropout(dropout)
        self.config: dict = {}
        # {colour head: LightGBM booster on `colour_features` alone}; its probabilities multiply the head's
        # (`with_colour_boosters`); fitted by `adapt` after the refit, saved beside the weights as text
        self.colour_boosters: dict = {}
        # {head: T}: the temperature that calibrates the head's final probabilities (`calibrated`), fitted by `adapt`
        # on the held-out products; `temperatures_no_booster`: a boosted colour head's, for its probabilities
        # without the booster (`tag --no-colour-booster`)
        self.temperatures: dict[str, float] = {}
        self.temperatures_no_booster: dict[str, float] = {}

    def calibrated(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`probs` ({head: proba}, after the boosters) with each head's temperature applied
        (`evaluation.calibration`): confidences that match accuracy; the highest class is unchanged."""
        return {n: apply_temperature(p, self.temperatures.get(n, 1.0)) for n, p in probs.items()}

    def without_colour_boosters(self) -> AdaptedModel:
        """A shallow copy whose colour heads go without their boosters (and take the temperatures fitted for
        that); this model, which may be cached, keeps them."""
        m = copy.copy(self)
        m.colour_boosters = {}
        m.temperatures = {**self.temperatures, **self.temperatures_no_booster}
        for n in self.colour_boosters:
            if n not in self.temperatures_no_booster:
                m.temperatures.pop(n, None)
        return m

    def with_colour_boosters(self, probs: dict[str, np.ndarray], colour: np.ndarray | None) -> dict[str, np.ndarray]:
        """`probs` ({head: proba}) with each boosted colour head's probabilities combined with its booster's, read
        from `colour` (`colour_features` of the same photos)."""
        if not self.colour_boosters:
            return probs
        if colour is None:
            raise ValueError(f"heads {list(self.colour_boosters)} read colour features: pass colour=")
        out = dict(probs)
        for n, booster in self.colour_boosters.items():
            out[n] = combine_with_booster(probs[n], booster, colour)
        return out

    def head_inputs(self, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, what the heads read: pooled taps + pre-logits)."""
        z, e, pooled = self.backbone.upper_outputs(h, k, self.head_taps)
        return e, torch.cat(pooled + [z], 1) if pooled else z

    def head_logits(self, x: torch.Tensor, colour: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every head's logits from its inputs `x`; the `colour_heads` also read `colour` (`colour_features` of the
        same photos, one row per row of `x`)."""
        if self.colour_heads and colour is None:
            raise ValueError(f"heads {list(self.colour_heads)} read colour features: pass colour=")
        return [
            head(torch.cat([x, colour], 1) if n in self.colour_heads else x)
            for n, head in zip(self.head_names, self.heads)
        ]

    def upper(self, h: torch.Tensor, k: int, colour: torch.Tensor | None = None):
        e, x = self.head_inputs(h, k)
        return e, self.head_logits(self.dropout(x), colour)

    @property
    def preprocess(self) -> Preprocess:
        p = self.config.get("preprocess") or {}
        cfg = self.backbone.data_config
        return Preprocess(
            cfg.input_size,
            tuple(cfg.mean),
            tuple(cfg.std),
            invert=bool(p.get("invert", False)),
            pad_square=bool(p.get("pad_square", True)),
        )

    @torch.no_grad()
    def predict_arrays(
        self,
        images: np.ndarray,
        batch_size: int = 128,
        embed: bool = True,
        progress: bool = False,
        onnx: bool | None = None,
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """uint8 images already padded/resized by `self.preprocess.pil_to_array` -> (embeddings, {head: proba}).
        The embedding averages the backbone's test-time views (adapted folders: the photo and its mirror image, and
        their greyscale versions with "flip+gray"), as `embed` computes it; the heads average the colour views.
        `embed=False` (tagging): heads only, so the grey views are not computed (half the work); embeddings None.
        `progress`: a progress bar (photos, rate, ETA). `onnx`: the network runs through ONNX Runtime where it
        matches torch (`features.onnx_function`; the heads stay in torch); None (default): from ONNX_MIN_IMAGES
        photos on, where the export's few seconds pay (tagging 12,728 H&M photos: `benchmarks/onnx_speed.py`)."""
        from tqdm.auto import tqdm

        self.eval()
        pre = self.preprocess
        bb = self.backbone
        if onnx is None:
            onnx = len(images) >= ONNX_MIN_IMAGES
        n = pre.input_size
        run = _runner(onnx, self, lambda t: self.head_inputs(bb.forward_lower(t, 0), 0), (3, n, n))
        embs, probs, descs = [], {n: [] for n in self.head_names}, []
        bar = tqdm(total=len(images), desc="tag" if not embed else "embed + tag", unit="img", disable=not progress)
        for s in range(0, len(images), batch_size):
            x = pre.arrays_to_tensor(images[s : s + batch_size])
            bar.update(len(x))
            b = len(x)
            xv = bb.views(x, gray=None if embed else False)
            col = None
            if self.colour_heads or self.colour_boosters:  # a mirror image has the same colour features
                descs.append(colour_features(images[s : s + batch_size]))
                col = torch.from_numpy(descs[-1]).repeat(len(xv) // b, 1)  # (grey views' outputs are unused)
            e, hx = (torch.from_numpy(a) for a in run(xv.numpy()))  # eval mode: no dropout before the heads
            logits = self.head_logits(hx, col)
            parts = e.split(b)
            if embed:
                embs.append((bb.average_views(*parts) if len(parts) > 1 else e).numpy())
            colour = colour_views(len(parts), bb.gray_tta and embed)
            for n, lg in zip(self.head_names, logits):
                p = torch.softmax(lg.float(), 1).split(b)
                probs[n].append(torch.stack([p[i] for i in colour]).mean(0).numpy())
        bar.close()
        d = bb.embed_dim
        probs = {n: np.concatenate(v) if v else np.zeros((0, len(self.classes[n]))) for n, v in probs.items()}
        if descs:
            probs = self.with_colour_boosters(probs, np.concatenate(descs))
        probs = self.calibrated(probs)
        return None if not embed else np.concatenate(embs) if embs else np.zeros((0, d), np.float32), probs


def tta_name(flips: bool, gray: bool) -> str:
    """The folder's `embedding_tta`: which views the embedding averages."""
    return "+".join(v for v, on in (("flip", flips), ("gray", gray)) if on) or "none"


def is_colour_column(name: str) -> bool:
    """A label a greyscale photo cannot show (colour_group_name, perceived_colour_*)."""
    return "colour" in name.lower() or "color" in name.lower()


def colour_views(n_views: int, gray: bool) -> list[int]:
    """Positions of the colour views in `Backbone.views`' order (photo, [grey], then their mirror images)."""
    return list(range(0, n_views, 2)) if gray else list(range(n_views))


def _trunk(base: str, pretrained: bool, trunk_kwargs: dict | None = None) -> Backbone:
    from fashionrec.backbones import create_backbone

    return create_backbone(base, pretrained=pretrained, **(trunk_kwargs or {}))


def save_adapted(model: AdaptedModel, out_dir: str | Path, config: dict) -> Path:
    """weights.safetensors + fashionrec_model.json, each written atomically."""
    from safetensors.torch import save_file

    from fashionrec.io import atomic_path, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE, suffix=".tmp.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    boosters = {}
    for n, booster in model.colour_boosters.items():  # LightGBM's own text format: no pickle, no code runs
        name = f"colour_booster.{model.head_names.index(n)}.txt"
        with atomic_path(out / name, suffix=".tmp.txt") as tmp:
            booster.save_model(str(tmp))
        boosters[n] = {"file": name, "sha256": file_sha256(out / name)}
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **config,
        "heads": {n: model.classes[n] for n in model.head_names},
        "head_taps": list(model.head_taps),
        "colour_heads": list(model.colour_heads),  # heads that also read `training.colour.colour_features`
        "colour_boosters": boosters,  # {head: LightGBM model of those features alone, multiplied in}
        "temperatures": model.temperatures,  # {head: T}: probabilities ** (1/T), renormalised (calibration)
        "temperatures_no_booster": model.temperatures_no_booster,  # a boosted head's T without its booster
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": file_sha256(out / WEIGHTS_FILE),
    }
    write_json(out / CONFIG_FILE, cfg)
    return out


_LOADED: dict[tuple, AdaptedModel] = {}


def load_adapted(path: str | Path) -> AdaptedModel:
    """Rebuild a model folder written by `fashionrec adapt`. Weights load from safetensors (no code runs);
    the feature-cache identity is the weights file's SHA-256, so features of different weights never mix."""
    from safetensors.torch import load_file

    from fashionrec.backbones.adapted import build_adapted_backbone, read_adapted_config

    cfg, wpath = read_adapted_config(path)
    files = [wpath] + [wpath.parent / e["file"] for e in (cfg.get("colour_boosters") or {}).values()]
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else str(f) for f in files)
    if key in _LOADED:
        return _LOADED[key]
    model = AdaptedModel(
        build_adapted_backbone(cfg, file_sha256(wpath)),
        cfg["heads"],
        head_taps=tuple(cfg.get("head_taps", ())),
        colour_heads=tuple(cfg.get("colour_heads", ())),
    )
    try:
        model.load_state_dict(load_file(str(wpath)), strict=True)
    except Exception as e:  # safetensors' own errors (a damaged file) and shape/key mismatches alike
        raise FashionrecError(f"{wpath}: weights do not match {CONFIG_FILE}: {str(e)[:300]}") from None
    model.colour_boosters = _load_boosters(wpath.parent, cfg.get("colour_boosters") or {}, model.classes)
    for attr in ("temperatures", "temperatures_no_booster"):  # folders from before calibration: none (T = 1)
        setattr(model, attr, {n: float(t) for n, t in (cfg.get(attr) or {}).items() if n in model.classes})
    model.config = cfg
    model.eval()
    _LOADED[key] = model
    return model


def _load_boosters(folder: Path, entries: dict, classes: dict[str, list[str]]) -> dict:
    """The folder's colour boosters, each checked against the SHA-256 its JSON lists."""
    if not entries:
        return {}
    import lightgbm as lgb

    out = {}
    for n, e in entries.items():
        path = folder / e["file"]
        if n not in classes:
            raise FashionrecError(f"{folder / CONFIG_FILE}: colour booster for '{n}', which is not a head")
        if not path.is_file():
            raise FashionrecError(f"{path}: missing (listed in {CONFIG_FILE} as the colour booster of '{n}')")
        if file_sha256(path) != e["sha256"]:
            raise FashionrecError(f"{path}: SHA-256 differs from {CONFIG_FILE}'s; the file was changed or damaged")
        booster = lgb.Booster(model_file=str(path))
        if booster.num_model_per_iteration() != len(classes[n]):
            raise FashionrecError(
                f"{path}: {booster.num_model_per_iteration()} classes, head '{n}' has {len(classes[n])}"
            )
        out[n] = booster
    return out


# ---------------------------------------------------------------- data
def catalog_for_training(data_dir: str | Path):
    """`load_catalog` (kept as a name: `images/` + `labels.csv` is now read by `load_catalog` itself)."""
    from fashionrec.data.catalog import load_catalog

    return load_catalog(data_dir)


def calibrate_on_heldout(
    model: AdaptedModel,
    probs: dict[str, np.ndarray],
    head_only: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    held: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int = 0,
    min_photos: int = 10,
) -> tuple[dict[str, np.ndarray], dict]:
    """Fit each head's temperature on the held-out products' labelled photos (`model.temperatures`; and for a boosted
    colour head also the one without its booster), which the heads never trained on. -> (`probs` with the held-out
    rows calibrated by temperatures fitted on the *other* held-out products (2 folds by product, so the reported
    figures are not fitted on the photos they score), {head: temperature, the folds' temperatures, and
    `calibration_report` before and after}). Heads with fewer than `min_photos` labelled held-out photos keep T = 1.
    """
    rows = np.flatnonzero(held)
    out, report = dict(probs), {}
    for n in model.head_names:
        y = labels[n][rows]
        if (y >= 0).sum() < min_photos:
            continue
        p = probs[n][rows]
        model.temperatures[n] = fit_temperature(p, y)
        if n in model.colour_boosters:
            model.temperatures_no_booster[n] = fit_temperature(head_only[n][rows], y)
        honest, folds = crossfit_temperature(p, y, groups[rows], seed=seed)
        out[n] = np.array(probs[n], dtype=np.float64, copy=True)
        out[n][rows] = honest
        report[n] = {
            "temperature": round(model.temperatures[n], 4),
            "fold_temperatures": [round(t, 4) for t in folds],
            "before": calibration_report(p, y),
            "after": calibration_report(honest, y),
        }
    return out, report


def heldout_tagging(
    truth: dict[str, np.ndarray],
    probs: dict[str, np.ndarray],
    classes: dict[str, list[str]],
    groups: np.ndarray,
    plevel: dict[str, float],
) -> tuple[dict, dict]:
    """(report as `tag` tags: `plevel` columns pooled over each product's photos, report per photo): accuracy and
    macro-F1 per column over the photos whose true label (`truth`, "" = none) is known."""
    from fashionrec.evaluation.retrieval import classification_report

    pooled = pool_by_product(probs, groups, plevel)
    by_product, per_photo = {}, {}
    for name, raw in truth.items():
        has = raw != ""
        cls = np.array(classes[name], dtype=object)
        by_product[name] = classification_report(raw[has], cls[pooled[name][has].argmax(1)], classes[name])
        per_photo[name] = classification_report(raw[has], cls[probs[name][has].argmax(1)], classes[name])
    return by_product, per_photo


def encode_labels(ids: list[str], metadata, columns: list[str], train_mask: np.ndarray, min_count: int = 1):
    """Per column: class list from the training photos (classes with >= min_count), int labels (-1 = missing)."""
    heads, labels = {}, {}
    for col in columns:
        if col not in metadata.columns:
            raise FashionrecError(f"no column '{col}' in the catalog; columns are {sorted(metadata.columns)}")
        s = metadata[col]
        vals = np.array(
            [str(s.loc[i]) if i in s.index and isinstance(s.loc[i], str) and s.loc[i] != "" else "" for i in ids],
            dtype=object,
        )
        tr_vals, counts = np.unique(vals[train_mask & (vals != "")], return_counts=True)
        classes = sorted(v for v, c in zip(tr_vals, counts) if c >= min_count)
        if len(classes) < 2:
            log.warning("column %s: fewer than 2 classes in the training part; skipped", col)
            continue
        index = {c: j for j, c in enumerate(classes)}
        heads[col] = classes
        labels[col] = np.array([index.get(v, -1) if v else -1 for v in vals], dtype=np.int64)
        labels[col + "\0raw"] = vals
    return heads, labels


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
    progress: bool = True,
    onnx: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The frozen lower part's output for every photo in each view (`view_names`: the photo, its greyscale version,
    and their mirror images), float16, cached in the workspace. `onnx`: run it through ONNX Runtime where it
    matches torch (`features.onnx_function`; 3.1x faster on 2 cores), the time going to training steps.

    Returns ({view: maps}, ok mask); undecodable photos are reported and left out (ok False)."""
    from fashionrec.features import _collate, _ImageFiles

    trunk.to(memory_format=torch.channels_last)  # NHWC: measured 1.7x faster CNN inference on these CPUs
    run = _runner(onnx, trunk, lambda x: trunk.forward_lower(x, k), (3, pre.input_size, pre.input_size))
    key = hashlib.sha1(
        "|".join(
            [trunk.name, trunk.feature_key(), pre.key(), str(k), ",".join(views), _fingerprints(paths)]
            + (["ort"] if run.engine == "onnx" else [])
        ).encode()
    ).hexdigest()[:16]
    cache = workspace / "adapt" / f"lower-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                return {v: z[v] for v in views}, z["ok"]
        except Exception as e:  # a damaged cache is recomputed
            log.warning("%s: unreadable (%s); recomputing", cache, e)
    ds = _ImageFiles(paths, pre)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=0 if len(paths) < 256 else min(2, os.cpu_count() or 1),
        collate_fn=_collate,
    )
    out: dict[str, np.ndarray] = {}
    ok = np.zeros(len(paths), dtype=bool)
    t0, done = time.time(), 0
    last = t0
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
            if progress and (time.time() - last > 30 or done == len(paths)):
                last = time.time()
                rate = done / max(last - t0, 1e-9)
                print(
                    f"  caching the frozen lower part ({len(views)} views): {done}/{len(paths)} photos, "
                    f"{rate:.1f} img/s, ETA {(len(paths) - done) / max(rate, 1e-9) / 60:.1f} min",
                    flush=True,
                )
    if not out:
        raise FashionrecError("no photo could be decoded")
    cache.parent.mkdir(parents=True, exist_ok=True)
    from fashionrec.io import atomic_path

    with atomic_path(cache, suffix=".tmp.npz") as tmp:
        np.savez(tmp, ok=ok, **out)
    return out, ok


# ---------------------------------------------------------------- training
@dataclass(frozen=True)
class AdaptConfig:
    backbone: str = DEFAULT_BACKBONE
    input_size: int | None = None  # None: the photos' padded side (`auto_input_size`), at most ADAPT_MAX_INPUT_SIZE
    label_columns: tuple[str, ...] = DEFAULT_LABEL_COLUMNS
    group_column: str = "auto"
    holdout: float = 0.15
    embed_dim: int = 256
    train_blocks: int = 3  # blocks trained from the top (+ the final conv); the rest stays ImageNet, cached
    max_minutes: float = 58.0  # whole run: caching + training + evaluation (the README's run: 56.4 min on 2 cores)
    head_fraction: float = 0.1  # share of the training time with the trunk frozen (stage 1: heads + embedding)
    lr: float = 2e-3  # heads and embedding layer
    trunk_lr: float = 6e-4  # top block; each block below gets lr_decay times the one above
    lr_decay: float = 0.7
    weight_decay: float = 1e-4
    products_per_batch: int = 32  # x 2 photos each, plus as many labelled photos
    labelled_per_batch: int = 32
    temperature: float = 0.1
    metric_weight: float = 1.0
    # cross-batch memory (XBM, Wang et al. 2020): the metric loss also compares each batch with this many embeddings
    # of earlier steps (pytorch-metric-learning's CrossBatchMemory): 4,096 negatives instead of 95; 0 = in-batch only
    memory_size: int = 4096
    # upper stage: BatchNorm keeps its ImageNet statistics (scale and shift still train): no loss jump at the stage
    # switch, and trunk steps 1.28x faster on CPU (161 vs 126 photos/s)
    freeze_bn: bool = True
    label_smoothing: float = 0.1
    min_class_count: int = 2
    flips: bool = True
    gray: bool = True  # greyscale views: cached, trained on (metric loss; colour heads skip them) and averaged in
    refit_heads: bool = True  # after training: heads refit on pooled taps + pre-logits (`refit_heads`)
    # the refit colour heads also read a colour histogram of the garment (`training/colour.py`): +3.4 points
    colour_features: bool = True
    # ... and a LightGBM model of that histogram alone multiplies in (`training/colour.py`; needs colour_features)
    colour_booster: bool = True
    head_c: float = 0.05  # inverse L2 strength of the refit heads (measured 0.02-0.2: within 0.5 points)
    # inference passes (caching the lower part, ImageNet and adapted features for evaluation) through ONNX Runtime
    # where it matches torch (`features.onnx_function`): caching 3.1x faster on 2 cores, the time goes to training
    onnx: bool = True
    max_steps: int | None = None  # tests: stop after this many steps
    init_from: str | None = None  # continue from a model folder of an earlier run (same data, split and heads)
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.holdout < 1:
            raise ValueError("holdout must be in (0, 1)")
        if self.max_minutes <= 0:
            raise ValueError("max_minutes must be positive")
        batch = 2 * self.products_per_batch + self.labelled_per_batch
        if self.memory_size and not batch <= self.memory_size:
            raise ValueError(
                f"memory_size must be 0 (off) or at least the batch size ({batch}); got {self.memory_size}"
            )


def _lr_factor(frac: float, warmup: float = 0.05) -> float:
    """Warm-up then cosine decay, as a function of the elapsed share of the stage's time."""
    frac = min(max(frac, 0.0), 1.0)
    if frac < warmup:
        return 0.1 + 0.9 * frac / warmup
    return 0.5 * (1 + math.cos(math.pi * (frac - warmup) / (1 - warmup))) * 0.99 + 0.01


def _batches(rng: np.random.Generator, multi: dict[str, np.ndarray], labelled: np.ndarray, cfg: AdaptConfig):
    """Endless batches: P products x 2 photos (positives) + L labelled photos (heads; negatives for the metric)."""
    keys = np.array(list(multi)) if multi else np.zeros(0, dtype=object)
    order, pos = rng.permutation(len(keys)), 0
    while True:
        rows = []
        for _ in range(min(cfg.products_per_batch, len(keys))):
            if pos >= len(order):
                order, pos = rng.permutation(len(keys)), 0
            members = multi[keys[order[pos]]]
            pos += 1
            pick = rng.choice(members, 2, replace=False)
            rows.extend(pick.tolist())
        if len(labelled):
            rows.extend(rng.choice(labelled, min(cfg.labelled_per_batch, len(labelled)), replace=False).tolist())
        yield np.array(rows)


def _param_groups(model: AdaptedModel, k: int, cfg: AdaptConfig, stage: str) -> list[dict]:
    bb = model.backbone
    for p in model.parameters():
        p.requires_grad = False
    head_params = list(bb.embed.parameters()) + list(model.heads.parameters())
    for p in head_params:
        p.requires_grad = True
    groups = [{"params": head_params, "lr": cfg.lr}]
    if stage == "head":
        return groups
    seen = {id(p) for p in head_params}
    lower_ids = {id(p) for b in bb.blocks[:k] for p in b.parameters()}
    if hasattr(bb.model, "conv_stem"):
        lower_ids |= {id(p) for m in (bb.model.conv_stem, bb.model.bn1) for p in m.parameters()}
    top = [
        p
        for p in bb.model.parameters()
        if id(p) not in seen
        and id(p) not in lower_ids
        and not any(id(p) == id(q) for b in bb.blocks for q in b.parameters())
    ]
    ordered = [top] + [list(b.parameters()) for b in reversed(bb.blocks[k:])]
    for depth, ps in enumerate(ordered):
        ps = [p for p in ps if id(p) not in seen]
        seen.update(id(p) for p in ps)
        for p in ps:
            p.requires_grad = True
        if ps:
            groups.append({"params": ps, "lr": cfg.trunk_lr * cfg.lr_decay**depth})
    return groups


def _set_train_mode(model: AdaptedModel, k: int, stage: str, freeze_bn: bool = False) -> None:
    model.train()
    bb = model.backbone
    frozen = list(bb.blocks[:k]) if stage != "head" and not freeze_bn else list(bb.blocks) + [bb.model]
    for part in frozen:
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _fmt(model: nn.Module) -> torch.memory_format:
    from fashionrec.training.finetune import memory_format_of

    return memory_format_of(model)


def _runner(onnx: bool, owner: nn.Module, fn, shape: tuple[int, ...]):
    """`fn` (a tensor or a tuple of tensors from `owner`'s weights, in eval mode) as float32 array -> tuple of arrays:
    through ONNX Runtime when `onnx` and `features.onnx_function` (checked on a fixed random batch of `shape`) gives
    it, else torch. The runner's `engine` says which ("onnx" or "torch")."""
    owner.eval()
    if onnx:
        from fashionrec.features import onnx_function

        g = torch.Generator().manual_seed(0)
        ort_run = onnx_function(owner, fn, torch.randn((8,) + tuple(shape), generator=g))
        if ort_run is not None:

            def onnx_pass(x: np.ndarray) -> tuple[np.ndarray, ...]:
                return tuple(ort_run(x))

            onnx_pass.engine = "onnx"
            return onnx_pass
    fmt = _fmt(owner)

    @torch.no_grad()
    def torch_pass(x: np.ndarray) -> tuple[np.ndarray, ...]:
        out = fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).contiguous(memory_format=fmt))
        return tuple(t.numpy() for t in ((out,) if isinstance(out, torch.Tensor) else out))

    torch_pass.engine = "torch"
    return torch_pass


@torch.no_grad()
def trunk_prelogits(
    trunk: Backbone, maps: list[np.ndarray], k: int, batch_size: int = 256, onnx: bool = True
) -> list[np.ndarray]:
    """ImageNet pre-logits of each array of cached lower maps (one export for all of them)."""
    run = _runner(onnx, trunk, lambda h: trunk.forward_upper(h, k), maps[0].shape[1:])
    return [np.concatenate([run(m[s : s + batch_size])[0] for s in range(0, len(m), batch_size)]) for m in maps]


def head_taps_for(n_blocks: int, k: int) -> tuple[int, ...]:
    """Blocks whose pooled outputs the refit heads read: the frozen part's last block (its map is cached) through
    the block before the last (Lite0 at the default split: blocks 3, 4 and 5)."""
    return tuple(range(max(k - 1, 0), max(n_blocks - 1, 0)))


def upper_pass(model: AdaptedModel, k: int, shape: tuple[int, ...], onnx: bool = True):
    """maps (float32 array) -> (embeddings, head inputs), in eval mode with the model's current weights: through ONNX
    Runtime where it matches torch (`features.onnx_function`), else torch (`_runner`)."""
    return _runner(onnx, model, lambda h: model.head_inputs(h, k), shape)


def head_features(
    model: AdaptedModel, maps: list[np.ndarray], k: int, batch_size: int = 256, onnx: bool = True, run=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(embeddings, head inputs)] from each array of cached lower maps, in eval mode: one upper pass gives both
    (`upper_pass`, built once for all the arrays unless `run` is given)."""
    model.eval()
    run = run or upper_pass(model, k, maps[0].shape[1:], onnx)
    res = []
    for m in maps:
        parts = [run(m[s : s + batch_size]) for s in range(0, len(m), batch_size)]
        res.append((np.concatenate([e for e, _ in parts]), np.concatenate([x for _, x in parts])))
    return res


@torch.no_grad()
def head_probs(model: AdaptedModel, x: np.ndarray, colour: np.ndarray | None = None) -> dict[str, np.ndarray]:
    logits = model.head_logits(torch.from_numpy(x), None if colour is None else torch.from_numpy(colour))
    return {n: torch.softmax(lg, 1).numpy() for n, lg in zip(model.head_names, logits)}


def refit_heads(
    model: AdaptedModel,
    views: list[np.ndarray],
    labels: dict[str, np.ndarray],
    train: np.ndarray,
    c: float = 0.05,
    max_iter: int = 300,
    colour: np.ndarray | None = None,
) -> dict[str, int]:
    """Replace every head by an L2 multinomial logistic regression (scikit-learn) on the head inputs of the training
    photos (each view a sample), standardised; the scaling is folded into the linear layer, so the folder needs no
    scaler. `views` are the head inputs of the photo and of its mirror image, computed with `model.head_taps` set.
    `colour`: `colour_features` per photo (the same for its mirror image); the colour columns' heads then read them
    too (`model.colour_heads`). Returns the training rows per head."""
    from sklearn.linear_model import LogisticRegression

    model.colour_heads = tuple(n for n in model.head_names if colour is not None and is_colour_column(n))
    new, rows = [], {}
    for name in model.head_names:
        n_cls = len(model.classes[name])
        y = labels[name]
        m = train & (y >= 0)
        rows[name] = int(m.sum())
        # colour features may exist for the labelled photos only (`adapt` computes no more): scale on those
        xs, scale_rows = ([np.hstack([v, colour]) for v in views], m) if name in model.colour_heads else (views, train)
        mu = xs[0][scale_rows].mean(0) if scale_rows.any() else np.zeros(xs[0].shape[1])
        sd = (xs[0][scale_rows].std(0) if scale_rows.any() else 0) + 1e-6
        d = xs[0].shape[1]
        W = np.zeros((n_cls, d), dtype=np.float64)
        b = np.full(n_cls, -30.0)  # a class with no training photo is never predicted
        present = np.unique(y[m])
        if len(present) == 1:
            b[present] = 0.0
        elif len(present) > 1:
            xtr = np.vstack([(v[m] - mu) / sd for v in xs])
            lr = LogisticRegression(C=c, max_iter=max_iter).fit(xtr, np.concatenate([y[m]] * len(views)))
            coef, icpt = lr.coef_, lr.intercept_
            if len(lr.classes_) == 2:  # sklearn's binary form: one row; softmax over (0, w.x + b) is the same model
                coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, icpt[0]])
            W[lr.classes_] = coef / sd
            b[lr.classes_] = icpt - (coef / sd) @ mu
        lin = nn.Linear(d, n_cls)
        lin.weight.data = torch.from_numpy(W.astype(np.float32))
        lin.bias.data = torch.from_numpy(b.astype(np.float32))
        new.append(lin)
    model.heads = nn.ModuleList(new)
    return rows


@dataclass
class AdaptResult:
    model: AdaptedModel
    metrics: dict = field(default_factory=dict)
    out_dir: Path | None = None


def adapt_catalog(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: AdaptConfig = AdaptConfig(),
    *,
    workspace: str | Path | None = None,
    progress: bool = True,
) -> AdaptResult:
    """Fine-tune a backbone on the catalog's labels + same-product pairs; write the model folder; evaluate."""
    from pytorch_metric_learning.losses import CrossBatchMemory, SupConLoss

    from fashionrec.evaluation.retrieval import retrieval_metrics
    from fashionrec.io import default_workspace, write_json

    t_start = time.time()
    budget = cfg.max_minutes * 60
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    ws = Path(workspace or default_workspace())
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    cat = catalog_for_training(data_dir)
    ids = list(cat.item_ids)
    if len(ids) < 4:
        raise FashionrecError(f"{data_dir}: {len(ids)} photos; need at least 4 to fine-tune")
    paths = [cat.image_paths[i] for i in ids]
    meta = cat.metadata
    groups_all = product_groups(ids, meta, cfg.group_column)
    held_all = split_products(groups_all, cfg.holdout, cfg.seed)

    trunk = _trunk(cfg.backbone, pretrained=True)
    if not trunk.supports_split():
        raise FashionrecError(
            f"backbone {cfg.backbone}: fine-tuning needs a known block structure "
            "(efficientnet_lite0/1/2, mobilenetv2, tiny_cnn)"
        )
    if cfg.input_size is None:  # fit the photos: their padded side, capped for the CPU budget
        from fashionrec.features import auto_input_size

        native = trunk.data_config.input_size
        cfg = replace(cfg, input_size=min(ADAPT_MAX_INPUT_SIZE, auto_input_size(paths, native)))
    trunk.with_input_size(cfg.input_size)
    pre = Preprocess.for_backbone(trunk)
    n_blocks = len(trunk.blocks)
    k = max(0, n_blocks - cfg.train_blocks)
    say(
        f"adapt: {len(ids)} photos, {len(np.unique(groups_all))} products ({int(held_all.sum())} photos of "
        f"{len(np.unique(groups_all[held_all]))} held-out products); {cfg.backbone} at {cfg.input_size} px, "
        f"training blocks {k}..{n_blocks - 1} + head; budget {cfg.max_minutes:g} min"
    )
    vnames = view_names(cfg.flips, cfg.gray)
    views_all, ok = lower_maps(trunk, paths, pre, k, ws, views=vnames, progress=progress, onnx=cfg.onnx)
    keep = np.flatnonzero(ok)
    ids = [ids[i] for i in keep]
    V = [views_all[v][keep] for v in vnames]  # V[0]: the photo itself
    del views_all
    maps = V[0]
    colour = colour_views(len(V), cfg.gray)
    groups, held = groups_all[keep], held_all[keep]
    train = ~held
    heads, labels = encode_labels(
        ids,
        meta,
        [c for c in cfg.label_columns if c in meta.columns]
        if cfg.label_columns == DEFAULT_LABEL_COLUMNS
        else list(cfg.label_columns),
        train,
        cfg.min_class_count,
    )
    if not heads:
        say("adapt: no label column with 2+ classes: metric learning only")
    say(
        f"  lower part cached ({maps.nbytes / 2**20:.0f} MiB) after {time.time() - t_start:.0f}s; heads: "
        + ", ".join(
            f"{h} ({len(c)} classes, {int((labels[h][train] >= 0).sum())} labelled train photos)"
            for h, c in heads.items()
        )
    )

    # The colour heads' second input (`training/colour.py`), for the photos with a colour label: the refit learns
    # on the training ones, the evaluation reads the held-out ones (other photos' colour outputs are never used).
    cfeat = None
    colour_cols = [h for h in heads if is_colour_column(h)] if cfg.colour_features and cfg.refit_heads else []
    if colour_cols:
        t_col = time.time()
        rows = np.flatnonzero(np.any([labels[h] >= 0 for h in colour_cols], 0))
        row_of = {ids[r]: r for r in rows}
        got, f = colour_features_of_files({ids[r]: cat.image_paths[ids[r]] for r in rows}, pre, progress=progress)
        cfeat = np.zeros((len(ids), COLOUR_FEATURES_DIM), np.float32)
        cfeat[[row_of[i] for i in got]] = f
        say(f"  colour features of {len(got)} labelled photos in {time.time() - t_col:.0f}s")

    # ImageNet features for the comparison, before training changes the shared trunk in place; also averaged over
    # the views, as the adapted embedding is (a fair baseline for the test-time augmentation).
    t_base = time.time()
    base_views = trunk_prelogits(trunk, V, k, onnx=cfg.onnx)
    say(f"  ImageNet pre-logits of {len(V)} x {len(ids)} views in {time.time() - t_base:.0f}s")
    base = base_views[0]
    bb = AdaptedBackbone(trunk, cfg.embed_dim, weights_id="adapting")
    prev = load_adapted(cfg.init_from) if cfg.init_from else None
    model = AdaptedModel(bb, heads, head_taps=prev.head_taps if prev is not None else ())
    model = model.to(memory_format=torch.channels_last)  # 2.2x faster training steps (finetune.py)
    if prev is not None:
        # Continue an earlier run (a warm restart of the schedule): the CPU time spent there is not lost. The split
        # must be the same, or held-out products would have been trained on.
        held_now = sorted(np.unique(groups[held]).tolist())
        if (
            prev.config.get("heldout_products") != held_now
            or prev.classes != heads
            or prev.config.get("base_backbone") != cfg.backbone
            or int(prev.config.get("embed_dim", -1)) != cfg.embed_dim
        ):
            raise FashionrecError(
                f"{cfg.init_from}: another split, heads, backbone or embedding size; "
                "--init-from needs the same data, --seed, --holdout and columns"
            )
        sd = prev.state_dict()
        for j, n in enumerate(prev.head_names):  # training heads read the network's inputs only; refit adds colour
            if n in prev.colour_heads:
                sd[f"heads.{j}.weight"] = sd[f"heads.{j}.weight"][:, :-COLOUR_FEATURES_DIM]
        model.load_state_dict(sd)
        say(f"  continuing from {cfg.init_from}")
    # Stage 1 starts from the ImageNet pre-logits; the embedding starts as a random projection of them.
    tr_rows = np.flatnonzero(train)
    by_group: dict[str, list[int]] = {}
    for r in tr_rows:
        by_group.setdefault(groups[r], []).append(int(r))
    multi = {g: np.array(v) for g, v in by_group.items() if len(v) >= 2}
    any_label = np.zeros(len(ids), dtype=bool)
    for h in heads:
        any_label |= labels[h] >= 0
    labelled = np.flatnonzero(train & any_label)
    if not multi and not len(labelled):
        raise FashionrecError("nothing to learn from: no product with 2+ photos and no labelled photo")
    group_codes = {g: j for j, g in enumerate(np.unique(groups))}
    gcode = np.array([group_codes[g] for g in groups])
    y = {h: torch.from_numpy(labels[h]) for h in heads}
    supcon = SupConLoss(temperature=cfg.temperature)
    batches = _batches(rng, multi, labelled, cfg)

    # Time left for training = budget - time so far - evaluation (measured: one upper pass over every photo).
    probe_rows = np.arange(min(256, len(ids)))
    run = upper_pass(model, k, maps.shape[1:], cfg.onnx)  # the evaluation's pass, timed without its export
    t_eval0 = time.time()
    head_features(model, [maps[probe_rows]], k, run=run)
    views = len(V)  # the evaluation embeds every view
    eval_secs = (time.time() - t_eval0) / len(probe_rows) * len(ids) * 1.4 * views + 30  # upper passes + retrieval
    if cfg.refit_heads:
        eval_secs += (
            2e-4 * len(ids) * len(colour) * len(heads)
        )  # the refit: measured 64-89 s for 7 heads, 2 x 17.6k rows
    if cfeat is not None and cfg.colour_booster:
        eval_secs += 5e-3 * int(cfeat.any(1).sum()) * len(colour_cols)  # measured 28-36 s for 6.7k photos
    train_secs = budget - (time.time() - t_start) - eval_secs
    if train_secs < 30 and cfg.max_steps is None:
        raise FashionrecError(
            f"--max-minutes {cfg.max_minutes:g} leaves {train_secs:.0f}s for training after caching "
            f"and evaluation; give more time"
        )
    history = []
    step = 0
    stages = [("upper", 1.0)] if cfg.init_from else [("head", cfg.head_fraction), ("upper", 1 - cfg.head_fraction)]
    for stage, share in stages:
        stage_secs = max(train_secs, 1) * share
        groups_p = _param_groups(model, k, cfg, stage)
        base_lrs = [g["lr"] for g in groups_p]
        opt = torch.optim.AdamW(groups_p, weight_decay=cfg.weight_decay)
        # a fresh memory each stage: the embeddings of the stage before drifted too far to compare with
        metric = CrossBatchMemory(supcon, cfg.embed_dim, memory_size=cfg.memory_size) if cfg.memory_size > 0 else supcon
        t_stage, last_print, seen, stage_steps = time.time(), time.time(), 0, 0
        run_loss = {}
        stage_max = None if cfg.max_steps is None else max(1, int(cfg.max_steps * share))
        while True:
            # The schedule follows the wall clock (a busy machine trains fewer steps, never longer), or the step
            # count when max_steps is given (reproducible runs, tests).
            frac = (time.time() - t_stage) / stage_secs if stage_max is None else stage_steps / stage_max
            if frac >= 1:
                break
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * _lr_factor(frac)
            _set_train_mode(model, k, stage, cfg.freeze_bn)
            rows = next(batches)
            view = rng.integers(0, len(V), len(rows))  # each photo in one of its views, drawn uniformly
            h = np.empty((len(rows),) + maps.shape[1:], dtype=np.float32)
            for j, vm in enumerate(V):
                sel = view == j
                h[sel] = vm[rows[sel]]
            is_gray = torch.from_numpy(~np.isin(view, colour))
            hx = torch.from_numpy(h).contiguous(memory_format=torch.channels_last)
            emb, logits = model.upper(hx, k)
            losses = {}
            if multi:
                losses["metric"] = cfg.metric_weight * metric(emb, torch.from_numpy(gcode[rows]))
            for name, lg in zip(model.head_names, logits):
                yy = y[name][rows]
                m = yy >= 0
                if is_colour_column(name):  # a greyscale view does not show its colour
                    m &= ~is_gray
                if m.any():
                    losses[name] = F.cross_entropy(lg[m], yy[m], label_smoothing=cfg.label_smoothing)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            stage_steps += 1
            seen += len(rows)
            for n, v in losses.items():
                fv = float(v.detach())
                run_loss[n] = 0.9 * run_loss.get(n, fv) + 0.1 * fv
            now = time.time()
            if now - last_print > 30:
                last_print = now
                rate = seen / (now - t_stage)
                total_left = budget - (now - t_start)
                say(
                    f"  [{stage}] step {step}, {rate:.0f} photos/s, loss "
                    + " ".join(f"{n.replace('_name', '')}={v:.3f}" for n, v in run_loss.items())
                    + f"; stage {min(frac, 1) * 100:.0f}%, elapsed {(now - t_start) / 60:.1f} min, "
                    f"ETA {max(total_left, 0) / 60:.1f} min"
                )
        history.append(
            {
                "stage": stage,
                "steps": stage_steps,
                "photos": seen,
                "seconds": round(time.time() - t_stage, 1),
                "loss": {n: round(v, 4) for n, v in run_loss.items()},
            }
        )
        say(f"  stage {stage}: {stage_steps} steps, {seen} photos in {time.time() - t_stage:.0f}s")

    # ---- the heads' refit, then evaluation on held-out products (one upper pass per view gives both)
    model.eval()
    if cfg.refit_heads and heads:
        model.head_taps = head_taps_for(n_blocks, k)
    t_feat = time.time()
    embs, xs = zip(*head_features(model, V, k, onnx=cfg.onnx))
    say(f"  adapted embeddings + head inputs of {len(V)} x {len(ids)} views in {time.time() - t_feat:.0f}s")
    xs = [xs[j] for j in colour]  # the heads read the colour views only
    if cfg.refit_heads and heads:
        t_refit = time.time()
        refit_heads(model, xs, labels, train, c=cfg.head_c, colour=cfeat)
        say(
            f"  heads refit on blocks {list(model.head_taps)} + pre-logits"
            + (f" (+ colour features: {', '.join(model.colour_heads)})" if model.colour_heads else "")
            + f" in {time.time() - t_refit:.0f}s"
        )
    if model.colour_heads and cfg.colour_booster:
        t_boost = time.time()
        for n in model.colour_heads:
            rows = train & (labels[n] >= 0)
            booster = fit_colour_booster(
                cfeat[rows], labels[n][rows], len(heads[n]), seed=cfg.seed, threads=torch.get_num_threads()
            )  # as many threads as the network (`--threads`), not LightGBM's default of every core
            if booster is not None:
                model.colour_boosters[n] = booster
        say(f"  colour boosters ({', '.join(model.colour_boosters)}) in {time.time() - t_boost:.0f}s")
    view_probs = [head_probs(model, x, cfeat if model.colour_heads else None) for x in xs]
    head_only = {n: np.mean([p[n] for p in view_probs], 0) for n in model.head_names}
    probs = model.with_colour_boosters(head_only, cfeat)
    probs, calibration = calibrate_on_heldout(model, probs, head_only, labels, held, groups, seed=cfg.seed)
    if calibration:
        say(
            "  confidences calibrated on the held-out products: "
            + ", ".join(
                f"{n} T={c['temperature']:.2f} (ECE {c['before']['ece']:.3f} -> {c['after']['ece']:.3f})"
                for n, c in calibration.items()
            )
        )
    # the folder embeds with these views averaged: evaluate (and cache) exactly that
    model.backbone.flip_tta, model.backbone.gray_tta = cfg.flips, cfg.gray
    emb = model.backbone.average_views(*map(torch.from_numpy, embs)).numpy() if len(V) > 1 else embs[0]
    q = np.flatnonzero(held & np.isin(groups, [g for g, c in zip(*np.unique(groups, return_counts=True)) if c >= 2]))
    type_col = "product_type_name" if "product_type_name" in meta.columns else (next(iter(heads), None))
    types = labels.get(type_col + "\0raw") if type_col else None
    if types is None and type_col:
        types = np.array([str(meta[type_col].get(i, "")) if i in meta.index else "" for i in ids], dtype=object)
    ret = {"imagenet": retrieval_metrics(base, groups, q, types)}
    if len(V) > 1:
        ret["imagenet+" + tta_name(cfg.flips, cfg.gray)] = retrieval_metrics(sum(base_views), groups, q, types)
    ret["adapted"] = retrieval_metrics(emb, groups, q, types)
    # held-out tagging as `tag` does it: product-level columns (measured on the training products) pooled over
    # each product's photos; per photo as well, for comparison
    hrows = np.flatnonzero(held)
    tr_rows = np.flatnonzero(train)
    plevel = product_level_columns([ids[i] for i in tr_rows], meta, groups[tr_rows], list(heads))
    tagging, per_photo = heldout_tagging(
        {n: labels[n + "\0raw"][hrows] for n in heads},
        {n: probs[n][hrows] for n in heads},
        heads,
        groups[hrows],
        plevel,
    )
    wall = time.time() - t_start
    metrics = {
        "retrieval_heldout": ret,
        "tagging_heldout": tagging,
        "tagging_heldout_per_photo": per_photo,
        "calibration_heldout": calibration,
        "product_level_columns": plevel,
        "wall_seconds": round(wall, 1),
        "n_photos": len(ids),
        "n_heldout_photos": int(held.sum()),
        "n_queries": int(len(q)),
        "history": history,
    }
    if cfg.init_from and (Path(cfg.init_from) / "metrics.json").exists():
        prev_m = json.loads((Path(cfg.init_from) / "metrics.json").read_text())
        metrics["continued_from"] = str(cfg.init_from)
        metrics["total_wall_seconds"] = round(wall + prev_m.get("total_wall_seconds", prev_m.get("wall_seconds", 0)), 1)
    held_products = sorted(np.unique(groups[held]).tolist())
    config = {
        "base_backbone": cfg.backbone,
        "trunk_kwargs": {},
        "embed_dim": cfg.embed_dim,
        "preprocess": {**asdict(pre), "pad_square": True},
        "split_block": k,
        "embedding": "L2-normalised linear projection of the pre-logits (metric loss: SupConLoss)",
        "embedding_tta": tta_name(cfg.flips, cfg.gray),  # the views averaged into the embedding
        "heads_on": "pooled taps + pre-logits" if model.head_taps else "pre-logits",
        "product_level_columns": plevel,  # {column: agreement}: `tag` makes these agree within a product
        "group_column": cfg.group_column,
        "adapt_config": {**asdict(cfg), "label_columns": list(cfg.label_columns)},
        "heldout_products": held_products,
        "trained_on": str(Path(data_dir).resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = save_adapted(model, out_dir, config)
    write_json(out / "metrics.json", metrics)
    paths_by_id = {i: cat.image_paths[i] for i in ids}
    _write_features_to_cache(out, ids, paths_by_id=paths_by_id, emb=emb, ws=ws)
    _write_features_to_cache(
        None, ids, paths_by_id=paths_by_id, emb=base, ws=ws, imagenet=(cfg.backbone, cfg.input_size)
    )
    entry = register_adapted(ws, data_dir, out, metrics)
    say(f"adapt: wrote {out} in {wall / 60:.1f} min")
    say(format_adapt_metrics(metrics))
    say(
        f"adapt: registered for {Path(data_dir).resolve()} in {ws / REGISTRY}: the recommenders, `similar`, "
        + (
            "`evaluate` and the server use it by default (--backbone auto), as it retrieves better than ImageNet"
            if entry["better"]
            else "`evaluate` and the server keep ImageNet by default: it did not retrieve better than ImageNet"
        )
    )
    return AdaptResult(model, metrics, out)


def _write_features_to_cache(
    model_dir: Path | None, ids: list[str], paths_by_id: dict, emb: np.ndarray, ws: Path, imagenet: tuple | None = None
) -> None:
    """The held-out evaluation already embedded every photo: store it under the key `embed_image_files` uses for
    this model folder (eager fp32), so `fashionrec embed --backbone MODEL_DIR` and the benchmark reuse it."""
    from fashionrec.backbones import create_backbone
    from fashionrec.features import FeatureCache, InferencePath, _model_key, file_fingerprint
    from fashionrec.features import Preprocess as P

    bb = create_backbone(imagenet[0], input_size=imagenet[1]) if imagenet else create_backbone(str(model_dir))
    key = f"files-{_model_key(bb, P.for_backbone(bb), InferencePath())}"
    FeatureCache(ws).save(
        key, fingerprints=np.array([file_fingerprint(paths_by_id[i]) for i in ids]), features=emb.astype(np.float32)
    )


def format_adapt_metrics(m: dict) -> str:
    lines = [
        "held-out products: same-product retrieval (queries: held-out photos of products with 2+ photos; "
        "gallery: every photo)",
        "| features | Recall@1 | Recall@10 | same-type P@10 |",
        "|---|---|---|---|",
    ]
    for name, r in m["retrieval_heldout"].items():
        lines.append(
            f"| {name} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | {r['type_precision@10']:.3f} |"
            if r.get("type_precision@10") is not None
            else f"| {name} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | - |"
        )
    lines += [
        "",
        "held-out tagging (photos of held-out products that have the label; as `tag` does it: the product-level "
        "columns pooled over each product's photos, marked *)",
        "| attribute | classes | n | accuracy | macro-F1 | per photo: accuracy |",
        "|---|---|---|---|---|---|",
    ]
    plevel = m.get("product_level_columns") or {}
    per_photo = m.get("tagging_heldout_per_photo") or {}
    for name, t in m["tagging_heldout"].items():
        pp = per_photo.get(name, {}).get("accuracy")
        lines.append(
            f"| {name}{' *' if name in plevel else ''} | {t['n_classes']} | {t['n']} | {t['accuracy']:.3f} | "
            f"{t['macro_f1']:.3f} | {'-' if pp is None else f'{pp:.3f}'} |"
        )
    cal = m.get("calibration_heldout") or {}
    if cal:
        lines += [
            "",
            "confidence calibration per photo (held-out products; each half's temperature fitted on the other half); "
            "`--min-confidence X` keeps the tags at or above X: share kept, their accuracy",
            "| attribute | T | accuracy | mean confidence: raw -> calibrated | ECE: raw -> calibrated | "
            + " | ".join(f">= {t}" for t in THRESHOLDS)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(THRESHOLDS),
        ]
        for name, c in cal.items():
            b, a = c["before"], c["after"]
            keep = [a["at_min_confidence"][str(t)] for t in THRESHOLDS]
            lines.append(
                f"| {name} | {c['temperature']:.2f} | {a['accuracy']:.3f} | {b['mean_confidence']:.3f} -> "
                f"{a['mean_confidence']:.3f} | {b['ece']:.3f} -> {a['ece']:.3f} | "
                + " | ".join(
                    f"{k['coverage']:.2f}, {k['accuracy']:.3f}" if k["accuracy"] is not None else "0, -" for k in keep
                )
                + " |"
            )
    return "\n".join(lines)
