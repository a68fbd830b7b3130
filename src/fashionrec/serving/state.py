"""What the server holds, how it is built once and loaded fast, and how writes swap it.

Artifacts (under <workspace>/serving/<data fingerprint>/, all data, no pickle):
- `tables/`: a folder of `.npy` arrays + `config.json` (serving.store; memory-mapped by multi-worker servers):
  per model the precomputed top-k of every known customer (users sorted, CSR offsets into items/scores/because),
  the taggers for uploads as coefficients (StandardScaler + logistic regression, applied in numpy), the PCA that
  maps raw backbone vectors to the recommenders' space, and the format version;
- `models/<name>.npz`: the fitted recommenders, through `Recommender.save`/`load_recommender` (fashionrec.artifacts);
- `index.npz`: the vector index over catalog photos (`VectorIndex.save`/`load_index`).
A warm start loads these (never fits: no load_shop, no LogisticRegression, no precompute, no index build) and checks
them (`check_artifacts`: shapes, dtypes, index ranges, agreement between files); a missing, damaged or mismatched
artifact, or one of another format version, is rebuilt, with a progress bar and a message naming the file, from the
data folder. New arrivals live in the workspace's arrivals folder (serving.arrivals).

Concurrency: `ServingState.snapshot` is one reference to an immutable `Snapshot` (models, index, arrivals, removed
ids). A request reads `state.snapshot` once and uses only that object, so it never sees one model with the new
arrival and another without it, nor arrays of different lengths. Writers (POST/DELETE /items) take `state.lock`,
build the next snapshot beside the current one (copy-on-write: `_cow_copy` copies objects and containers, shares the
arrays, which `add_items` replaces instead of writing into) and swap the reference. The catalog index is never
written: arrivals live in a small exact index rebuilt per write and searched beside it (`LayeredIndex`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.artifacts import ArtifactFormatError
from fashionrec.errors import FashionrecError
from fashionrec.io import default_workspace
from fashionrec.serving.arrivals import REGISTRY_FORMAT, UNCOMMITTED, ArrivalStore, fault_point, shop_identity
from fashionrec.serving.errors import Conflict, LimitReached, NotFound, StorageError, StorageFull, WritesRefused
from fashionrec.serving.store import load_arrays, save_arrays

log = logging.getLogger(__name__)
TAG_COLUMNS = ("product_group_name", "product_type_name", "colour_group_name")
LIGHT_MODELS = tuple(__import__("fashionrec.recommend", fromlist=["names"]).names(light=True))  # fit at start
TABLES_KIND = "serving-tables"
TABLES_VERSION = 3  # bump when the layout of tables/ changes: older folders are rebuilt, never misread
ARRIVALS_KIND = "serving-arrival-vectors"

# Kept for callers of the names before typed errors (fashionrec < issue 10): same classes.
ArrivalConflict = Conflict
ArrivalLimit = LimitReached


# ------------------------------------------------------------------------------------------- small parts as data
@dataclass(frozen=True)
class Tagger:
    """StandardScaler + multinomial logistic regression, as coefficients (fitted once, applied in numpy)."""

    column: str
    classes: np.ndarray  # (C,) str
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (C, D), or (1, D) for two classes
    intercept: np.ndarray  # (C,) or (1,)

    @classmethod
    def from_pipeline(cls, column: str, pipe) -> Tagger:
        scaler, lr = pipe[0], pipe[-1]
        return cls(
            column,
            np.asarray(lr.classes_).astype(str),
            scaler.mean_.astype(np.float64),
            scaler.scale_.astype(np.float64),
            lr.coef_.astype(np.float64),
            lr.intercept_.astype(np.float64),
        )

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(raw).astype(np.float64) - self.mean) / self.scale
        logits = z @ np.asarray(self.coef).T + self.intercept
        if logits.shape[1] == 1:  # sklearn's binary case: one logit for the second class
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, raw: np.ndarray, top: int = 3) -> list[dict]:
        p = self.probabilities(raw)[0]
        order = np.argsort(-p, kind="stable")[:top]
        return [{"label": str(self.classes[j]), "probability": round(float(p[j]), 4)} for j in order]


@dataclass(frozen=True)
class Projection:
    """Raw backbone vector -> the recommenders' image-feature space (the shop's PCA, or identity), L2-normalised."""

    mean: np.ndarray | None = None
    components: np.ndarray | None = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(raw).astype(np.float32)
        if self.components is not None:
            z = ((z - self.mean) @ np.asarray(self.components).T).astype(np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


class Precomputed:
    """Top-k of every known customer for one model, as flat arrays (memory-mappable; no per-customer objects)."""

    def __init__(self, users, offsets, items, scores, because_offsets, because_items, item_ids):
        self.users, self.offsets, self.items, self.scores = users, offsets, items, scores
        self.because_offsets, self.because_items, self.item_ids = because_offsets, because_items, item_ids

    @classmethod
    def build(cls, model, users: list[str], k: int, progress: bool = False) -> Precomputed:
        from tqdm.auto import tqdm

        item_ids = list(model.data.item_ids)
        pos = {i: j for j, i in enumerate(item_ids)}
        users = sorted(users, key=lambda u: u.encode())  # the order of the UTF-8 bytes searched at request time
        offsets, items, scores, b_off, b_items = [0], [], [], [0], []
        for u in tqdm(users, desc=f"precompute {model.name}", unit="customer", disable=not progress):
            for r in model.recommend(u, k):
                items.append(pos[r.item])
                scores.append(r.score)
                b_items.extend(pos[b] for b in r.because)
                b_off.append(len(b_items))
            offsets.append(len(items))
        return cls(
            _utf8(users),
            np.array(offsets, np.int64),
            np.array(items, np.int32),
            np.array(scores, np.float64),
            np.array(b_off, np.int64),
            np.array(b_items, np.int32),
            _utf8(item_ids),
        )

    # Ids as UTF-8 bytes ('S'): a fixed-width unicode array takes 4 bytes per character of the longest id (H&M's
    # customer ids are 64 characters: 350 MB at 1.37M customers, per model); the customers array is shared.
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            "users" if k == "users" else f"{prefix}.{k}": getattr(self, k)
            for k in ("users", "offsets", "items", "scores", "because_offsets", "because_items", "item_ids")
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> Precomputed:
        return cls(
            *(
                arrays["users" if k == "users" else f"{prefix}.{k}"]
                for k in ("users", "offsets", "items", "scores", "because_offsets", "because_items", "item_ids")
            )
        )

    def __len__(self) -> int:
        return len(self.users)

    def _row(self, user: str) -> int:
        key = user.encode("utf-8", "surrogatepass")
        i = int(np.searchsorted(self.users, key))
        return i if i < len(self.users) and self.users[i] == key else -1

    def __contains__(self, user: str) -> bool:
        return self._row(user) >= 0

    def get(self, user: str, k: int) -> list[tuple] | None:
        """[(item, score, because), ...] (at most k), or None for an unknown customer."""
        r = self._row(user)
        if r < 0:
            return None
        lo, hi = int(self.offsets[r]), int(self.offsets[r + 1])
        hi = min(hi, lo + k)
        ids = self.item_ids
        items = self.items[lo:hi].tolist()
        scores = self.scores[lo:hi].tolist()
        b_off = self.because_offsets[lo : hi + 1].tolist()
        b_items = self.because_items[b_off[0] : b_off[-1]].tolist()
        base = b_off[0]
        return [
            (ids[i].decode(), s, [ids[b].decode() for b in b_items[b_off[n] - base : b_off[n + 1] - base]])
            for n, (i, s) in enumerate(zip(items, scores))
        ]


class Neighbours:
    """The k nearest catalog photos of every catalog photo, as the catalog index answers them (one search per item
    at build time): GET /items/{id}/similar without a category is then a lookup. Rows sorted by id bytes."""

    def __init__(self, ids, rows, scores, row_ids):
        self.ids, self.rows, self.scores, self.row_ids = ids, rows, scores, row_ids

    @classmethod
    def build(cls, index, ids: list[str], k: int, progress: bool = False) -> Neighbours:
        from tqdm.auto import tqdm

        order = sorted(ids, key=lambda i: i.encode())
        pos = {i: j for j, i in enumerate(order)}
        rows = np.full((len(order), k), -1, dtype=np.int32)
        scores = np.zeros((len(order), k), dtype=np.float32)
        for j, item in enumerate(tqdm(order, desc="nearest photos", unit="item", disable=not progress)):
            found, sc = index.search(index.vector(item)[None], k, exclude=[item])
            hits = [(pos[i], s) for i, s in zip(found[0], sc[0]) if i]
            rows[j, : len(hits)] = [h[0] for h in hits]
            scores[j, : len(hits)] = [h[1] for h in hits]
        return cls(_utf8(order), rows, scores, _utf8(order))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"nb.ids": self.ids, "nb.rows": self.rows, "nb.scores": self.scores}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Neighbours | None:
        if "nb.ids" not in arrays:
            return None
        return cls(arrays["nb.ids"], arrays["nb.rows"], arrays["nb.scores"], arrays["nb.ids"])

    @property
    def k(self) -> int:
        return self.rows.shape[1]

    def get(self, item: str, k: int) -> list[tuple[str, float]] | None:
        """[(id, score)] of the k nearest (k <= self.k), or None for an item not in the table."""
        key = item.encode("utf-8", "surrogatepass")
        r = int(np.searchsorted(self.ids, key))
        if r >= len(self.ids) or self.ids[r] != key:
            return None
        rows, scores = self.rows[r, :k].tolist(), self.scores[r, :k].tolist()
        return [(self.ids[j].decode(), s) for j, s in zip(rows, scores) if j >= 0]


def _missing(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # arrays and other containers are not "missing"
        return False


def _utf8(ids: list[str]) -> np.ndarray:
    return np.array([i.encode("utf-8", "surrogatepass") for i in ids], dtype=bytes) if ids else np.zeros(0, "S1")


# ------------------------------------------------------------------------------------------- the index
class LayeredIndex:
    """The catalog's index (read-only once built) plus an exact index over the arrivals of one snapshot.

    Searches merge both by score; `removed` ids (deleted arrivals) never come back. Nothing here is written after
    construction, so a reader holding an old snapshot keeps a consistent view while a writer builds the next one."""

    def __init__(self, base, arrivals=None):
        self.base, self.arrivals = base, arrivals

    @property
    def kind(self) -> str:
        return self.base.kind

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.base or (self.arrivals is not None and item_id in self.arrivals)

    def vector(self, item_id: str) -> np.ndarray:
        if self.arrivals is not None and item_id in self.arrivals:
            return self.arrivals.vector(item_id)
        return self.base.vector(item_id)

    def search(self, q: np.ndarray, k: int, category: str | None = None, exclude=()) -> list[tuple[str, float]]:
        found = []
        for idx in (self.base, self.arrivals):
            if idx is None or len(idx) == 0:
                continue
            # Ask each layer for as many as one index holding both would fetch (k + every excluded id): an exact
            # search breaks score ties differently for another k, and answers must not depend on the layering.
            kk = k + sum(1 for e in exclude if e not in idx)
            ids, scores = idx.search(q[None], kk, category=category, exclude=list(exclude))
            found += [(i, float(s)) for i, s in zip(ids[0], scores[0]) if i]
        found.sort(key=lambda t: -t[1])
        return found[:k]


def _arrivals_index(dim: int, arrivals: Mapping[str, dict]):
    if not arrivals:
        return None
    from fashionrec.index import create_index

    idx = create_index("exact", dim=dim)
    ids = list(arrivals)
    idx.add(
        ids,
        np.stack([arrivals[i]["vector"] for i in ids]),
        categories=[arrivals[i]["metadata"].get("product_group_name") for i in ids],
    )
    return idx


# ------------------------------------------------------------------------------------------- snapshots
@dataclass(frozen=True)
class Snapshot:
    """Everything a request reads that writes change. Never modified: writers make a new one."""

    models: Mapping[str, object]
    index: LayeredIndex
    arrivals: Mapping[str, dict]  # id -> {"image", "metadata", "bytes", "vector"}
    removed: frozenset = frozenset()  # arrivals deleted in this run (the models keep a dead column)
    version: int = 0


def _cow_copy(obj, memo: dict | None = None):
    """A copy that a writer may change without touching `obj`: fashionrec objects and their dict/list/set
    attributes are copied (one level of containers), numpy arrays, sparse matrices and frames are shared. Sound
    because `add_items` replaces arrays (np.concatenate/vstack) and never writes into one."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        new = dict(obj)
    elif isinstance(obj, list):
        new = list(obj)
    elif isinstance(obj, set):
        new = set(obj)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("fashionrec."):
        new = copy.copy(obj)
        memo[id(obj)] = new
        for k, v in vars(obj).items():
            setattr(new, k, _cow_copy(v, memo))
        return new
    else:
        return obj
    memo[id(obj)] = new
    return new


