"""The model folder: `save_adapted` (weights.safetensors + fashionrec_model.json + the colour boosters as text) and
`load_adapted`; nothing is pickled, so loading runs no code. `load_heldout`: a folder with the catalog it was trained
on, split as it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.artifacts.keys import file_sha256
from fashionrec.errors import FashionrecError
from fashionrec.training.adapt.config import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE
from fashionrec.training.adapt.model import AdaptedModel


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


@dataclass
class HeldOut:
    """An adapted folder beside the catalog it was trained on: every photo's product and the products it held out."""

    model: AdaptedModel
    catalog: object
    ids: list[str]  # every photo of the catalog, in the catalog's order
    groups: np.ndarray  # the product of each photo
    held: set  # the products the folder held out

    @property
    def is_held(self) -> np.ndarray:
        return np.isin(self.groups, list(self.held))

    def product_level(self, columns) -> dict[str, float]:
        """`product_level_columns` of the training products' photos (as `tag` measures it on the catalog it tags)."""
        from fashionrec.data.products import product_level_columns

        train = ~self.is_held
        ids = [i for i, t in zip(self.ids, train) if t]
        return product_level_columns(ids, self.catalog.metadata, self.groups[train], list(columns))

    def predict_heldout(self, progress: bool = True):
        """Every photo of the held-out products, decoded as the folder preprocesses them, through its heads (no
        embedding). -> (ids, their products, {head: probabilities}, unreadable photos)."""
        from fashionrec.features import decode_images_to_array

        paths = self.catalog.image_paths
        ids, x, failures = decode_images_to_array(
            {i: paths[i] for i, h in zip(self.ids, self.is_held) if h}, self.model.preprocess, progress=progress
        )
        _, probs = self.model.predict_arrays(x, embed=False)
        product = dict(zip(self.ids, self.groups))
        return ids, np.array([product[i] for i in ids]), probs, failures


def load_heldout(model_dir: str | Path, data_dir: str | Path) -> HeldOut:
    """The folder (`load_adapted`) and the catalog at `data_dir`, its photos grouped by product as the folder grouped
    them; what a benchmark scores the folder, or anything compared with it, on. A folder that lists no held-out
    products (trained on every product) is refused by name."""
    from fashionrec.data.products import product_groups
    from fashionrec.training.adapt.labels import catalog_for_training

    model = load_adapted(model_dir)
    held = set(model.config.get("heldout_products") or [])
    if not held:
        raise FashionrecError(f"{model_dir}: the folder lists no held-out products")
    cat = catalog_for_training(data_dir)
    ids = list(cat.image_paths)
    return HeldOut(model, cat, ids, product_groups(ids, cat.metadata, model.config.get("group_column", "auto")), held)


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


def init_model(trunk, data, cfg, log) -> AdaptedModel:
    """The model to train: the trunk + an embedding layer (a random projection of the ImageNet pre-logits) + heads;
    or, with `cfg.init_from`, an earlier folder's weights (a warm restart: its CPU time is not lost), which must have
    the same split, heads, backbone and embedding size, or held-out products would have been trained on."""
    import numpy as np
    import torch

    from fashionrec.backbones.adapted import AdaptedBackbone
    from fashionrec.training.colour import COLOUR_FEATURES_DIM

    bb = AdaptedBackbone(trunk, cfg.embed_dim, weights_id="adapting")
    prev = load_adapted(cfg.init_from) if cfg.init_from else None
    model = AdaptedModel(bb, data.heads, head_taps=prev.head_taps if prev is not None else ())
    model = model.to(memory_format=torch.channels_last)  # 2.2x faster training steps (finetune.py)
    if prev is None:
        return model
    held_now = sorted(np.unique(data.groups[data.held]).tolist())
    if (
        prev.config.get("heldout_products") != held_now
        or prev.classes != data.heads
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
    model.load_state_dict(sd)  # onto the model's device
    log(f"  continuing from {cfg.init_from}")
    return model
