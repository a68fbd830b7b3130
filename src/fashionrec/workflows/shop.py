"""A shop: from a data folder to fitted recommenders, the way the CLI, the server and the Python API do it.

from fashionrec.workflows.shop import load_shop, fit_recommender   # or fashionrec.pipeline (same names)
shop = load_shop("path/to/hm")                  # catalog, log, image features (cached)
model = fit_recommender(shop, "hybrid")
model.recommend(customer_id, k=12)
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.artifacts.registry import AUTO, adapted_weights_sha256, resolve_backbone
from fashionrec.config import DEFAULT_BACKBONE, DEFAULT_INPUT_SIZE, DEFAULT_MODEL
from fashionrec.data.catalog import Catalog, load_catalog
from fashionrec.data.interactions import Interactions, load_customers, load_hm_transactions
from fashionrec.recommend import names, recommender_class
from fashionrec.recommend.base import ItemFeatures, RecData

log = logging.getLogger(__name__)
#: The recommenders that need image features, for callers of this name; the capability is the class attribute
#: `needs_images` (`fashionrec.recommend.names(needs_images=True)`).
IMAGE_MODELS = frozenset(names(needs_images=True))
MODEL_CACHE_VERSION = 4  # bump when a recommender's fitted state changes shape or meaning


@dataclass
class Shop:
    data_dir: Path
    catalog: Catalog
    interactions: Interactions
    customers: list[str]
    image_features: ItemFeatures | None
    failures: dict[str, str]
    embed_seconds: float = 0.0
    raw_features: ItemFeatures | None = None  # backbone output (for tagging), before the PCA projection
    projection: object = None  # fitted PCA: raw backbone vector -> image_features space
    backbone_name: str = DEFAULT_BACKBONE
    input_size: int = DEFAULT_INPUT_SIZE
    colour_features: ItemFeatures | None = None  # garment colour descriptor per photo (training.colour), raw

    def project(self, raw: np.ndarray) -> np.ndarray:
        """Map raw backbone vectors (an upload, a new arrival) into the recommenders' image-feature space."""
        z = np.atleast_2d(raw).astype(np.float32)
        if self.projection is not None:
            z = self.projection.transform(z).astype(np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def fingerprint(self) -> str:
        """Identity of the shop's data (log, catalog, customers, every image file) and features: keys cached models.

        Files are identified by path, size and modification time (a customer added to customers.csv, or a photo
        replaced under the same name, is a new fingerprint). Computed once per Shop: a Shop is a snapshot.
        """
        import hashlib

        memo = self.__dict__.get("_fingerprint")
        if memo is not None:
            return memo
        h = hashlib.sha1()
        tables = [sorted(self.data_dir.glob(f"{stem}*")) for stem in ("transactions", "articles", "customers")]
        for f in [f for group in tables for f in group]:
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(f"{len(self.catalog.image_paths)}|{self.backbone_name}|{self.input_size}".encode())
        sha = adapted_weights_sha256(self.backbone_name)
        if sha is not None:  # an adapted folder retrained in place is another backbone
            h.update(sha.encode())
        for item in sorted(self.catalog.image_paths):
            p = self.catalog.image_paths[item]
            try:
                st = p.stat()
                h.update(f"{item}|{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{item}|{p}|missing\n".encode())
        self.__dict__["_fingerprint"] = memo = h.hexdigest()[:12]
        return memo

    def predicted_attributes(self) -> pd.DataFrame | None:
        """Tags predicted from every photo (cross-fitted on the catalog rows; seconds, computed once per shop)."""
        if (
            getattr(self, "_predicted", None) is None
            and self.image_features is not None
            and not self.catalog.metadata.empty
        ):
            from fashionrec.recommend.attributes import predict_attributes

            self._predicted = predict_attributes(
                self.image_features.ids, self.image_features.vectors, self.catalog.metadata
            )
        return getattr(self, "_predicted", None)

    def customer_table(self) -> pd.DataFrame | None:
        """customers.csv facts the recommenders use (index customer id; column age), or None."""
        if getattr(self, "_customers", None) is None:
            self._customers = load_customer_table(self.data_dir)
        return self._customers

    @property
    def candidates(self) -> list[str]:
        """Every item that has an image or a catalog row (items bought but with neither are not recommendable)."""
        return self.catalog.all_item_ids()


def embed_catalog(
    catalog: Catalog,
    *,
    backbone: str = DEFAULT_BACKBONE,
    input_size: int = DEFAULT_INPUT_SIZE,
    workspace=None,
    progress: bool = True,
    fast: bool = True,
    inference: str = "auto",
) -> tuple[ItemFeatures, dict[str, str], float]:
    """Raw backbone embeddings of every catalog image, cached per file in the workspace.

    `inference`: 'auto' (a short probe on this machine picks the fastest path whose features match eager fp32; the
    choice is cached in the workspace) or an explicit path name (see `InferencePath.parse`). `fast=False` = eager fp32."""
    import time

    from fashionrec.backbones import create_backbone
    from fashionrec.features import FeatureCache, InferencePath, embed_image_files

    t0 = time.time()
    bb = create_backbone(backbone, input_size=input_size)
    path = InferencePath.parse(inference) if fast else InferencePath()
    res = embed_image_files(
        bb, catalog.image_paths, cache=FeatureCache(workspace), progress=progress, path=path, desc="embed catalog"
    )
    return ItemFeatures(res.ids, res.features), res.failures, time.time() - t0


def fit_projection(x: np.ndarray, dim: int):
    """PCA to `dim` dimensions: 5x cheaper similarity and serving, nearly the same neighbours. None if x is small."""
    if x.shape[1] <= dim or len(x) <= dim:
        return None
    from sklearn.decomposition import PCA

    return PCA(n_components=dim, random_state=0).fit(x)


def load_shop(
    data_dir: str | Path,
    *,
    with_images: bool = True,
    backbone: str = AUTO,
    input_size: int = DEFAULT_INPUT_SIZE,
    workspace=None,
    progress: bool = True,
    on_bad: str = "skip",
    dim: int = 256,
    inference: str = "auto",
) -> Shop:
    """Catalog, purchase log, customers and (`with_images`) every photo's image features, cached in the workspace.

    `backbone` "auto": the model `fashionrec adapt` wrote for this data folder when it retrieved better than ImageNet
    (`fashionrec.artifacts.registry`), else the ImageNet default; a name or model folder is used as given."""
    from fashionrec.io import default_workspace

    data_dir = Path(data_dir)
    backbone, why = resolve_backbone(backbone, data_dir, workspace or default_workspace())
    if progress and why != "asked for" and backbone != DEFAULT_BACKBONE:
        print(f"backbone: {backbone}: {why}", file=sys.stderr, flush=True)
    catalog = load_catalog(data_dir)
    inter = load_hm_transactions(data_dir, on_bad=on_bad)
    shop = Shop(
        data_dir, catalog, inter, load_customers(data_dir), None, {}, 0.0, backbone_name=backbone, input_size=input_size
    )
    if with_images and catalog.image_paths:
        raw, shop.failures, shop.embed_seconds = embed_catalog(
            catalog,
            backbone=backbone,
            input_size=input_size,
            workspace=workspace,
            progress=progress,
            inference=inference,
        )
        shop.raw_features = raw
        shop.projection = fit_projection(raw.vectors, dim)
        shop.image_features = ItemFeatures(raw.ids, shop.project(raw.vectors))
        shop.colour_features = colour_catalog(catalog, workspace=workspace, progress=progress)
    return shop


COLOUR_SIZE = 64  # px: the colour descriptor is a histogram; 64 px photos give the same bins at 1/6 of the decoding


def colour_catalog(catalog: Catalog, *, workspace=None, progress: bool = True) -> ItemFeatures:
    """The garment colour descriptor (`training.colour.colour_features`) of every catalog photo, cached in the
    workspace under a key of the photos' paths, sizes and modification times (computed once: about a minute for
    20k photos on 2 cores). Unreadable photos are skipped, as the embedding skips them."""
    import hashlib

    from fashionrec.artifacts.store import load_artifact, save_artifact
    from fashionrec.config import DEFAULT_MEAN, DEFAULT_STD
    from fashionrec.features import Preprocess
    from fashionrec.io import default_workspace
    from fashionrec.training.colour import colour_features_of_files

    h = hashlib.sha1(f"colour-v1|{COLOUR_SIZE}".encode())
    for item in sorted(catalog.image_paths):
        p = catalog.image_paths[item]
        try:
            st = p.stat()
            h.update(f"{item}|{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{item}|{p}|missing\n".encode())
    path = Path(workspace or default_workspace()) / "colour" / f"{h.hexdigest()[:16]}.npz"
    if path.exists():
        try:
            _, arrays, _, _ = load_artifact(path, kind="colour-features")
            return ItemFeatures([str(i) for i in arrays["ids"]], arrays["vectors"])
        except Exception as e:  # a damaged cache is recomputed, never fatal
            log.warning("%s: unreadable colour cache (%s); recomputing", path, e)
    pre = Preprocess(input_size=COLOUR_SIZE, mean=DEFAULT_MEAN, std=DEFAULT_STD)
    ids, feats = colour_features_of_files(catalog.image_paths, pre, progress=progress)
    save_artifact(path, {"size": COLOUR_SIZE}, {"ids": np.array(ids), "vectors": feats}, kind="colour-features")
    return ItemFeatures(ids, feats)


def load_customer_table(data_dir: str | Path) -> pd.DataFrame | None:
    from fashionrec.data.catalog import read_table

    data_dir = Path(data_dir)
    for name in ("customers.csv", "customers.parquet"):
        if (data_dir / name).exists():
            df = read_table(data_dir / name, dtype={"customer_id": str})
            if "customer_id" not in df.columns:
                return None
            df = df.dropna(subset=["customer_id"]).drop_duplicates("customer_id").set_index("customer_id")
            out = pd.DataFrame(index=df.index)
            out["age"] = pd.to_numeric(df["age"], errors="coerce") if "age" in df.columns else np.nan
            return out
    return None


def rec_data(shop: Shop, events: pd.DataFrame | None = None, now=None) -> RecData:
    """The view of the shop a model is fitted on. Leak-free by construction: catalog rows are handed over only for
    items bought in `events` (the model's training log); every other item is described by tags predicted from its
    photo, exactly like a brand-new arrival. (In the H&M sample, "no row and never bought" marks items bought later.)"""
    ev = shop.interactions.events if events is None else events
    meta = shop.catalog.metadata
    if not meta.empty:
        meta = meta[meta.index.isin(set(ev["item"].unique()))]
    return RecData(
        ev,
        shop.candidates,
        image_features=shop.image_features,
        metadata=meta,
        now=now,
        predicted=shop.predicted_attributes(),
        users=shop.customer_table(),
        colour_features=shop.colour_features,
    )


def fit_recommender(
    shop: Shop,
    name: str = DEFAULT_MODEL,
    events: pd.DataFrame | None = None,
    now=None,
    cache_dir: str | Path | None = None,
    **params,
):
    """Fit `name` on the shop's log (or `events`). With `cache_dir`, a model fitted on the whole log with the same
    data and parameters is loaded instead of refitted (written atomically after fitting)."""
    from fashionrec.recommend import create_recommender, load_recommender

    cache = None
    if cache_dir is not None and events is None and now is None:
        from fashionrec.artifacts import artifact_key
        from fashionrec.recommend import create_recommender as _create

        # One key from everything the fitted model depends on: the shop's files (log, catalog, customers, every
        # image file: Shop.fingerprint), the image features themselves (a new backbone or replaced weights give other
        # vectors), every resolved hyperparameter (defaults included), the cache format and the package version
        # (artifact_key adds it): a changed default, new weights or an upgrade refit instead of serving a stale model.
        resolved = {k: v for k, v in vars(_create(name, **params)).items() if not k.startswith("_") and k != "data"}
        feats = shop.image_features
        key = artifact_key(
            shop=shop.fingerprint(),
            model=name,
            settings=json.loads(json.dumps(resolved, default=str)),
            features=None if feats is None else feats.vectors,
            cache_version=MODEL_CACHE_VERSION,
        )
        cache = Path(cache_dir) / "models" / f"{shop.fingerprint()}-{name}-{key[:12]}.npz"
        if cache.exists():
            try:
                return load_recommender(cache)
            except Exception as e:  # a damaged cache is refitted, never fatal
                log.warning("%s: unreadable model cache (%s); refitting", cache, e)

    if recommender_class(name).needs_images and shop.image_features is None:
        from fashionrec.errors import FashionrecError

        raise FashionrecError(f"recommender '{name}' needs image features: load_shop(..., with_images=True)")
    model = create_recommender(name, **params).fit(rec_data(shop, events, now))
    if cache is not None:
        model.save(cache)
    return model