# ------------------------------------------------------------------------------------------- the state
@dataclass
class ServingState:
    catalog: object  # fashionrec.data.catalog.Catalog (item metadata, image paths)
    data_root: Path
    workspace: Path
    default_model: str
    precomputed: dict[str, Precomputed]
    taggers: list[Tagger]
    projection: Projection
    snapshot: Snapshot
    backbone_name: str
    input_size: int
    fingerprint: str
    k_precomputed: int = 50
    writes_allowed: bool = True  # False with several workers: a write in one would not reach the others
    neighbours: Neighbours | None = None  # precomputed nearest photos of every catalog item
    started: float = field(default_factory=time.time)
    lock: threading.RLock = field(default_factory=threading.RLock)  # one writer at a time
    persist_lock: threading.Lock = field(default_factory=threading.Lock)  # one arrivals.json writer at a time
    pending: set = field(default_factory=set)  # ids reserved by a POST whose upload is being embedded
    pending_bytes: int = 0
    max_arrivals: int = 10_000
    max_arrival_bytes: int = 512 * 1024 * 1024  # total stored arrival images
    store: ArrivalStore | None = None  # the arrivals folder (serving.arrivals)
    write_refusal: str | None = None  # why writes are refused (read-only workspace, several workers), else None
    leftover_bytes: int = 0  # uncommitted uploads of killed writers: counted by the storage cap
    _backbone: object = None
    _backbone_ready: threading.Event = field(default_factory=threading.Event)
    _backbone_error: BaseException | None = None
    _info: dict = field(default_factory=dict)

    # --------------------------------------------------------- views of the current snapshot (tests, callers)
    @property
    def models(self) -> Mapping[str, object]:
        return self.snapshot.models

    @property
    def index(self) -> LayeredIndex:
        return self.snapshot.index

    @property
    def arrivals(self) -> Mapping[str, dict]:
        return self.snapshot.arrivals

    @property
    def removed(self) -> frozenset:
        return self.snapshot.removed

    # --------------------------------------------------------- the backbone (torch): loaded beside the server
    def start_backbone(self) -> None:
        """Import torch and build the backbone in a thread: seconds that only uploads need, so lookups are
        answered meanwhile. `backbone()` waits for it."""
        if self._backbone is not None or getattr(self, "_backbone_thread", None) is not None:
            return

        def load():
            try:
                from fashionrec.backbones import create_backbone

                self._backbone = create_backbone(self.backbone_name, input_size=self.input_size)
            except BaseException as e:  # reported to every upload instead of killing a thread silently
                self._backbone_error = e
                log.exception("could not load backbone %s", self.backbone_name)
            finally:
                self._backbone_ready.set()

        self._backbone_thread = threading.Thread(target=load, name="load-backbone", daemon=True)
        self._backbone_thread.start()

    def backbone(self):
        self.start_backbone()
        self._backbone_ready.wait()
        if self._backbone_error is not None:
            raise FashionrecError(f"backbone {self.backbone_name} could not be loaded: {self._backbone_error}")
        return self._backbone

    @property
    def backbone_ready(self) -> bool:
        return self._backbone_ready.is_set()

    # --------------------------------------------------------- lookups (each takes the request's snapshot)
    def known_item(self, item: str, snap: Snapshot | None = None) -> bool:
        snap = snap or self.snapshot
        return item in snap.models[self.default_model].data.item_index and item not in snap.removed

    def image_path(self, item: str, snap: Snapshot | None = None) -> Path | None:
        snap = snap or self.snapshot
        if item in snap.removed:
            return None
        if item in snap.arrivals:
            return Path(snap.arrivals[item]["image"])
        return self.catalog.image_paths.get(item)

    def safe_image_path(self, item: str, snap: Snapshot | None = None) -> Path | None:
        """The item's image file resolved (symlinks followed), or None unless it lies inside the data folder
        (catalog photos) or this shop's arrivals folder (uploads): a symlink or a crafted path never leads out."""
        snap = snap or self.snapshot
        p = self.image_path(item, snap)
        if p is None:
            return None
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        root = arrivals_dir(self).resolve() if item in snap.arrivals else self.data_root
        if not real.is_file() or not real.is_relative_to(root):
            return None
        return real

    def item_info(self, item: str, snap: Snapshot | None = None) -> dict:
        """Display fields of an item; catalog items are built once (a pandas row lookup costs milliseconds)."""
        snap = snap or self.snapshot
        if item in snap.arrivals:  # a few fields, and an id can change meaning between snapshots
            return self._describe(item, dict(snap.arrivals[item].get("metadata", {})), snap)
        info = self._info.get(item)
        if info is None:
            row = {
                k: (None if _missing(v) else v)
                for k, v in self.rows().get(item, {}).items()
                if not isinstance(v, (list, dict))
            }
            info = self._info[item] = self._describe(item, row, snap)
        return info

    def rows(self) -> dict:
        """Catalog rows as plain dicts, built once for the whole table (a pandas row lookup per item cost
        milliseconds on the event loop, and a request of 12 unseen items stalled every other client)."""
        rows = self.__dict__.get("_rows")
        if rows is None:
            meta = self.catalog.metadata
            meta = meta[~meta.index.duplicated(keep="first")]
            rows = self.__dict__["_rows"] = meta.to_dict("index") if not meta.empty else {}
        return rows

    def predicted_rows(self, snap: Snapshot) -> dict:
        model = snap.models[self.default_model]
        pred = getattr(model.data, "predicted", None)
        key = id(pred)
        memo = self.__dict__.get("_pred_rows")
        if memo is None or memo[0] != key:
            rows = {} if pred is None else pred[~pred.index.duplicated(keep="first")].to_dict("index")
            memo = self.__dict__["_pred_rows"] = (key, rows)
        return memo[1]

    def _describe(self, item: str, row: dict, snap: Snapshot) -> dict:
        def text(v):  # display fields are strings even where a column was read as numbers
            return None if v is None else str(v)

        meta = {}
        for k, v in row.items():
            v = v.item() if hasattr(v, "item") else v
            if isinstance(v, float) and not np.isfinite(v):
                v = None  # JSON has no NaN/Infinity
            meta[str(k)] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if not row.get("product_group_name"):  # no catalog row: describe the item by the tags predicted from its photo
            tags = self._predicted_tags(item, snap)
            if tags:
                meta["predicted_from_photo"] = tags
                for col in ("product_group_name", "colour_group_name", "product_type_name"):
                    if not row.get(col) and col in tags:
                        row[col] = tags[col]["value"]
        return {
            "id": item,
            "image_url": f"/images/{item}" if self.image_path(item, snap) else None,
            "name": text(row.get("prod_name")),
            "category": text(row.get("product_group_name")),
            "colour": text(row.get("colour_group_name")),
            "type": text(row.get("product_type_name")),
            "metadata": meta,
        }

    def _predicted_tags(self, item: str, snap: Snapshot) -> dict:
        r = self.predicted_rows(snap).get(item)  # tags fitted with the model: no work here
        if r is None:
            return {}
        return {
            c: {"value": str(r[c]), "confidence": round(float(r[f"{c}_confidence"]), 3)}
            for c in r
            if not c.endswith("_confidence") and r[c] != "?"
        }

    def category_of(self, item: str) -> str | None:
        return self.item_info(item)["category"]


