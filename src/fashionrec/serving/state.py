"""What the server holds while it runs: the state, its snapshots and the layered index.

`ServingState.snapshot` is one reference to an immutable `Snapshot` (models, index, arrivals, removed ids). A
request reads `state.snapshot` once and uses only that object, so it never sees one model with the new arrival and
another without it, nor arrays of different lengths. Writers (serving.writes) take `state.lock`, build the next
snapshot beside the current one (copy-on-write, see `Snapshot`) and swap the reference. The catalog index is never
written: arrivals live in a small exact index rebuilt per write and searched beside it (`LayeredIndex`).

How the state is built or loaded: serving.build. The tables it holds: serving.tables.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.config import SERVED_TAG_COLUMNS
from fashionrec.errors import FashionrecError
from fashionrec.serving.arrivals import ArrivalStore
from fashionrec.serving.tables import Neighbours, Precomputed, Projection
from fashionrec.tagging import Tagger

log = logging.getLogger(__name__)


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


def arrivals_index(dim: int, arrivals: Mapping[str, dict]):
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
    """Everything a request reads that writes change. Never modified: writers make a new one.

    The copy-on-write rule: a writer builds the next snapshot with `cow_copy` (fashionrec objects and their
    containers copied, numpy arrays and sparse matrices shared with this snapshot), then changes the copy only by
    *replacing* attributes (`add_items` builds new arrays with np.concatenate/vstack); it never writes into an array,
    because that array may belong to this snapshot too, and a request still reading this snapshot would see it
    change. `seal` enforces the rule: every array a snapshot's models hold is made read-only
    (`flags.writeable = False`) when the snapshot is made, so an in-place write into a shared array raises
    ValueError instead of corrupting the readers of an older snapshot.
    """

    models: Mapping[str, object]
    index: LayeredIndex
    arrivals: Mapping[str, dict]  # id -> {"image", "metadata", "bytes", "vector"}
    removed: frozenset = frozenset()  # arrivals deleted in this run (the models keep a dead column)
    version: int = 0

    def __post_init__(self):
        seal(self.models)


def _owned(obj) -> bool:
    return hasattr(obj, "__dict__") and type(obj).__module__.startswith("fashionrec.")


def cow_copy(obj, memo: dict | None = None):
    """A copy that a writer may change without touching `obj`: fashionrec objects and their dict/list/set
    attributes are copied (one level of containers), numpy arrays, sparse matrices and frames are shared. Sound
    only under the rule of `Snapshot` (arrays are replaced, never written into), which `seal` enforces."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        new = dict(obj)
    elif isinstance(obj, list):
        new = list(obj)
    elif isinstance(obj, set):
        new = set(obj)
    elif _owned(obj):
        new = copy.copy(obj)
        memo[id(obj)] = new
        for k, v in vars(obj).items():
            setattr(new, k, cow_copy(v, memo))
        return new
    else:
        return obj
    memo[id(obj)] = new
    return new


def seal(obj, seen: set | None = None) -> None:
    """Make every numpy array reachable from `obj` (through fashionrec objects and dict/list/tuple/set containers,
    the parts `cow_copy` walks) read-only, sparse matrices' arrays included (put in canonical form first: scipy
    sorts a matrix's indices in place on first use otherwise)."""
    import scipy.sparse as sp

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        obj.flags.writeable = False
    elif sp.issparse(obj):
        if hasattr(obj, "sum_duplicates"):
            obj.sum_duplicates()
        for part in ("data", "indices", "indptr", "row", "col", "offsets"):
            a = getattr(obj, part, None)
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
    elif isinstance(obj, Mapping):
        for v in obj.values():
            seal(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            seal(v, seen)
    elif _owned(obj):
        for v in vars(obj).values():
            seal(v, seen)


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
    device: str = "auto"  # where uploads are embedded (fashionrec.device: auto, cpu, cuda); resolved with the backbone
    torch_device: object = None  # the resolved torch.device, once the backbone is loaded
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
                from fashionrec.device import resolve_device

                self.torch_device = resolve_device(self.device)
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

    @property
    def arrivals_folder(self) -> Path:
        """The shop's arrivals folder: keyed by the shop's content (catalog and customer ids), not by the data
        folder's path, so a moved or copied data folder keeps the items added through the API (serving.arrivals)."""
        if self.store is None:  # a state assembled by hand (tests): nothing persisted
            return self.workspace / "arrivals" / "unsaved"
        return self.store.folder

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
        root = self.arrivals_folder.resolve() if item in snap.arrivals else self.data_root
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
                for col in SERVED_TAG_COLUMNS:  # the card's category, type and colour
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


def _missing(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # arrays and other containers are not "missing"
        return False
