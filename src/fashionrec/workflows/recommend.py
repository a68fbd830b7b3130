"""Recommendation recipes: top-k for every customer, similar items, the multi-window evaluation, catalog embedding."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.artifacts.registry import AUTO
from fashionrec.config import DEFAULT_BACKBONE, DEFAULT_INPUT_SIZE, DEFAULT_MODEL
from fashionrec.errors import FashionrecError
from fashionrec.recommend import recommender_class
from fashionrec.workflows.shop import Shop, fit_recommender, rec_data

log = logging.getLogger(__name__)
MAX_CUSTOMER_ID_CHARS = 256  # H&M's ids are 64 hex characters


def evaluation_needs_images(name: str) -> bool:
    """The evaluation embeds the photos for the models that need them and for those reading the tags predicted
    from photos (`content` describes never-sold items so)."""
    cls = recommender_class(name)
    return cls.needs_images or cls.uses_image_tags


def _workspace(workspace) -> Path:
    """Fitted models are cached in the workspace: the same one the CLI and the server use, unless told."""
    from fashionrec.io import default_workspace

    return Path(workspace) if workspace else default_workspace()


def read_users(path: str | Path) -> list[str]:
    """Customer ids from a CSV/Parquet (column customer_id, else the first) or a text file (one per line). An id
    with a control character (a newline inside a quoted CSV field) or over MAX_CUSTOMER_ID_CHARS characters is a
    FashionrecError naming the file and row: it would break the output file's rows."""
    from fashionrec.data.catalog import read_table

    p = Path(path)
    if p.suffix.lower() in {".csv", ".parquet"}:
        df = read_table(p, dtype=str)
        col = "customer_id" if "customer_id" in df.columns else df.columns[0]
        ids = df[col].dropna().astype(str)
        for row, u in zip(ids.index.tolist(), ids.tolist()):
            _check_customer_id(u, f"{p}: row {int(row) + 2}, column {col}")
        return ids.drop_duplicates().tolist()
    if not p.exists():
        raise FashionrecError(f"{p}: users file not found")
    with open(p, encoding="utf-8", newline="") as f:  # lines end at \n only: U+0085 or U+2028 stay in the id
        lines = f.read().split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        u = line.strip(" \t\r")
        if u:
            _check_customer_id(u, f"{p}: line {n}")
            out.append(u)
    return out


def customer_id_problem(u: str) -> str | None:
    """Why `u` cannot be written as a customer id (a control or format character, or too long), else None."""
    if len(u) > MAX_CUSTOMER_ID_CHARS:
        return f"is {len(u):,} characters long (at most {MAX_CUSTOMER_ID_CHARS})"
    bad = next((c for c in u if unicodedata.category(c) in ("Cc", "Cf")), None)
    if bad is not None:
        return f"contains the control character U+{ord(bad):04X}"
    return None


def _check_customer_id(u: str, where: str) -> None:
    why = customer_id_problem(u)
    if why:
        raise FashionrecError(f"{where}: customer id {u[:40]!r}{'...' if len(u) > 40 else ''} {why}")


def check_output_path(out: str | Path) -> Path:
    """`out` must be a file name in a folder that can be written: a folder, a missing parent that cannot be
    created, or a read-only place is a FashionrecError naming it, before any slow work."""
    out = Path(out)
    if out.is_dir():
        raise FashionrecError(f"{out}: is a directory; --out takes a file name (e.g. {out / 'submission.csv'})")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FashionrecError(f"{out}: cannot write there ({e.strerror or e})") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise FashionrecError(f"{out}: exists and is not writable")
    return out


