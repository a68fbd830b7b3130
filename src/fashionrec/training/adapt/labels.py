"""What `adapt` learns from: the photos, their label columns and their product groups.

Two layouts: the H&M one (`images/` + `articles.csv`: the attribute columns, products from the article ids) and
any labelled folder (`images/` + `labels.csv` with an id column and one or more label columns, optionally a group
column whose equal values mark photos of the same product). Errors name the file and the column or row to fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fashionrec.errors import DataError, FashionrecError
from fashionrec.training.adapt.config import DEFAULT_LABEL_COLUMNS

log = logging.getLogger(__name__)

ID_COLUMNS = ("item_id", "article_id", "id", "filename", "file")  # what `load_image_folder` takes as the id


def catalog_for_training(data_dir: str | Path):
    """`load_catalog` (kept as a name: `images/` + `labels.csv` is now read by `load_catalog` itself)."""
    from fashionrec.data.catalog import load_catalog

    return load_catalog(data_dir)


def labels_file(data_dir: str | Path) -> Path | None:
    """The table the label columns come from: `articles.*` (H&M layout), else `labels.*`; None without either."""
    from fashionrec.data.catalog import find_table

    d = Path(data_dir)
    return find_table(d, "articles") or find_table(d, "labels")


def check_labelled_folder(data_dir: str | Path, cat) -> None:
    """A plain labelled folder (`labels.*`, no articles table): every labelled id must have a photo. (An H&M articles
    table lists articles without photos by design; it is not checked.)"""
    from fashionrec.data.catalog import find_table, read_table

    d = Path(data_dir)
    path = find_table(d, "labels")
    if path is None or find_table(d, "articles") is not None:
        return
    df = read_table(path, dtype=str)
    col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if col is None:
        raise DataError(f"no id column; expected one of {list(ID_COLUMNS)}", path=path)
    ids = df[col].map(lambda s: Path(str(s)).stem if isinstance(s, str) else "")
    missing = np.flatnonzero(~ids.isin(set(cat.image_paths)).to_numpy())
    if len(missing):
        i = int(missing[0])
        raise DataError(
            f"{col} '{df[col].iloc[i]}' has no image in {d / 'images'} ({len(missing)} of {len(df)} labelled ids have "
            "none): add the photos or remove their rows",
            path=path,
            row=i + 2,  # 1-based, after the header
            field=col,
        )


def resolve_label_columns(data_dir, metadata, columns: tuple[str, ...], group_column: str) -> list[str]:
    """The label columns to learn. `DEFAULT_LABEL_COLUMNS` means auto: the H&M attribute columns present, else every
    column of a labels table but the id and the group column. Named columns must exist (the error names the file)."""
    have = list(getattr(metadata, "columns", []))
    source = labels_file(data_dir) or Path(data_dir)
    if group_column not in ("auto", "none") and group_column not in have:
        raise DataError(
            f"no group column '{group_column}'; columns are {sorted(have)}", path=source, field=group_column
        )
    if tuple(columns) == tuple(DEFAULT_LABEL_COLUMNS):
        hm = [c for c in columns if c in have]
        if hm:
            return hm
        skip = {group_column, "product_code", *ID_COLUMNS}
        return [c for c in have if c not in skip]
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(
            f"no label column {', '.join(repr(c) for c in missing)}; columns are {sorted(have)}",
            path=source,
            field=missing[0],
        )
    return list(columns)


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
