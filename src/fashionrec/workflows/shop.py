"""A shop: from a data folder to fitted recommenders, the way the CLI, the server and the Python API do it.

from fashionrec.workflows.shop import Shop, fit_recommender
shop = Shop.open("path/to/hm")                  # catalog, log, customers, image features (cached)
model = fit_recommender(shop, "hybrid")
model.recommend(customer_id, k=12)

`Shop.open` (also `load_shop`) reads each file of the folder once (articles, the image listing with each photo's
size and modification time, every transactions file, customers) into one `Shop`; every later step (the cache keys,
the colour descriptors, the model's data) takes that object and reads no file again.
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
from fashionrec.data.catalog import Catalog, find_table, load_catalog
from fashionrec.data.interactions import (
    Interactions,
    customer_facts,
    customer_ids,
    load_hm_transactions,
    read_customers,
)
from fashionrec.recommend import recommender_class
from fashionrec.recommend.base import ItemFeatures, RecData

log = logging.getLogger(__name__)
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
    files: dict | None = None  # `shop_files`: (size, mtime) of the tables and of every photo, read at open

    @classmethod
    def open(
        cls,
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
        """Catalog, purchase log, customers and (`with_images`) every photo's image features, each file read once;
        features, their projection and the colour descriptors are cached in the workspace.

        `backbone` "auto": the model `fashionrec adapt` wrote for this data folder when it retrieved better than
        ImageNet (`fashionrec.artifacts.registry`), else the ImageNet default; a name or model folder is used as
        given."""
        from fashionrec.io import default_workspace

        data_dir = Path(data_dir)
        backbone, why = resolve_backbone(backbone, data_dir, workspace or default_workspace())
        if progress and why != "asked for" and backbone != DEFAULT_BACKBONE:
            print(f"backbone: {backbone}: {why}", file=sys.stderr, flush=True)
        catalog = load_catalog(data_dir)
        hm_layout = (data_dir / "images").is_dir() or find_table(data_dir, "articles") is not None
        inter = load_hm_transactions(
            data_dir, on_bad=on_bad, catalog_ids=set(catalog.all_item_ids()) if hm_layout else None
        )
        table = read_customers(data_dir)
        shop = cls(
            data_dir,
            catalog,
            inter,
            customer_ids(table),
            None,
            {},
            0.0,
            backbone_name=backbone,
            input_size=input_size,
            files=shop_files(data_dir, catalog),
        )
        shop._customers = customer_facts(table)
        if with_images:
            shop.add_images(workspace=workspace, progress=progress, dim=dim, inference=inference)
        return shop

    def add_images(self, *, workspace=None, progress: bool = True, dim: int = 256, inference: str = "auto") -> Shop:
        """Every photo's image features (backbone embeddings, cached per file, projected by PCA to `dim`) and colour
        descriptors; what `open(..., with_images=True)` does. The digest of the projected features is noted in the
        workspace (`features_digest`): a later run finds its cached fitted model without embedding again."""
        from fashionrec.io import default_workspace

        if not self.catalog.image_paths:
            return self
        ws = Path(workspace or default_workspace())
        raw, self.failures, self.embed_seconds = embed_catalog(
            self.catalog,
            backbone=self.backbone_name,
            input_size=self.input_size,
            workspace=ws,
            progress=progress,
            inference=inference,
        )
        self.raw_features = raw
        self.projection = fit_projection(raw.vectors, dim, workspace=ws)
        self.image_features = ItemFeatures(raw.ids, self.project(raw.vectors))
        self.colour_features = colour_catalog(self.catalog, workspace=ws, progress=progress, stats=self.files["images"])
        from fashionrec.artifacts.keys import _canonical  # the form `artifact_key` gives an array: the same key
        from fashionrec.io import write_json

        digest = {"features": _canonical(self.image_features.vectors), "unreadable": len(self.failures)}
        try:
            write_json(self._digest_path(ws, inference, dim), digest)
        except OSError as e:  # a read-only workspace: the next run embeds again, nothing else changes
            log.warning("%s: cannot note the image features' key (%s)", ws, e)
        return self

    def _digest_path(self, workspace, inference: str, dim: int) -> Path:
        from fashionrec.artifacts import artifact_key

        key = artifact_key(shop=self.fingerprint(), inference=inference, dim=dim)
        return Path(workspace) / "models" / f"{self.fingerprint()}-features-{key[:12]}.json"

    def features_digest(self, workspace, *, inference: str = "auto", dim: int = 256) -> dict | None:
        """What `add_images` noted for these files, backbone, inference path and dimension: the key of the
        projected image features (as `artifact_key` writes an array) and the count of unreadable photos; None
        when it never ran for them."""
        p = self._digest_path(workspace, inference, dim)
        try:
            return json.loads(p.read_text()) if p.exists() else None
        except (OSError, ValueError):
            return None

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
        files = self.files or shop_files(self.data_dir, self.catalog)
        h = hashlib.sha1()
        for f, size, mtime in files["tables"]:
            h.update(f"{f}|{size}|{mtime}".encode())
        h.update(f"{len(self.catalog.image_paths)}|{self.backbone_name}|{self.input_size}".encode())
        sha = adapted_weights_sha256(self.backbone_name)
        if sha is not None:  # an adapted folder retrained in place is another backbone
            h.update(sha.encode())
        h.update(files["images"].encode())
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
        if "_customers" not in self.__dict__:  # a Shop built by hand, not by `open`
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


PCA_STATE = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_", "singular_values_")


def _with_layout(a: np.ndarray, strides: list[int]) -> np.ndarray:
    """`a` laid out in memory with the given element strides, as the fitted PCA held it: the projection's matrix
    product then runs the same BLAS kernel and gives the same bits."""
    rows, cols = a.shape
    if strides == [cols, 1] or strides == [1, rows]:  # plain C or Fortran order
        return np.ascontiguousarray(a) if strides[1] == 1 else np.asfortranarray(a)
    if strides[0] == 1:  # the first rows of a Fortran-ordered matrix of strides[1] rows
        buf = np.zeros((strides[1], cols), dtype=a.dtype, order="F")
        buf[:rows] = a
        return buf[:rows]
    buf = np.zeros((rows, strides[0]), dtype=a.dtype)  # the first columns of a C-ordered matrix
    buf[:, :cols] = a
    return buf[:, :cols]


def fit_projection(x: np.ndarray, dim: int, workspace=None):
    """PCA to `dim` dimensions: 5x cheaper similarity and serving, nearly the same neighbours. None if x is small.
    With `workspace`, the fitted PCA is cached there under a hash of `x` (its arrays, no pickle): the same vectors
    give the same PCA without refitting (half a minute for 20k x 1280 on 2 cores)."""
    if x.shape[1] <= dim or len(x) <= dim:
        return None
    import hashlib

    import sklearn
    from sklearn.decomposition import PCA

    from fashionrec.artifacts.store import load_artifact, save_artifact

    x = np.ascontiguousarray(x)
    pca = PCA(n_components=dim, random_state=0)
    key = hashlib.sha1(f"pca-v1|{dim}|{x.dtype}|{x.shape}|{sklearn.__version__}".encode() + x.tobytes()).hexdigest()
    path = None if workspace is None else Path(workspace) / "projection" / f"{key[:16]}.npz"
    if path is not None and path.exists():
        try:
            cfg, arrays, _, _ = load_artifact(path, kind="pca")
            for name in PCA_STATE:
                setattr(pca, name, arrays[name])
            pca.components_ = _with_layout(arrays["components_"], cfg.pop("components_layout"))
            for name, v in cfg.items():
                setattr(pca, name, v)
            return pca
        except Exception as e:  # a damaged cache is refitted, never fatal
            log.warning("%s: unreadable projection cache (%s); refitting", path, e)
    pca.fit(x)
    if path is not None:
        scalars = {n: getattr(pca, n) for n in ("n_components_", "n_features_in_", "n_samples_")}
        cfg = {n: int(v) for n, v in scalars.items()} | {"noise_variance_": float(pca.noise_variance_)}
        cfg["components_layout"] = [int(s) // pca.components_.itemsize for s in pca.components_.strides]
        save_artifact(path, cfg, {n: getattr(pca, n) for n in PCA_STATE}, kind="pca")
    return pca


def load_shop(data_dir: str | Path, **kw) -> Shop:
    """`Shop.open`: catalog, purchase log, customers and (`with_images`) every photo's image features."""
    return Shop.open(data_dir, **kw)