def _checked_users(shop: Shop, users: list[str] | None) -> list[str]:
    """Everyone (ids the output cannot hold skipped, with a warning), or the given ids (unknown ones warned
    about: they get the most popular items)."""
    if users is None:
        users = everyone(shop)
        bad = [u for u in users if customer_id_problem(u)]
        if bad:
            log.warning(
                "%d customer id(s) of the data skipped: %s (e.g. %r...)",
                len(bad),
                customer_id_problem(bad[0]),
                bad[0][:40],
            )
            skip = set(bad)
            users = [u for u in users if u not in skip]
        return users
    known = set(shop.customers) | set(shop.interactions.events["user"].unique().tolist())
    unknown = [u for u in users if u not in known]
    if unknown:
        log.warning(
            "%d of the %d customer ids given are not in the data (%s%s); they get the most popular items",
            len(unknown),
            len(users),
            ", ".join(repr(u) for u in unknown[:5]),
            ", ..." if len(unknown) > 5 else "",
        )
    return users


def read_items(path: str | Path) -> list[str]:
    """Item ids to rank (a "new in" list): a CSV/Parquet with an `article_id` column (else `item_id`, else the
    first), or a text file with one id per line. Ids are strings (leading zeros kept); duplicates are dropped."""
    from fashionrec.data.catalog import read_table

    p = Path(path)
    if not p.exists():
        raise FashionrecError(f"{p}: items file not found")
    if p.suffix.lower() in {".csv", ".parquet"}:
        df = read_table(p, dtype=str)
        col = next((c for c in ("article_id", "item_id", "item") if c in df.columns), df.columns[0])
        ids = df[col].dropna().astype(str).str.strip().tolist()
    else:
        ids = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise FashionrecError(f"{p}: no item ids in the file")
    return ids


def everyone(shop: Shop) -> list[str]:
    """Everyone in customers.csv, then buyers missing from it (they still get a row), sorted."""
    known = set(shop.customers)
    buyers = set(shop.interactions.events["user"].unique().tolist())
    return list(shop.customers) + sorted(u for u in buyers if u not in known)


@dataclass
class Submission:
    """The H&M Kaggle submission file written for every customer, plus the timings for the report line."""

    path: Path  # customer_id, prediction (k space-separated item ids)
    n_rows: int
    model: str
    load_seconds: float
    fit_seconds: float
    embed_seconds: float
    n_unreadable: int
    seconds: float = 0.0
    recommend_seconds: float = 0.0


def local_if_no_ray(workers: int | str, customers: int) -> int | str:
    """--workers auto picks Ray from `AUTO_WORKERS_FROM` customers on; without Ray installed, run in this process
    (same output, one core) with a warning rather than fail."""
    from fashionrec.extras import available, install_hint
    from fashionrec.recommend.batch import resolve_workers

    if str(workers) != "auto" or resolve_workers(workers, customers) == 1 or available("ray"):
        return workers
    import logging

    logging.getLogger("fashionrec").warning(
        "--workers auto: %d customers would be sharded over Ray, which is not installed; running in one process "
        "(%s for several cores)",
        customers,
        install_hint("distributed"),
    )
    return 1


def recommend_all(
    data_dir: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    k: int = 12,
    users: list[str] | None = None,
    backbone: str = AUTO,
    input_size: int = DEFAULT_INPUT_SIZE,
    inference: str = "auto",
    workspace=None,
    progress: bool = True,
    block_size: int = 2048,
    workers: int | str = 1,
    ray_address: str | None = None,
    items: list[str] | None = None,
) -> Submission:
    """Top-k for `users` (default: everyone) streamed to `out` in blocks (`fashionrec.recommend.batch`), every row
    filled to k from popularity; `workers` > 1 shards the customers over Ray actors (identical output).
    `items`: rank only these ids for everyone (personalised "new in"): each by the model's own score, never padded;
    an id with a photo and no catalog row is ranked like any other."""
    from fashionrec.recommend.batch import recommend_all as batch_recommend_all

    if str(workers) != "auto" and int(workers) > 1:
        from fashionrec.extras import require

        require("distributed", "ray", what=f"--workers {workers} shards the customers over Ray")
    t0 = time.time()
    out = check_output_path(out)
    if users is not None:
        for n, u in enumerate(users, 1):
            _check_customer_id(u, f"customer id #{n}")
    workspace = _workspace(workspace)
    name = model or DEFAULT_MODEL
    shop = Shop.open(
        data_dir, with_images=False, workspace=workspace, progress=progress, backbone=backbone, input_size=input_size
    )
    fitted, unreadable, t_fit = _fitted_model(shop, name, workspace, progress, inference)
    t_load = time.time() - t0 - t_fit
    users = _checked_users(shop, users)
    workers = local_if_no_ray(workers, len(users))
    t1 = time.time()
    try:
        path = batch_recommend_all(
            fitted,
            users,
            k,
            out,
            block_size=block_size,
            progress=progress,
            workers=workers,
            address=ray_address,
            items=items,
        )
    except OSError as e:
        raise FashionrecError(f"{out}: could not write the recommendations ({e.strerror or e})") from None
    return Submission(
        path,
        len(users),
        name,
        t_load,
        t_fit,
        shop.embed_seconds,
        unreadable,
        time.time() - t0,
        time.time() - t1,
    )


