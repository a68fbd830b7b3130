"""Event logs -> sparse user x item matrices.

Two input shapes: H&M transactions (`t_dat, customer_id, article_id, price, sales_channel_id`) and a generic
log (`user, item, timestamp[, event][, weight]`), from CSV or Parquet. Repeated purchases count as quantity;
event types are weighted (a purchase says more than a view).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashionrec.data.catalog import catalog_item_ids, read_table, restore_leading_zeros
from fashionrec.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_EVENT_WEIGHTS = {"view": 1.0, "click": 1.0, "cart": 3.0, "wishlist": 2.0, "purchase": 5.0}
HM_COLUMNS = ["t_dat", "customer_id", "article_id"]


@dataclass
class Interactions:
    """A cleaned event log with columns user, item, timestamp, weight (ids are strings)."""

    events: pd.DataFrame

    def __post_init__(self) -> None:
        self.events = self.events.sort_values("timestamp", kind="stable").reset_index(drop=True)

    @property
    def users(self) -> np.ndarray:
        return np.sort(self.events["user"].unique())

    @property
    def items(self) -> np.ndarray:
        return np.sort(self.events["item"].unique())

    def before(self, date) -> Interactions:
        return Interactions(self.events[self.events["timestamp"] < pd.Timestamp(date)].copy())

    def since(self, date) -> Interactions:
        return Interactions(self.events[self.events["timestamp"] >= pd.Timestamp(date)].copy())

    def to_matrix(self, user_ids: list[str] | np.ndarray, item_ids: list[str] | np.ndarray) -> sp.csr_matrix:
        """Sum of weights per (user, item) over the given id orders; events with ids outside them are dropped."""
        u_index = pd.Index(user_ids)
        i_index = pd.Index(item_ids)
        rows = u_index.get_indexer(self.events["user"])
        cols = i_index.get_indexer(self.events["item"])
        keep = (rows >= 0) & (cols >= 0)
        m = sp.coo_matrix(
            (self.events["weight"].to_numpy(np.float32)[keep], (rows[keep], cols[keep])),
            shape=(len(u_index), len(i_index)),
        ).tocsr()
        m.sum_duplicates()
        return m

    def histories(self) -> dict[str, list[str]]:
        """Each user's items in time order (repeats kept)."""
        return {u: g.tolist() for u, g in self.events.groupby("user", sort=False)["item"]}


def _clean(
    df: pd.DataFrame, path: Path, *, known_items: set[str] | None, on_bad: str, reasons: list[str] | None = None
) -> pd.DataFrame:
    """Validate rows; raise naming the first bad row (CSV line number) or skip and report, by `on_bad`."""
    if on_bad not in {"raise", "skip"}:
        raise ValueError("on_bad must be 'raise' or 'skip'")
    problems = {
        "user": df["user"].isna(),
        "item": df["item"].isna(),
        "timestamp": df["timestamp"].isna(),
        "weight": ~np.isfinite(df["weight"].to_numpy(np.float64)) | (df["weight"].to_numpy(np.float64) < 0),
    }
    if known_items is not None:
        problems["item"] = problems["item"] | ~df["item"].isin(known_items)
    bad = np.zeros(len(df), dtype=bool)
    for field, mask in problems.items():
        mask = mask.to_numpy() if hasattr(mask, "to_numpy") else np.asarray(mask)
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            what = {
                "user": "missing user id",
                "item": "missing or unknown item id",
                "timestamp": "missing or unparseable date",
                "weight": "weight is not a finite non-negative number",
            }[field]
            if on_bad == "raise":
                raise DataError(
                    f"{what} ({int(mask.sum())} such rows; pass on_bad='skip' to drop them)",
                    path=path,
                    row=first + 2,
                    field=field,
                )
            log.warning("%s: skipping %d rows with %s (first at row %d)", path, int(mask.sum()), what, first + 2)
            if reasons is not None:
                reasons.append(f"{int(mask.sum()):,} with {what}, first at row {first + 2}")
            bad |= mask
    return df[~bad]


def _check_catalog_ids(df: pd.DataFrame, path: Path, catalog_ids: set[str] | None) -> pd.DataFrame:
    """Restore ids that lost their leading zeros, warn (with counts) about ids the catalog does not have, and
    refuse a log none of whose ids the catalog knows (every recommendation would silently be popularity)."""
    if catalog_ids is None or df.empty:
        return df
    df = df.assign(item=restore_leading_zeros(df["item"], catalog_ids, source=path))
    known = df["item"].isin(catalog_ids) | df["item"].isna()
    if not known.any():
        sample = df["item"].dropna().astype(str).unique()[:3].tolist()
        raise DataError(
            f"none of the {len(df):,} rows names an item of the catalog (articles table or images/), "
            f"e.g. {sample}; the log and the catalog must use the same ids",
            path=path,
            field="item",
        )
    if not known.all():
        unknown = df.loc[~known, "item"]
        log.warning(
            "%s: %d rows (%d distinct item ids, e.g. '%s') name items that are not in the catalog; they are ignored",
            path,
            int((~known).sum()),
            unknown.nunique(),
            unknown.iloc[0],
        )
    return df


