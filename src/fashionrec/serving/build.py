"""Build or load what the server holds (`build_state`), and check it.

Artifacts (under <workspace>/serving/<data fingerprint>/, all data, no pickle):
- `tables/`: a folder of `.npy` arrays + `config.json` (serving.store; memory-mapped by multi-worker servers):
  per model the precomputed top-k of every known customer (serving.tables), the taggers for uploads as
  coefficients (fashionrec.tagging), the PCA that maps raw backbone vectors to the recommenders' space, and the
  format version;
- `models/<name>.npz`: the fitted recommenders, through `Recommender.save`/`load_recommender` (fashionrec.artifacts);
- `index.npz`: the vector index over catalog photos (`VectorIndex.save`/`load_index`).
A warm start loads these (never fits: no load_shop, no LogisticRegression, no precompute, no index build) and checks
them (`check_artifacts`: shapes, dtypes, index ranges, agreement between files); a missing, damaged or mismatched
artifact, or one of another format version, is rebuilt, with a progress bar and a message naming the file, from the
data folder. New arrivals are replayed from the workspace's arrivals folder (serving.writes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from fashionrec.artifacts import ArtifactFormatError
from fashionrec.config import SERVED_TAG_COLUMNS
from fashionrec.errors import FashionrecError
from fashionrec.io import default_workspace
from fashionrec.serving.arrivals import ArrivalStore, shop_identity
from fashionrec.serving.state import LayeredIndex, ServingState, Snapshot
from fashionrec.serving.store import load_arrays, save_arrays
from fashionrec.serving.tables import Neighbours, Precomputed, Projection
from fashionrec.serving.writes import replay_arrivals
from fashionrec.tagging import Tagger, fit_taggers

log = logging.getLogger(__name__)
LIGHT_MODELS = tuple(__import__("fashionrec.recommend", fromlist=["names"]).names(light=True))  # fit at start
TABLES_KIND = "serving-tables"
TABLES_VERSION = 3  # bump when the layout of tables/ changes: older folders are rebuilt, never misread


def _light_shop(data_dir: Path, catalog, backbone: str, input_size: int):
    """A Shop with only what `Shop.fingerprint` reads: the one definition of "the same data" keys the artifacts."""
    from fashionrec.workflows.shop import Shop

    return Shop(data_dir, catalog, None, [], None, {}, backbone_name=backbone, input_size=input_size)


def _train_taggers(shop, progress: bool = False) -> list[Tagger]:
    """Taggers for uploads, fitted on the raw image features of the labelled catalog items (cold start only)."""
    if shop.raw_features is None or shop.catalog.metadata.empty:
        return []
    feats = shop.raw_features
    return fit_taggers(feats.ids, feats.vectors, shop.catalog.metadata, SERVED_TAG_COLUMNS, progress=progress)


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
    from fashionrec.workflows.shop import fit_recommender, load_shop

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
        arrays.update(t.arrays())
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
    for old in art.glob("*.pkl"):  # (model, precomputed) pickles of older fashionrec versions: never read again
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
    taggers = [Tagger.from_arrays(arrays, c) for c in cfg.get("taggers", [])]
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
    device: str = "auto",
) -> ServingState:
    """Load the serving artifacts for `data_dir` from the workspace (seconds), building any that are missing or of
    an older format first (minutes, with progress). `build=False` (a worker of a multi-worker server) refuses to
    build; `mmap=True` maps the tables read-only so that workers share them. `device`: where uploads are embedded
    ('auto', 'cpu', 'cuda'; resolved when the backbone loads)."""
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
        device=device,
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


def _catalog_ids(catalog) -> set[str]:
    ids = set(catalog.image_paths)
    meta = getattr(catalog, "metadata", None)
    if meta is not None and len(meta.index):
        ids.update(str(i) for i in meta.index)
    return ids