def _fitted_model(shop: Shop, name: str, workspace: Path, progress: bool, inference: str):
    """(the fitted model, unreadable photos, seconds loading or fitting the model). A model cached for these files and image features is loaded without
    embedding the photos again (the features' key noted by `Shop.add_images`); else the photos are embedded (from
    the feature cache where it has them) and the model is loaded or fitted by `fit_recommender`."""
    from fashionrec.recommend import create_recommender
    from fashionrec.workflows.shop import cached_model, model_cache_path

    needs_images = recommender_class(name).needs_images
    digest = shop.features_digest(workspace, inference=inference) if needs_images else None
    if digest is not None or not needs_images:
        t0 = time.time()
        path = model_cache_path(shop, create_recommender(name), workspace, digest and digest["features"])
        found = cached_model(path)
        if found is not None:
            return found, digest["unreadable"] if digest else 0, time.time() - t0
    if needs_images:
        shop.add_images(workspace=workspace, progress=progress, inference=inference)
    t0 = time.time()
    fitted = fit_recommender(shop, name, cache_dir=workspace)
    return fitted, len(shop.failures), time.time() - t0


@dataclass
class Similar:
    item: str
    score: float
    name: str  # the catalog's prod_name, or ""


def similar_items(
    data_dir: str | Path,
    item: str,
    *,
    model: str = "visual",
    k: int = 12,
    backbone: str = AUTO,
    input_size: int = DEFAULT_INPUT_SIZE,
    inference: str = "auto",
    workspace=None,
    progress: bool = True,
) -> list[Similar]:
    """The k items nearest to `item` by `model` (a content model by default: works for never-sold items)."""
    workspace = _workspace(workspace)
    shop = Shop.open(
        data_dir,
        with_images=recommender_class(model).needs_images,
        workspace=workspace,
        progress=progress,
        backbone=backbone,
        input_size=input_size,
        inference=inference,
    )
    fitted = fit_recommender(shop, model, cache_dir=workspace)
    meta = shop.catalog.metadata
    has_name = "prod_name" in meta.columns
    return [
        Similar(r.item, r.score, meta.loc[r.item, "prod_name"] if has_name and r.item in meta.index else "")
        for r in fitted.similar_items(item, k)
    ]


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per model (pooled over windows); attrs hold the protocol
    details: dict  # sources (per-model candidate sources), ap (per customer-window AP)
    markdown: str