# ------------------------------------------------------------------------------------------- build or load
def _light_shop(data_dir: Path, catalog, backbone: str, input_size: int):
    """A Shop with only what `Shop.fingerprint` reads: the one definition of "the same data" keys the artifacts."""
    from fashionrec.pipeline import Shop

    return Shop(data_dir, catalog, None, [], None, {}, backbone_name=backbone, input_size=input_size)


def _train_taggers(shop, progress: bool = False) -> list[Tagger]:
    """Tags for uploads: logistic regression on raw image features of the labelled catalog items (cold start only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from tqdm.auto import tqdm

    if shop.raw_features is None or shop.catalog.metadata.empty:
        return []
    pos = {i: r for r, i in enumerate(shop.raw_features.ids)}
    out = []
    for col in tqdm(TAG_COLUMNS, desc="fit taggers", unit="column", disable=not progress):
        if col not in shop.catalog.metadata.columns:
            continue
        lab = shop.catalog.metadata[col].dropna().astype(str)
        lab = lab[lab.index.isin(pos)]
        counts = lab.value_counts()
        lab = lab[lab.isin(counts[counts >= 5].index)]
        if lab.nunique() < 2:
            continue
        x = shop.raw_features.vectors[[pos[i] for i in lab.index]]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500)).fit(x, lab.to_numpy())
        out.append(Tagger.from_pipeline(col, clf))
    return out


def _model_names(default_model: str) -> list[str]:
    return [default_model] + [m for m in LIGHT_MODELS if m != default_model]


def _build_artifacts(
    art: Path,
    data_dir: Path,
    ws: Path,
    names: list[str],
    *,
    progress: bool,
    index_kind: str,
    k_precomputed: int,
    backbone: str,
    input_size: int,
) -> None:
    """The cold path: load the shop (embeddings from the feature cache), fit what is missing, write everything."""
    from fashionrec.index import create_index
    from fashionrec.pipeline import fit_recommender, load_shop

    t0 = time.time()

    def say(msg):
        log.info(msg)
        if progress:
            print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    say("cold start: loading the shop (catalog, log, image features)")
    # Catalog photos through the same inference path as uploads (embed_pil: eager fp32): an upload of a catalog
    # photo must land on that photo's vector, not 0.999 beside it (a faster path would reorder near ties).
    shop = load_shop(
        data_dir, workspace=ws, progress=progress, backbone=backbone, input_size=input_size, inference="fp32"
    )
    if shop.image_features is None:
        raise FashionrecError(f"{data_dir}: no images found; the server needs product photos")
    users = sorted(set(shop.customers) | set(shop.interactions.events["user"].unique()))
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        say(f"fitting {name} (or loading it from the model cache)")
        m = fit_recommender(shop, name, cache_dir=ws)
        m.save(art / "models" / f"{name}.npz")
        say(f"precomputing top-{k_precomputed} of {len(users):,} customers with {name}")
        arrays.update(Precomputed.build(m, users, k_precomputed, progress).arrays(f"pre.{name}"))
    say("building the vector index over catalog photos")
    feats = shop.image_features
    if index_kind == "auto" and len(feats.ids) >= 10_000:
        # Serving answers many concurrent single queries: HNSW (~0.2 ms) beats exact search (~3 ms at 20k x 256-d)
        # well before the 100k items where the library's offline default switches.
        index_kind = "hnsw"
    index = create_index(index_kind, dim=feats.vectors.shape[1], n_items=len(feats.ids))
    meta = shop.catalog.metadata
    cats = meta["product_group_name"].reindex(feats.ids).tolist() if "product_group_name" in meta.columns else None
    index.add(
        feats.ids, feats.vectors, categories=[None if (c is None or c != c) else c for c in cats] if cats else None
    )
    index.save(art / "index.npz")
    say(f"precomputing the {k_precomputed} nearest photos of every item")
    arrays.update(Neighbours.build(index, feats.ids, k_precomputed, progress).arrays())
    say("fitting the upload taggers (logistic regression on image features)")
    taggers = _train_taggers(shop, progress)
    for t in taggers:
        arrays.update(
            {
                f"tag.{t.column}.{k}": np.asarray(getattr(t, k))
                for k in ("classes", "mean", "scale", "coef", "intercept")
            }
        )
    if shop.projection is not None:
        arrays["proj.mean"] = shop.projection.mean_.astype(np.float32)
        arrays["proj.components"] = shop.projection.components_.astype(np.float32)
    config = {
        "models": names,
        "taggers": [t.column for t in taggers],
        "k_precomputed": k_precomputed,
        "fingerprint": shop.fingerprint(),
        "backbone": backbone,
        "input_size": input_size,
        "dim": int(feats.vectors.shape[1]),
    }
    save_arrays(art / "tables", TABLES_KIND, TABLES_VERSION, arrays, config)  # written last: it marks a complete set
    for old in art.glob("*.pkl"):  # (model, precomputed) pickles of fashionrec before issue 10: never read again
        old.unlink(missing_ok=True)
    say("serving artifacts written")


def _load_artifacts(art: Path, names: list[str], k_precomputed: int, *, mmap: bool):
    """(precomputed, taggers, projection, models, base index, config); ArtifactFormatError when anything is
    missing, of an older format, or built for other settings."""
    from fashionrec.index import load_index
    from fashionrec.recommend import load_recommender

    arrays, cfg = load_arrays(art / "tables", TABLES_KIND, TABLES_VERSION, mmap=mmap)
    missing = [n for n in names if n not in cfg.get("models", [])]
    if missing or cfg.get("k_precomputed") != k_precomputed:
        raise ArtifactFormatError(
            f"{art / 'tables'}: built for models {cfg.get('models')} with top-"
            f"{cfg.get('k_precomputed')}, not {names} with top-{k_precomputed}"
        )
    pre = {n: Precomputed.from_arrays(arrays, f"pre.{n}") for n in names}
    taggers = [
        Tagger(c, *(arrays[f"tag.{c}.{k}"] for k in ("classes", "mean", "scale", "coef", "intercept")))
        for c in cfg.get("taggers", [])
    ]
    proj = Projection(arrays.get("proj.mean"), arrays.get("proj.components"))
    neighbours = Neighbours.from_arrays(arrays)
    models = {}
    for path in [*(art / "models" / f"{n}.npz" for n in names), art / "index.npz"]:
        try:
            obj = load_index(path) if path.name == "index.npz" else load_recommender(path)
        except ArtifactFormatError as e:
            raise ArtifactFormatError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None
        except Exception as e:  # a damaged file, or one of an older fashionrec (pickle, other layout): rebuild
            raise ArtifactFormatError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        if path.name == "index.npz":
            index = obj
        else:
            models[path.stem] = obj
    check_artifacts(art, cfg, pre, taggers, proj, neighbours, models, index)
    return pre, taggers, proj, models, index, cfg, neighbours


def _bad(path: Path, what: str) -> ArtifactFormatError:
    return ArtifactFormatError(f"{path}: {what}; it will be rebuilt")


def _check_array(path: Path, a, ndim: int, kinds: str, length: int | None = None) -> None:
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    if a.ndim != ndim or a.dtype.kind not in kinds:
        raise _bad(path, f"an array of shape {a.shape} and dtype {a.dtype}, expected {ndim}-d of kind '{kinds}'")
    if length is not None and len(a) != length:
        raise _bad(path, f"{len(a):,} rows, expected {length:,}")


def _check_offsets(path: Path, off, rows: int, total: int) -> None:
    _check_array(path, off, 1, "iu", rows + 1)
    if int(off[0]) != 0 or int(off[-1]) != total or (rows and bool((np.diff(off) < 0).any())):
        raise _bad(path, f"offsets are not 0 .. {total:,} in order")


def _check_range(path: Path, a, lo: int, hi: int) -> None:
    if len(a) and (int(a.min()) < lo or int(a.max()) >= hi):
        raise _bad(path, f"values from {int(a.min())} to {int(a.max())}, outside {lo} .. {hi - 1}")


def _check_sorted_ids(path: Path, ids) -> None:
    _check_array(path, ids, 1, "S")
    if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise _bad(path, "ids not in sorted order (lookups would miss)")


def check_artifacts(art: Path, cfg: dict, pre, taggers, proj, neighbours, models, index) -> None:
    """Shapes, dtypes, index ranges and agreement between the loaded artifacts: a damaged or mismatched table is
    an ArtifactFormatError naming its file (rebuilt at start-up), never an IndexError in a request."""
    t = art / "tables"
    dim = int(cfg.get("dim", 0))
    for n, p in pre.items():
        f = lambda k, n=n: t / f"pre.{n}.{k}.npy"  # noqa: E731
        _check_sorted_ids(t / "users.npy", p.users)
        _check_array(f("item_ids"), p.item_ids, 1, "S")
        _check_array(f("items"), p.items, 1, "iu")
        _check_offsets(f("offsets"), p.offsets, len(p.users), len(p.items))
        _check_range(f("items"), p.items, 0, len(p.item_ids))
        _check_array(f("scores"), p.scores, 1, "f", len(p.items))
        _check_array(f("because_items"), p.because_items, 1, "iu")
        _check_offsets(f("because_offsets"), p.because_offsets, len(p.items), len(p.because_items))
        _check_range(f("because_items"), p.because_items, 0, len(p.item_ids))
    ids = list(index.ids)
    try:
        if index.dim != dim or len(index.categories) != len(ids):
            raise ValueError(f"dimension {index.dim} for {len(ids):,} ids, the tables say {dim}")
        if ids:
            v = index.vector(ids[-1])
            found, _ = index.search(np.asarray(v, np.float32)[None], min(3, len(ids)))
            if v.shape != (dim,) or any(i and i not in index for i in found[0]):
                raise ValueError("a search returned rows it does not hold")
    except Exception as e:
        raise _bad(art / "index.npz", f"inconsistent index ({type(e).__name__}: {e})") from None
    if neighbours is not None:
        _check_sorted_ids(t / "nb.ids.npy", neighbours.ids)
        _check_array(t / "nb.rows.npy", neighbours.rows, 2, "iu", len(neighbours.ids))
        _check_array(t / "nb.scores.npy", neighbours.scores, 2, "f", len(neighbours.ids))
        if neighbours.scores.shape != neighbours.rows.shape or neighbours.rows.shape[1] < 1:
            raise _bad(t / "nb.scores.npy", f"shape {neighbours.scores.shape}, rows are {neighbours.rows.shape}")
        _check_range(t / "nb.rows.npy", neighbours.rows.ravel(), -1, len(neighbours.ids))
        if len(neighbours.ids) != len(index) or any(
            i.decode("utf-8", "surrogatepass") not in index for i in neighbours.ids.tolist()
        ):
            raise _bad(t / "nb.ids.npy", f"{len(neighbours.ids):,} items, not the {len(index):,} of the index")
    raw_dim = dim
    if proj.components is not None or proj.mean is not None:
        _check_array(t / "proj.components.npy", proj.components, 2, "f", dim)
        raw_dim = proj.components.shape[1]
        _check_array(t / "proj.mean.npy", proj.mean, 1, "f", raw_dim)
    for tg in taggers:
        f = lambda k, c=tg.column: t / f"tag.{c}.{k}.npy"  # noqa: E731
        _check_array(f("classes"), tg.classes, 1, "US")
        _check_array(f("mean"), tg.mean, 1, "f", raw_dim)
        _check_array(f("scale"), tg.scale, 1, "f", raw_dim)
        rows = 1 if len(tg.classes) == 2 else len(tg.classes)
        _check_array(f("coef"), tg.coef, 2, "f", rows)
        _check_array(f("intercept"), tg.intercept, 1, "f", rows)
        if tg.coef.shape[1] != raw_dim or not (np.asarray(tg.scale) > 0).all():
            raise _bad(f("coef"), f"shape {tg.coef.shape} for {raw_dim}-d features, or a scale <= 0")
    for n, m in models.items():
        try:
            data = m.data
            users = [u for u in data.user_ids[:1]]
            if users:
                m.recommend(users[0], 3)
            if ids and ids[0] in data.item_index:
                m.recommend_from_history([ids[0]], 3)
        except Exception as e:
            raise _bad(art / "models" / f"{n}.npz", f"does not answer ({type(e).__name__}: {e})") from None


def _locate(data_dir, workspace, backbone, input_size):
    """(data_dir, workspace, catalog, fingerprint, artifacts folder, backbone, input size) of a data folder."""
    from fashionrec.artifacts.registry import resolve_backbone
    from fashionrec.config import DEFAULT_INPUT_SIZE
    from fashionrec.data.catalog import load_catalog

    data_dir = Path(data_dir)
    input_size = input_size or DEFAULT_INPUT_SIZE
    ws = Path(workspace) if workspace else default_workspace()
    backbone, why = resolve_backbone(backbone, data_dir, ws)  # None/auto: the data's adapted model if it is better
    log.info("backbone %s: %s", backbone, why)
    catalog = load_catalog(data_dir)
    if not catalog.image_paths:
        raise FashionrecError(f"{data_dir}: no images found; the server needs product photos")
    fp = _light_shop(data_dir, catalog, backbone, input_size).fingerprint()
    return data_dir, ws, catalog, fp, ws / "serving" / fp, backbone, input_size


def ensure_artifacts(
    data_dir: str | Path,
    *,
    workspace: str | Path | None = None,
    default_model: str = "hybrid",
    progress: bool = True,
    index_kind: str = "auto",
    k_precomputed: int = 50,
    backbone: str | None = None,
    input_size: int | None = None,
    **_ignored,
) -> Path:
    """Build the serving artifacts unless a complete, sound set of this format exists (loaded once, memory-mapped,
    and checked like a worker checks it): what the parent of a multi-worker server does before its workers load
    them, so that no worker finds a damaged file. Returns the artifacts' folder."""
    import gc

    data_dir, ws, _, _, art, backbone, input_size = _locate(data_dir, workspace, backbone, input_size)
    names = _model_names(default_model)
    try:
        loaded = _load_artifacts(art, names, k_precomputed, mmap=True)
        del loaded
        gc.collect()
    except ArtifactFormatError as e:
        _rebuild(art, data_dir, ws, names, e, progress, index_kind, k_precomputed, backbone, input_size)
    return art


