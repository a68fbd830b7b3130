"""Product catalogs: the H&M Kaggle layout and a plain folder of images with an optional labels CSV.

A catalog is the list of item ids that have an image, the path of each image, and a metadata table.
`article_id` is always a string (H&M ids have a leading zero).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fashionrec.data.images import IMAGE_SUFFIXES, list_images
from fashionrec.errors import DataError

log = logging.getLogger(__name__)
_FLOAT_INT = re.compile(r"^(\d+)\.0+$")


@dataclass
class Catalog:
    item_ids: list[str]  # items that have an image, sorted
    image_paths: dict[str, Path]  # item id -> image path
    metadata: pd.DataFrame = field(default_factory=pd.DataFrame)  # indexed by item id (str); may cover other items

    def label_column(self, column: str) -> pd.Series:
        if column not in self.metadata.columns:
            raise DataError(f"no column '{column}'; columns are {sorted(self.metadata.columns)}", field=column)
        return self.metadata[column]

    def all_item_ids(self) -> list[str]:
        """Items with an image or a metadata row: the candidate set for recommendation."""
        return sorted(set(self.item_ids) | set(self.metadata.index.astype(str)))


def read_table(path: str | Path, *, required: list[str] = (), dtype: dict | None = None) -> pd.DataFrame:
    """Read CSV or Parquet, checking required columns, with errors naming the file and the missing field."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path)
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            df = pd.read_parquet(path)
            for col, typ in (dtype or {}).items():
                if col in df.columns:
                    df[col] = df[col].astype(typ)
        else:
            df = pd.read_csv(path, dtype=dtype, on_bad_lines="error")
    except pd.errors.ParserError as e:
        raise DataError(f"cannot parse: {e}", path=path) from None
    except (pd.errors.EmptyDataError, ValueError, OSError) as e:
        raise DataError(f"cannot read: {e}", path=path) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}; found {list(df.columns)}", path=path, field=missing[0])
    return df


def restore_leading_zeros(
    ids: pd.Series, known: set[str] | None, *, source: object, what: str = "article_id"
) -> pd.Series:
    """Ids that a spreadsheet round-trip turned into numbers ('0706016001' -> '706016001', or '706016001.0'):
    zero-padded back when exactly one width that the `known` ids use makes them known. Logs a warning with the
    counts; ids that stay unknown are left as they are (the caller reports them)."""
    if not known or ids.empty:
        return ids
    widths = sorted({len(k) for k in known if k.isdigit()})
    if not widths:
        return ids
    uniq = pd.Series(ids.dropna().unique(), dtype=object)
    unknown = uniq[~uniq.isin(known)]
    mapping, ambiguous = {}, []
    for u in unknown:
        digits = u.strip()
        m = _FLOAT_INT.match(digits)
        if m:
            digits = m.group(1)
        if not digits.isdigit():
            continue
        cands = [digits.zfill(w) for w in widths if w >= len(digits) and digits.zfill(w) in known]
        if len(cands) == 1:
            mapping[u] = cands[0]
        elif len(cands) > 1:
            ambiguous.append(u)
    if ambiguous:
        log.warning(
            "%s: %d %s values fit several catalog ids once zero-padded (e.g. '%s'); left as they are",
            source,
            len(ambiguous),
            what,
            ambiguous[0],
        )
    if not mapping:
        return ids
    hit = ids.isin(mapping.keys())
    first = next(iter(mapping.items()))
    log.warning(
        "%s: %d %s values in %d rows had lost their leading zeros (a spreadsheet round-trip?), e.g. "
        "'%s' -> '%s'; restored by zero-padding to the catalog's id width",
        source,
        len(mapping),
        what,
        int(hit.sum()),
        first[0],
        first[1],
    )
    return ids.where(~hit, ids.map(mapping))


def catalog_item_ids(data_dir: str | Path) -> set[str] | None:
    """Every item id an H&M-layout folder knows (articles table and image file names), read cheaply: just the id
    column and the file names. None when the folder has neither."""
    data_dir = Path(data_dir)
    ids: set[str] = set()
    found = False
    articles = find_table(data_dir, "articles")
    if articles is not None:
        try:
            df = read_table(articles, required=["article_id"], dtype={"article_id": str})
        except DataError:
            df = None
        if df is not None:
            found = True
            ids.update(df["article_id"].dropna().astype(str))
    images = data_dir / "images"
    if images.is_dir():
        found = True
        for _root, _dirs, files in os.walk(images):
            ids.update(Path(f).stem for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return ids if found else None


def find_table(folder: Path, stem: str) -> Path | None:
    for suffix in (".csv", ".parquet", ".csv.gz"):
        if (folder / (stem + suffix)).exists():
            return folder / (stem + suffix)
    return None


def load_hm_catalog(data_dir: str | Path) -> Catalog:
    """H&M Kaggle layout: `articles.csv` and `images/` (flat, or `images/<first 3 digits>/<id>.jpg`)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError("data folder does not exist", path=data_dir)
    images_dir = data_dir / "images"
    paths = {p.stem: p for p in list_images(images_dir)} if images_dir.is_dir() else {}
    meta = pd.DataFrame()
    articles = find_table(data_dir, "articles")
    if articles is not None:
        meta = read_table(articles, required=["article_id"], dtype={"article_id": str})
        bad = meta["article_id"].isna()
        if bad.any():
            raise DataError("empty article_id", path=articles, row=int(bad.idxmax()) + 2, field="article_id")
        if meta.empty:
            log.warning("%s: no rows (header only); items are known from their images alone", articles)
        meta["article_id"] = restore_leading_zeros(meta["article_id"], set(paths), source=articles)
        meta = meta.drop_duplicates("article_id").set_index("article_id")
    if not paths and meta.empty:
        raise DataError("neither images/ nor articles.csv found: not an H&M-layout folder", path=data_dir)
    return Catalog(item_ids=sorted(paths), image_paths=paths, metadata=meta)


def load_image_folder(folder: str | Path, labels_csv: str | Path | None = None, id_column: str = "item_id") -> Catalog:
    """A plain folder of images (id = file stem) plus an optional CSV with an id column and label columns.

    The CSV's id column may be `item_id`, `article_id`, `id`, `filename` or `file`; file names are matched by stem.
    """
    paths = {p.stem: p for p in list_images(folder)}
    if not paths:
        raise DataError("no image files found", path=folder)
    meta = pd.DataFrame()
    if labels_csv is not None:
        df = read_table(labels_csv, dtype=str)
        candidates = [id_column, "item_id", "article_id", "id", "filename", "file"]
        col = next((c for c in candidates if c in df.columns), None)
        if col is None:
            raise DataError(f"no id column; expected one of {candidates}", path=labels_csv, field=id_column)
        df[col] = df[col].map(lambda s: Path(str(s)).stem)
        meta = df.drop_duplicates(col).set_index(col)
        meta.index.name = "item_id"
    return Catalog(item_ids=sorted(paths), image_paths=paths, metadata=meta)


def load_catalog(data_dir: str | Path) -> Catalog:
    """H&M layout when `articles.*` or `images/` exist, else a plain image folder (labels.csv optional). A folder
    with `images/` and `labels.*` but no articles table is a plain folder whose photos sit in `images/`."""
    data_dir = Path(data_dir)
    labels = find_table(data_dir, "labels")
    articles = find_table(data_dir, "articles")
    if (data_dir / "images").is_dir() and articles is None and labels is not None:
        return load_image_folder(data_dir / "images", labels)
    if (data_dir / "images").is_dir() or articles is not None:
        return load_hm_catalog(data_dir)
    return load_image_folder(data_dir, labels)
