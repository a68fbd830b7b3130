"""Everything training reads, prepared once (`prepare`): the photos that decoded, their cached lower maps in each
view, the product groups and the held-out split, the encoded labels, the colour descriptor of the colour-labelled
photos, and the ImageNet pre-logits the adapted features are compared with."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fashionrec.backbones.base import Backbone
from fashionrec.config import ADAPT_MAX_INPUT_SIZE
from fashionrec.data.products import product_groups, split_products
from fashionrec.errors import FashionrecError
from fashionrec.features import Preprocess
from fashionrec.training.adapt.config import AdaptCallbacks, AdaptConfig
from fashionrec.training.adapt.labels import (
    catalog_for_training,
    check_labelled_folder,
    encode_labels,
    resolve_label_columns,
)
from fashionrec.training.adapt.lower_cache import lower_maps, trunk_prelogits, view_names
from fashionrec.training.adapt.model import colour_views, is_colour_column


@dataclass
class AdaptData:
    ids: list[str]  # photos that decoded, in catalog order
    paths: dict[str, Path]
    meta: object  # the catalog's metadata table (pandas)
    views: list[np.ndarray]  # cached lower maps per view (`view_names` order); views[0]: the photo itself
    colour_idx: list[int]  # positions of the colour views in `views`
    groups: np.ndarray  # product key per photo
    held: np.ndarray  # held-out photos (whole products)
    heads: dict[str, list[str]]  # {label column: classes}
    labels: dict[str, np.ndarray]  # {column: class index, -1 = none} and {column + "\0raw": the label text}
    colour: np.ndarray | None  # `colour_features` of the colour-labelled photos (zeros elsewhere); None if unused
    base_views: list[np.ndarray]  # ImageNet pre-logits per view
    pairs: str  # "products": photos of one product are positives; "views": two views of one photo are

    @property
    def train(self) -> np.ndarray:
        return ~self.held


def _trunk(base: str, pretrained: bool, weights: str | None = None) -> Backbone:
    from fashionrec.backbones import create_backbone

    return create_backbone(base, pretrained=pretrained, weights=weights)


def split_trunk(cfg: AdaptConfig, paths: list[Path], device) -> tuple[AdaptConfig, Backbone, Preprocess, int]:
    """The ImageNet trunk on `device`, at the input size (auto: the photos' padded side, capped), and the split
    block k (blocks[k:] train). -> (cfg with the input size set, trunk, preprocessing, k)."""
    trunk = _trunk(cfg.backbone, True, cfg.weights)
    if not trunk.supports_split():
        raise FashionrecError(
            f"backbone {cfg.backbone}: its forward could not be split into a frozen lower part and a trained upper "
            "part (known timm families: EfficientNet/MobileNetV3, ResNet, ConvNeXt, ViT; also mobilenetv2, tiny_cnn)"
        )
    if trunk.fixed_input_size:  # a ViT's position embeddings fix its input size
        cfg = replace(cfg, input_size=trunk.data_config.input_size)
    elif cfg.input_size is None:  # fit the photos: their padded side, capped for the CPU budget
        from fashionrec.features import auto_input_size

        native = trunk.data_config.input_size
        cfg = replace(cfg, input_size=min(ADAPT_MAX_INPUT_SIZE, auto_input_size(paths, native)))
    trunk.with_input_size(cfg.input_size)
    trunk.to(device)
    return cfg, trunk, Preprocess.for_backbone(trunk), max(0, len(trunk.blocks) - cfg.train_blocks)


def prepare(data_dir, cfg: AdaptConfig, ws: Path, cb: AdaptCallbacks, device):
    """-> (cfg with the input size resolved, trunk, preprocessing, split block k, AdaptData)."""
    t0 = time.time()
    cat = catalog_for_training(data_dir)
    check_labelled_folder(data_dir, cat)
    ids = list(cat.item_ids)
    if len(ids) < 4:
        raise FashionrecError(f"{data_dir}: {len(ids)} photos; need at least 4 to fine-tune")
    meta = cat.metadata
    columns = resolve_label_columns(data_dir, meta, cfg.label_columns, cfg.group_column)
    paths = [cat.image_paths[i] for i in ids]
    groups_all = product_groups(ids, meta, cfg.group_column)
    held_all = split_products(groups_all, cfg.holdout, cfg.seed)
    cfg, trunk, pre, k = split_trunk(cfg, paths, device)
    multi = len(np.unique(groups_all)) < len(groups_all)
    pairs = "products" if multi else "views"
    if pairs == "views" and not (cfg.flips or cfg.gray):
        raise FashionrecError(
            "no product groups (--group-column): the positives are two views of one photo; drop --no-flips/--no-gray"
        )
    cb.log(
        f"adapt: {len(ids)} photos, {len(np.unique(groups_all))} products ({int(held_all.sum())} photos of "
        f"{len(np.unique(groups_all[held_all]))} held-out products); positives: "
        + ("photos of the same product" if multi else "two views of the same photo")
        + f"; {cfg.backbone} at {cfg.input_size} px, training blocks {k}..{len(trunk.blocks) - 1} + head; budget "
        f"{cfg.max_minutes:g} min"
    )
    vnames = view_names(cfg.flips, cfg.gray)
    views_all, ok = lower_maps(trunk, paths, pre, k, ws, views=vnames, progress=cb.progress, onnx=cfg.onnx)
    keep = np.flatnonzero(ok)
    ids = [ids[i] for i in keep]
    V = [views_all[v][keep] for v in vnames]
    del views_all
    groups, held = groups_all[keep], held_all[keep]
    heads, labels = encode_labels(ids, meta, columns, ~held, cfg.min_class_count)
    if not heads:
        cb.log("adapt: no label column with 2+ classes: metric learning only")
    cb.log(
        f"  lower part cached ({V[0].nbytes / 2**20:.0f} MiB) after {time.time() - t0:.0f}s; heads: "
        + ", ".join(
            f"{h} ({len(c)} classes, {int((labels[h][~held] >= 0).sum())} labelled train photos)"
            for h, c in heads.items()
        )
    )
    colour = _colour_descriptor(ids, cat.image_paths, heads, labels, pre, cfg, cb)
    # ImageNet features for the comparison, before training changes the shared trunk in place; also averaged over
    # the views, as the adapted embedding is (a fair baseline for the test-time augmentation).
    t_base = time.time()
    base_views = trunk_prelogits(trunk, V, k, onnx=cfg.onnx)
    cb.log(f"  ImageNet pre-logits of {len(V)} x {len(ids)} views in {time.time() - t_base:.0f}s")
    data = AdaptData(
        ids=ids,
        paths={i: cat.image_paths[i] for i in ids},
        meta=meta,
        views=V,
        colour_idx=colour_views(len(V), cfg.gray),
        groups=groups,
        held=held,
        heads=heads,
        labels=labels,
        colour=colour,
        base_views=base_views,
        pairs=pairs,
    )
    return cfg, trunk, pre, k, data


def _colour_descriptor(ids, image_paths, heads, labels, pre, cfg: AdaptConfig, cb: AdaptCallbacks):
    """The colour heads' second input (`training/colour.py`), for the photos with a colour label: the refit learns
    on the training ones, the evaluation reads the held-out ones (other photos' colour outputs are never used)."""
    from fashionrec.training.colour import COLOUR_FEATURES_DIM, colour_features_of_files

    colour_cols = [h for h in heads if is_colour_column(h)] if cfg.colour_features and cfg.refit_heads else []
    if not colour_cols:
        return None
    t_col = time.time()
    rows = np.flatnonzero(np.any([labels[h] >= 0 for h in colour_cols], 0))
    row_of = {ids[r]: r for r in rows}
    got, f = colour_features_of_files({ids[r]: image_paths[ids[r]] for r in rows}, pre, progress=False)
    cfeat = np.zeros((len(ids), COLOUR_FEATURES_DIM), np.float32)
    cfeat[[row_of[i] for i in got]] = f
    cb.log(f"  colour features of {len(got)} labelled photos in {time.time() - t_col:.0f}s")
    return cfeat


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