def _rebuild(art, data_dir, ws, names, why, progress, index_kind, k_precomputed, backbone, input_size) -> None:
    """Build the artifacts (missing, incomplete or of an older format: `why`), saying so when some existed."""
    if (art / "tables").exists():
        log.warning("rebuilding the serving artifacts: %s", why)
        if progress:
            print(f"rebuilding the serving artifacts: {why}", flush=True)
    _build_artifacts(
        art,
        data_dir,
        ws,
        names,
        progress=progress,
        index_kind=index_kind,
        k_precomputed=k_precomputed,
        backbone=backbone,
        input_size=input_size,
    )


def build_state(
    data_dir: str | Path,
    *,
    workspace: str | Path | None = None,
    default_model: str = "hybrid",
    progress: bool = True,
    index_kind: str = "auto",
    k_precomputed: int = 50,
    max_arrivals: int | None = None,
    max_arrival_bytes: int | None = None,
    mmap: bool = False,
    build: bool = True,
    writes_allowed: bool = True,
    backbone: str | None = None,
    input_size: int | None = None,
) -> ServingState:
    """Load the serving artifacts for `data_dir` from the workspace (seconds), building any that are missing or of
    an older format first (minutes, with progress). `build=False` (a worker of a multi-worker server) refuses to
    build; `mmap=True` maps the tables read-only so that workers share them."""
    data_dir, ws, catalog, fp, art, backbone, input_size = _locate(data_dir, workspace, backbone, input_size)
    names = _model_names(default_model)
    try:
        pre, taggers, proj, models, index, cfg, nb = _load_artifacts(art, names, k_precomputed, mmap=mmap)
    except ArtifactFormatError as e:
        if not build:
            raise
        _rebuild(art, data_dir, ws, names, e, progress, index_kind, k_precomputed, backbone, input_size)
        pre, taggers, proj, models, index, cfg, nb = _load_artifacts(art, names, k_precomputed, mmap=mmap)
    snap = Snapshot(models, LayeredIndex(index), {})
    state = ServingState(
        catalog,
        data_dir.resolve(),
        ws,
        default_model,
        pre,
        taggers,
        proj,
        snap,
        backbone,
        input_size,
        fp,
        k_precomputed=k_precomputed,
        writes_allowed=writes_allowed,
        neighbours=nb,
    )
    if max_arrivals is not None:
        state.max_arrivals = max_arrivals
    if max_arrival_bytes is not None:
        state.max_arrival_bytes = max_arrival_bytes
    customers = np.ascontiguousarray(pre[names[0]].users).tobytes()
    state.store = ArrivalStore(ws, shop_identity(_catalog_ids(catalog), [customers]), state.data_root)
    if not writes_allowed:
        state.write_refusal = (
            "writes are refused by a server with several workers (each worker holds its own copy "
            "of the models; a new arrival would reach only one): run it with one worker to add items"
        )
    else:
        state.write_refusal = state.store.writable()
        if state.write_refusal:
            state.writes_allowed = False
            log.warning("new arrivals are refused: %s", state.write_refusal)
    replay_arrivals(state, dim=int(cfg.get("dim", 0)))
    state.rows()
    state.predicted_rows(state.snapshot)
    return state