def _warn_prices(price: pd.Series, path: Path) -> None:
    """A warning naming the rows whose price is negative, missing, not a number or infinite (kept as read: prices
    only describe purchases; they are not what is recommended from)."""
    v = price.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(v) | (v < 0)
    if bad.any():
        rows = np.flatnonzero(bad) + 2  # 1-based file lines after the header
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        log.warning("%s: %d rows with a negative, missing or non-numeric price (rows %s)", path, int(bad.sum()), shown)


def load_transactions(
    path: str | Path,
    *,
    known_items: set[str] | None = None,
    on_bad: str = "raise",
    event_weights: dict[str, float] | None = None,
    catalog_ids: set[str] | None = None,
) -> Interactions:
    """Read H&M transactions or a generic event log (detected by columns) from CSV or Parquet.

    `catalog_ids` (or `known_items`): ids that lost their leading zeros are restored to them, unknown ids are
    reported with counts. A file with no valid row left is a DataError that says why.
    """
    path = Path(path)
    head = read_table(path, dtype={"article_id": str, "customer_id": str, "user": str, "item": str})
    if head.empty:
        raise DataError("no rows (only a header): nothing to recommend from", path=path)
    if set(HM_COLUMNS) <= set(head.columns):
        df = pd.DataFrame(
            {
                "user": head["customer_id"],
                "item": head["article_id"],
                "timestamp": pd.to_datetime(head["t_dat"], errors="coerce", format="%Y-%m-%d"),
                "weight": 1.0,
            }
        )
        if "price" in head.columns:
            df["price"] = pd.to_numeric(head["price"], errors="coerce")
            _warn_prices(df["price"], path)
    elif {"user", "item", "timestamp"} <= set(head.columns):
        ts = head["timestamp"]
        if pd.api.types.is_numeric_dtype(ts):
            ts = pd.to_datetime(ts, unit="s", errors="coerce")
        else:
            ts = pd.to_datetime(ts, errors="coerce", format="mixed")
        weights = event_weights or DEFAULT_EVENT_WEIGHTS
        w = pd.Series(1.0, index=head.index)
        if "event" in head.columns:
            ev = head["event"].astype(str).str.lower()
            unknown = ~ev.isin(weights)
            if unknown.any() and on_bad == "raise":
                first = int(np.flatnonzero(unknown.to_numpy())[0])
                raise DataError(
                    f"unknown event type '{ev.iloc[first]}'; known: {sorted(weights)}",
                    path=path,
                    row=first + 2,
                    field="event",
                )
            w = ev.map(weights).astype(float)  # unknown -> NaN -> reported by _clean
        if "weight" in head.columns:
            w = w * pd.to_numeric(head["weight"], errors="coerce")
        df = pd.DataFrame({"user": head["user"], "item": head["item"], "timestamp": ts, "weight": w})
    else:
        raise DataError(
            f"unrecognised event log: needs {HM_COLUMNS} (H&M) or ['user', 'item', 'timestamp']; "
            f"found {list(head.columns)}",
            path=path,
        )
    df = _check_catalog_ids(df, path, catalog_ids if catalog_ids is not None else known_items)
    reasons: list[str] = []
    clean = _clean(df, path, known_items=known_items, on_bad=on_bad, reasons=reasons)
    if clean.empty:
        raise DataError(f"no valid rows left: all {len(df):,} rows were skipped ({'; '.join(reasons)})", path=path)
    return Interactions(clean)


def load_hm_transactions(data_dir: str | Path, **kw) -> Interactions:
    """All `transactions*.csv|parquet` files in an H&M-layout folder, concatenated. `catalog_ids`: the ids the
    catalog knows (default: read from the folder's articles table and image names)."""
    data_dir = Path(data_dir)
    files = sorted(p for p in data_dir.glob("transactions*") if p.suffix.lower() in {".csv", ".parquet", ".gz"})
    if not files:
        raise DataError("no transactions*.csv or transactions*.parquet", path=data_dir)
    if "catalog_ids" not in kw:
        kw["catalog_ids"] = catalog_item_ids(data_dir)
    parts = [load_transactions(f, **kw).events for f in files]
    return Interactions(pd.concat(parts, ignore_index=True))


def read_customers(data_dir: str | Path) -> pd.DataFrame | None:
    """customers.csv (or .parquet) of an H&M-layout folder, read once (customer_id as strings); None without one.
    A table without a customer_id column is a DataError naming the file."""
    data_dir = Path(data_dir)
    for name in ("customers.csv", "customers.parquet"):
        if (data_dir / name).exists():
            return read_table(data_dir / name, required=["customer_id"], dtype={"customer_id": str})
    return None


def customer_ids(table: pd.DataFrame | None) -> list[str]:
    """Customer ids of a customers table, in file order, each once."""
    return [] if table is None else table["customer_id"].dropna().astype(str).drop_duplicates().tolist()


def customer_facts(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The customers-table facts the recommenders use (index customer id; column age), or None."""
    if table is None or "customer_id" not in table.columns:
        return None
    df = table.dropna(subset=["customer_id"]).drop_duplicates("customer_id").set_index("customer_id")
    out = pd.DataFrame(index=df.index)
    out["age"] = pd.to_numeric(df["age"], errors="coerce") if "age" in df.columns else np.nan
    return out


def load_customers(data_dir: str | Path) -> list[str]:
    return customer_ids(read_customers(data_dir))