def shop_files(data_dir: Path, catalog: Catalog) -> dict:
    """What identifies a shop's files, read once: `tables`, (resolved path, size, mtime_ns) of every transactions,
    articles and customers file; `images`, one line per photo `item|path|size|mtime_ns` (or `missing`) in item
    order, as one string (the model and colour caches key on it)."""
    tables = []
    for stem in ("transactions", "articles", "customers"):
        for f in sorted(data_dir.glob(f"{stem}*")):
            st = f.stat()
            tables.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return {"tables": tables, "images": image_stats(catalog)}


def image_stats(catalog: Catalog) -> str:
    """One line per photo, `item|path|size|mtime_ns` (or `missing`), in item order."""
    lines = []
    for item in sorted(catalog.image_paths):
        p = catalog.image_paths[item]
        try:
            st = p.stat()
            lines.append(f"{item}|{p}|{st.st_size}|{st.st_mtime_ns}\n")
        except OSError:
            lines.append(f"{item}|{p}|missing\n")
    return "".join(lines)


COLOUR_SIZE = 64  # px: the colour descriptor is a histogram; 64 px photos give the same bins at 1/6 of the decoding


def colour_catalog(
    catalog: Catalog, *, workspace=None, progress: bool = True, stats: str | None = None
) -> ItemFeatures:
    """The garment colour descriptor (`training.colour.colour_features`) of every catalog photo, cached in the
    workspace under a key of the photos' paths, sizes and modification times (computed once: about a minute for
    20k photos on 2 cores). Unreadable photos are skipped, as the embedding skips them. `stats`: the photos' lines
    of `shop_files` when already read."""
    import hashlib

    from fashionrec.artifacts.store import load_artifact, save_artifact
    from fashionrec.config import DEFAULT_MEAN, DEFAULT_STD
    from fashionrec.features import Preprocess
    from fashionrec.io import default_workspace
    from fashionrec.training.colour import colour_features_of_files

    h = hashlib.sha1(f"colour-v1|{COLOUR_SIZE}".encode())
    h.update((image_stats(catalog) if stats is None else stats).encode())
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
    """customers.csv facts the recommenders use (index customer id; column age), or None."""
    from fashionrec.errors import DataError

    try:
        return customer_facts(read_customers(data_dir))
    except DataError:  # no customer_id column: no facts
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