def evaluate_recommenders(
    data_dir: str | Path,
    models: list[str],
    *,
    windows: int = 4,
    split_date: str | None = None,
    test_days: int = 28,
    k: int = 12,
    baseline: str | None = "repurchase",
    backbone: str = AUTO,
    input_size: int = DEFAULT_INPUT_SIZE,
    inference: str = "auto",
    workspace=None,
    progress: bool = True,
    taste: bool = True,
    taste_reference: str | None = None,
) -> Comparison:
    """Leak-free comparison on `windows` consecutive test windows ending at the last date (or one window starting
    at `split_date`), against `baseline` (paired bootstrap) when it is one of `models`."""
    from fashionrec.evaluation.protocol import evaluate_windows, format_windows_table
    from fashionrec.recommend import create_recommender

    shop = Shop.open(
        data_dir,
        with_images=any(evaluation_needs_images(m) for m in models),
        workspace=workspace,
        progress=progress,
        backbone=backbone,
        input_size=input_size,
        inference=inference,
    )
    events = shop.interactions.events
    n_windows = windows
    if split_date:  # one window starting at the given date
        n_windows = 1
        last = pd.Timestamp(split_date) + pd.Timedelta(days=test_days - 1)
        events = events[events["timestamp"] <= last + pd.Timedelta(days=1)]
    factories = {m: (lambda m=m: create_recommender(m)) for m in models}
    df, details = evaluate_windows(
        lambda ev: rec_data(shop, ev),
        factories,
        events,
        n_windows=n_windows,
        test_days=test_days,
        k=k,
        baseline=baseline if baseline in models else None,
        progress=progress,
        taste=taste,
        taste_reference=taste_reference if taste_reference in models else None,
    )
    return Comparison(df, details, format_windows_table(df, details["sources"]))


def write_comparison(c: Comparison, out: str | Path, args: dict) -> None:
    """comparison.md, comparison.json (with the run's arguments), per_pair_ap.json and comparison.png in `out`; with
    the taste metrics also taste.png and per_pair_taste.json."""
    from fashionrec.evaluation.protocol import plot_windows
    from fashionrec.io import write_json, write_text

    out = Path(out)
    write_text(out / "comparison.md", c.markdown)
    rows = c.table.reset_index().to_dict(orient="records")
    write_json(
        out / "comparison.json", {"attrs": c.table.attrs, "rows": rows, "sources": c.details["sources"], "args": args}
    )
    write_json(out / "per_pair_ap.json", c.details["ap"])
    plot_windows(c.table, out / "comparison.png")
    if c.table.attrs.get("taste") and "taste_auc" in c.table.columns:
        from fashionrec.evaluation.plots import plot_taste

        plot_taste(c.table, out / "taste.png")
        write_json(out / "per_pair_taste.json", {"auc": c.details["taste_auc"], "pick": c.details["colour_pick"]})


@dataclass
class Embeddings:
    ids: list[str]
    features: np.ndarray
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def embed_catalog_images(
    data_dir: str | Path,
    *,
    engine: str = "local",
    backbone: str = DEFAULT_BACKBONE,
    input_size: int = DEFAULT_INPUT_SIZE,
    batch_size: int = 64,
    num_actors: int = 2,
    inference: str = "auto",
    ray_address: str | None = None,
    workspace=None,
    progress: bool = True,
    device=None,
) -> Embeddings:
    """Every catalog image's backbone embedding, locally (cached in the workspace) or on Ray actors. `device`: where
    the local engine runs the backbone (None: the CPU; 'auto', 'cuda', a torch.device)."""
    from fashionrec.data.catalog import load_catalog

    cat = load_catalog(data_dir)
    workspace = _workspace(workspace)
    t0 = time.time()
    if engine == "ray":
        from fashionrec.distributed import embed_with_ray
        from fashionrec.extras import require

        require("distributed", "ray", what="--engine ray needs Ray")

        ids, feats = embed_with_ray(
            cat.image_paths,
            backbone=backbone,
            input_size=input_size,
            num_actors=num_actors,
            batch_size=batch_size,
            address=ray_address,
        )
        return Embeddings(ids, feats, {}, time.time() - t0)
    from fashionrec.backbones import create_backbone
    from fashionrec.features import FeatureCache, InferencePath, embed_image_files

    res = embed_image_files(
        create_backbone(backbone, input_size=input_size),
        cat.image_paths,
        cache=FeatureCache(workspace),
        progress=progress,
        batch_size=batch_size,
        path=InferencePath.parse(inference),
        device=device,
    )
    return Embeddings(res.ids, res.features, res.failures, time.time() - t0)


def write_embeddings(e: Embeddings, out: str | Path) -> None:
    """An .npz with `ids` and `features`, written atomically."""
    from fashionrec.io import atomic_path

    with atomic_path(out, suffix=".tmp.npz") as tmp:
        np.savez(tmp, ids=np.array(e.ids), features=e.features)