# ------------------------------------------------------------------------------------------- new arrivals
def _catalog_ids(catalog) -> set[str]:
    ids = set(catalog.image_paths)
    meta = getattr(catalog, "metadata", None)
    if meta is not None and len(meta.index):
        ids.update(str(i) for i in meta.index)
    return ids


def arrivals_dir(state: ServingState) -> Path:
    """The shop's arrivals folder: keyed by the shop's content (catalog and customer ids), not by the data folder's
    path, so a moved or copied data folder keeps the items added through the API (serving.arrivals)."""
    if state.store is None:  # a state assembled by hand (tests): nothing persisted
        return state.workspace / "arrivals" / "unsaved"
    return state.store.folder


def embed_image(state: ServingState, img) -> tuple[np.ndarray, np.ndarray]:
    """(raw backbone vector, projected vector) for a decoded PIL image."""
    from fashionrec.features import embed_pil

    raw = embed_pil(state.backbone(), [img])[0]
    return raw, state.projection(raw)[0]


def embed_upload(state: ServingState, data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw backbone vector, projected vector) for uploaded image bytes; raises ImageDecodeError on bad input."""
    from fashionrec.data.images import decode_image

    return embed_image(state, decode_image(data, source=source))


def reserve_arrival(state: ServingState, item_id: str, n_bytes: int) -> None:
    """Claim `item_id` for one POST before any slow work: a second POST of the same id gets 409 at once, so exactly
    one of N concurrent duplicates is added (first come, first served; nothing is ever replaced)."""
    if state.write_refusal:
        raise WritesRefused(state.write_refusal)
    with state.lock:
        snap = state.snapshot
        if item_id in snap.removed:
            raise Conflict(f"item '{item_id}' was deleted in this run; its id can be reused after a restart")
        if state.known_item(item_id, snap) or item_id in state.pending:
            raise Conflict(f"item '{item_id}' already exists")
        if state.store is not None and state.store.image_path(item_id).exists():
            raise Conflict(f"item '{item_id}' already exists (added by another server sharing this workspace)")
        if len(snap.arrivals) + len(state.pending) >= state.max_arrivals:
            raise LimitReached(f"the server holds {state.max_arrivals:,} new arrivals, its limit; delete some first")
        used = sum(int(a.get("bytes", 0)) for a in snap.arrivals.values()) + state.pending_bytes
        used += state.leftover_bytes
        if used + n_bytes > state.max_arrival_bytes:
            raise StorageFull(
                f"arrival storage would exceed its {state.max_arrival_bytes:,}-byte cap "
                f"({used:,} bytes used, {state.leftover_bytes:,} of them by uncommitted uploads in "
                f"{arrivals_dir(state) / UNCOMMITTED}); delete some arrivals first"
            )
        state.pending.add(item_id)
        state.pending_bytes += n_bytes


def release_arrival(state: ServingState, item_id: str, n_bytes: int) -> None:
    with state.lock:
        if item_id in state.pending:
            state.pending.discard(item_id)
            state.pending_bytes -= n_bytes


def create_arrival(state: ServingState, item_id: str, data: bytes, metadata: dict, *, image=None) -> dict:
    """The POST /items path: reserve the id, embed (slow, outside the lock), store, commit, release."""
    reserve_arrival(state, item_id, len(data))
    try:
        return add_arrival(state, item_id, data, metadata, image=image)
    finally:
        release_arrival(state, item_id, len(data))


def _commit_arrivals(state: ServingState, new: dict[str, dict]) -> None:
    """Swap in a snapshot with `new` arrivals (id -> record with "vector"): every model and the index at once.
    Caller holds state.lock."""
    snap = state.snapshot
    memo: dict = {}
    models = {n: _cow_copy(m, memo) for n, m in snap.models.items()}
    ids = list(new)
    vecs = np.stack([new[i]["vector"] for i in ids]).astype(np.float32)
    metas = [new[i]["metadata"] for i in ids]
    meta_df = pd.DataFrame(metas, index=pd.Index(ids, name="article_id")) if any(metas) else None
    for m in models.values():
        m.add_items(ids, vectors=vecs, metadata=meta_df)
    arrivals = {**snap.arrivals, **new}
    index = LayeredIndex(snap.index.base, _arrivals_index(vecs.shape[1], arrivals))
    state.snapshot = Snapshot(models, index, arrivals, snap.removed, snap.version + 1)


def add_arrival(
    state: ServingState, item_id: str, data: bytes, metadata: dict, *, persist: bool = True, image=None
) -> dict:
    """Make a new item recommendable at once: every model, the index; persisted for restarts.
    `image`: `data` already decoded (the server decodes an upload once, with its limits).

    Write order (the folder locked against other processes): metadata file, image file, registry naming the id (the
    commit point), vectors, then the in-memory snapshot. A process killed at any step leaves either an arrival the
    next start replays, or files the next start sweeps into `uncommitted/`."""
    raw, vec = (
        embed_image(state, image) if image is not None else embed_upload(state, data, source=f"upload for {item_id}")
    )
    if not persist:
        rec = {"image": "", "metadata": dict(metadata), "bytes": len(data), "vector": vec}
        with state.lock:
            _commit_arrivals(state, {item_id: rec})
            snap = state.snapshot
        return state.item_info(item_id, snap)
    store = state.store
    rec = {"image": str(store.image_path(item_id)), "metadata": dict(metadata), "bytes": len(data), "vector": vec}
    with state.persist_lock, store.locked():
        try:
            store.write_files(item_id, data, rec["metadata"])
            snap = state.snapshot
            _persist(state, {**snap.arrivals, item_id: rec}, snap.removed)
        except OSError as e:
            store.remove_files(item_id)
            raise StorageError(f"could not store new arrival '{item_id}' in {store.folder}: {e}") from None
        fault_point("commit")
        with state.lock:
            _commit_arrivals(state, {item_id: rec})
            snap = state.snapshot
    return state.item_info(item_id, snap)


def _persist(state: ServingState, arrivals: Mapping[str, dict], removed) -> None:
    """Write the registry and vectors naming `arrivals`, plus arrivals another process sharing this workspace
    committed (in the registry on disk, not in this process's snapshot, not deleted here). Caller holds
    `state.persist_lock` and `state.store.locked()`."""
    store = state.store
    _, disk = store.read_registry()
    rows = {i: {"metadata": r.get("metadata") or {}, "bytes": int(r.get("bytes", 0))} for i, r in arrivals.items()}
    others = [i for i in disk if i not in rows and i not in removed and store.image_path(i).is_file()]
    rows.update({i: disk[i] for i in others})
    store.write_registry(rows)
    vectors = {i: r["vector"] for i, r in arrivals.items() if r.get("vector") is not None}
    if others:
        saved = _saved_vectors(state)
        vectors.update({i: saved[i] for i in others if i in saved})
    _save_vectors(state, vectors)
    fault_point("vectors")


def _model_key(state: ServingState) -> str:
    """What the arrivals' vectors depend on: the backbone, its input size and the projection (not the data
    folder's path or file times, which key the artifacts)."""
    h = hashlib.sha1(f"{state.backbone_name}|{state.input_size}".encode())
    for a in (state.projection.mean, state.projection.components):
        if a is not None:
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _save_vectors(state: ServingState, vectors: Mapping[str, np.ndarray]) -> None:
    ids = list(vectors)
    folder = arrivals_dir(state) / "vectors"
    if not ids:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # derived data: rebuilt from the images
        return
    save_arrays(
        folder,
        ARRIVALS_KIND,
        1,
        {"ids": np.array(ids, dtype=str), "vectors": np.stack([vectors[i] for i in ids]).astype(np.float32)},
        {"fingerprint": state.fingerprint, "model_key": _model_key(state)},
    )


def _saved_vectors(state: ServingState, dim: int = 0) -> dict[str, np.ndarray]:
    """The saved arrival vectors that fit these artifacts ({} when none, damaged or computed for another model:
    the images are embedded again)."""
    folder = arrivals_dir(state) / "vectors"
    try:
        arrays, cfg = load_arrays(folder, ARRIVALS_KIND, 1)
        ids, vecs = arrays["ids"], arrays["vectors"]
        if cfg.get("fingerprint") != state.fingerprint and cfg.get("model_key") != _model_key(state):
            log.info("%s: computed for another model; embedding the arrivals' images again", folder)
            return {}
        if ids.ndim != 1 or vecs.ndim != 2 or len(ids) != len(vecs) or vecs.dtype.kind != "f":
            raise ArtifactFormatError(f"{folder}: {len(ids)} ids for vectors of shape {vecs.shape} ({vecs.dtype})")
        if dim and vecs.shape[1] != dim:
            raise ArtifactFormatError(f"{folder}: vectors of dimension {vecs.shape[1]}, the models use {dim}")
        if not np.isfinite(vecs).all():
            raise ArtifactFormatError(f"{folder}: vectors hold NaN or infinity")
    except ArtifactFormatError as e:
        if folder.exists():
            log.warning("arrival vectors not reused (%s); embedding the images again", e)
        return {}
    except KeyError as e:
        log.warning("arrival vectors not reused (%s: no array %s); embedding the images again", folder, e)
        return {}
    return {str(i): np.asarray(v, np.float32) for i, v in zip(ids.tolist(), vecs)}


def remove_arrival(state: ServingState, item_id: str) -> None:
    """DELETE /items/{id}: an arrival leaves the index, every answer and the registry (its files are deleted).
    The fitted models keep a column for it until a restart, so its id is not reusable before then."""
    if state.write_refusal:
        raise WritesRefused(state.write_refusal)
    with state.persist_lock, state.store.locked():
        snap = state.snapshot
        if item_id not in snap.arrivals:
            if state.known_item(item_id, snap):
                raise Conflict(
                    f"item '{item_id}' is a catalog item; only arrivals added through the API can be deleted"
                )
            raise NotFound(f"unknown item '{item_id}'")
        rec = snap.arrivals[item_id]
        arrivals = {k: v for k, v in snap.arrivals.items() if k != item_id}
        try:
            _persist(state, arrivals, snap.removed | {item_id})
        except OSError as e:
            raise StorageError(f"could not update the arrivals registry in {state.store.folder}: {e}") from None
        with state.lock:
            snap = state.snapshot  # writers are serialised by persist_lock: only readers ran meanwhile
            index = LayeredIndex(snap.index.base, _arrivals_index(len(rec["vector"]), arrivals))
            state.snapshot = replace(
                snap, index=index, arrivals=arrivals, removed=snap.removed | {item_id}, version=snap.version + 1
            )
        state.store.remove_files(item_id)


def replay_arrivals(state: ServingState, dim: int = 0) -> None:
    """Restore the arrivals posted in earlier runs, in one snapshot (see serving.arrivals for the folder): the
    registry read and checked (a damaged one set aside and rebuilt from the files), registries of this shop under
    another key migrated, leftovers of a killed writer swept. Vectors come from the saved vectors when they fit;
    otherwise the images are embedded again (needs the backbone). Never raises for a damaged file."""
    from fashionrec import __version__

    store = state.store
    adopted: list[Path] = []
    with store.locked():
        # a server that cannot write (several workers, read-only workspace) changes nothing on disk: a damaged
        # registry is recovered in memory and left for a writing server to set aside
        header, rows = store.read_registry(set_aside=state.write_refusal is None)
        changed = False
        if header is None and state.write_refusal is None:
            for reg in store.candidates():
                try:
                    got = store.adopt(reg, rows)
                except (OSError, ValueError) as e:
                    log.warning("arrivals of %s not migrated: %s", reg, e)
                    continue
                rows.update(got)
                adopted.append(reg)
                log.warning("migrated %d new arrival(s) from %s into %s", len(got), reg, store.folder)
            changed = bool(adopted)
        elif header.get("recovered"):
            changed = True
        elif header.get("format") != REGISTRY_FORMAT or header.get("fashionrec") != __version__:
            log.info(
                "arrivals registry %s was written by fashionrec %s (format %s): migrated",
                store.registry,
                header.get("fashionrec", "0.1"),
                header.get("format"),
            )
            changed = True
        for item_id in [i for i in rows if not store.image_path(i).is_file()]:
            log.warning("new arrival %s: its image %s is missing; not restored", item_id, store.image_path(item_id))
            del rows[item_id]
            changed = True
        if state.write_refusal is None:
            state.leftover_bytes = store.sweep(set(rows))
            if changed:
                try:
                    store.write_registry(rows)
                    for reg in adopted:
                        store.retire(reg)
                except OSError as e:
                    log.warning("could not rewrite %s: %s", store.registry, e)
        else:
            state.leftover_bytes = store.uncommitted_bytes()
        vectors = _saved_vectors(state, dim)
        new = {}
        embedded = 0
        for item_id, rec in rows.items():
            try:
                if state.known_item(item_id):
                    log.warning("new arrival %s is now in the catalog; the catalog's row is used", item_id)
                    continue
                img = store.image_path(item_id)
                vec = vectors.get(item_id)
                if vec is None or (dim and len(vec) != dim):
                    vec = embed_upload(state, img.read_bytes(), source=str(img))[1]
                    embedded += 1
                new[item_id] = {
                    "image": str(img),
                    "metadata": rec.get("metadata") or {},
                    "bytes": int(rec.get("bytes", 0)),
                    "vector": np.asarray(vec, np.float32),
                }
            except Exception as e:  # one bad arrival must not stop the server; its files stay where they are
                log.warning("could not restore new arrival %s: %s", item_id, e)
        if (embedded or changed) and state.write_refusal is None:
            try:
                _save_vectors(state, {i: r["vector"] for i, r in new.items()})
            except OSError as e:
                log.warning("could not save the arrivals' vectors: %s", e)
    if new:
        with state.lock:
            _commit_arrivals(state, new)