def model_cache_path(shop: Shop, model, cache_dir: str | Path, features) -> Path:
    """Where the fitted `model` (built, not fitted) is cached. One key from everything the fitted model depends on:
    the shop's files (log, catalog, customers, every image file: Shop.fingerprint), the image features themselves
    (`features`: the vectors, or their key from `Shop.features_digest`; a new backbone or replaced weights give
    other vectors), every resolved hyperparameter (defaults included), the cache format and the package version
    (artifact_key adds it): a changed default, new weights or an upgrade refit instead of serving a stale model."""
    from fashionrec.artifacts import artifact_key

    resolved = {k: v for k, v in vars(model).items() if not k.startswith("_") and k != "data"}
    key = artifact_key(
        shop=shop.fingerprint(),
        model=model.name,
        settings=json.loads(json.dumps(resolved, default=str)),
        features=features,
        cache_version=MODEL_CACHE_VERSION,
    )
    return Path(cache_dir) / "models" / f"{shop.fingerprint()}-{model.name}-{key[:12]}.npz"


def cached_model(path: Path):
    """The fitted model cached at `path`, or None (absent; a damaged file is logged and refitted, never fatal)."""
    from fashionrec.recommend import load_recommender

    if not path.exists():
        return None
    try:
        return load_recommender(path)
    except Exception as e:
        log.warning("%s: unreadable model cache (%s); refitting", path, e)
        return None


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
    from fashionrec.recommend import create_recommender

    model, cache = create_recommender(name, **params), None
    if cache_dir is not None and events is None and now is None:
        feats = shop.image_features
        cache = model_cache_path(shop, model, cache_dir, None if feats is None else feats.vectors)
        found = cached_model(cache)
        if found is not None:
            return found

    if recommender_class(name).needs_images and shop.image_features is None:
        from fashionrec.errors import FashionrecError

        raise FashionrecError(f"recommender '{name}' needs image features: load_shop(..., with_images=True)")
    model = model.fit(rec_data(shop, events, now))
    if cache is not None:
        model.save(cache)
    return model
