"""Products: the photos of one style in its colours (`product_code`; H&M: the first 7 digits of `article_id`).

Used to split by product (never by photo), for same-product positives, and for the columns that describe a product
rather than one photo of it (type, group, department, ...), which should agree across its colours.
Pure numpy/pandas: the recommenders use it without importing torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashionrec.errors import FashionrecError


def product_code_of(item: str) -> str:
    """H&M's id scheme: 10 digits = 7-digit product code + 3-digit colour; any other id is its own product."""
    item = str(item)
    return item[:7] if len(item) == 10 and item.isdigit() else item


def product_groups(ids: list[str], metadata, group_column: str = "auto") -> np.ndarray:
    """Group key per photo: same product = positives for the metric loss.

    auto: H&M ids (10 digits) -> the first 7 (product_code; works for items without a catalog row too);
    else a `product_code` column where present; else every photo is its own product (no positives)."""
    ids = [str(i) for i in ids]
    if group_column == "auto":
        codes = [product_code_of(i) for i in ids]
        if ids and all(c != i for c, i in zip(codes, ids)):  # every id follows H&M's scheme
            return np.array(codes)
        group_column = "product_code" if "product_code" in getattr(metadata, "columns", []) else "none"
    if group_column == "none":
        return np.array(ids)
    if group_column not in metadata.columns:
        raise FashionrecError(f"no column '{group_column}' for product groups; columns are {sorted(metadata.columns)}")
    col = metadata[group_column].astype(str)
    return np.array([f"g:{col.loc[i]}" if i in col.index and col.loc[i] != "nan" else f"i:{i}" for i in ids])


def split_products(groups: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out photos: a random `holdout` fraction of the products (never of photos)."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    held = set(uniq[rng.permutation(len(uniq))[: int(round(holdout * len(uniq)))]].tolist())
    return np.array([g in held for g in groups])


PRODUCT_LEVEL_AGREEMENT = 0.95  # a column is a product's (not a photo's) when its products agree at least this often
MIN_PRODUCTS_TO_MEASURE = 10  # products with 2+ labelled photos needed to call a column product-level


def product_level_columns(
    ids: list[str], metadata, groups: np.ndarray, columns: list[str], min_agreement: float = PRODUCT_LEVEL_AGREEMENT
) -> dict[str, float]:
    """{column: agreement} for the columns that describe a product rather than one photo of it.

    agreement = the share of products with 2+ labelled photos whose labelled photos all carry one value (H&M:
    product type 0.97, group 0.98, department 0.99, garment group 1.00; colour 0.04, pattern 0.64). A column counts
    when its agreement is >= `min_agreement` over at least MIN_PRODUCTS_TO_MEASURE such products; with fewer, none
    is measured and the result is {}."""
    out = {}
    for col in columns:
        if metadata is None or col not in getattr(metadata, "columns", []):
            continue
        vals = metadata[col].reindex([str(i) for i in ids])
        df = pd.DataFrame({"g": groups, "v": vals.to_numpy()}).dropna()
        df = df[df["v"].astype(str) != ""]
        per = df.groupby("g")["v"].agg(["size", "nunique"])
        per = per[per["size"] >= 2]
        if len(per) < MIN_PRODUCTS_TO_MEASURE:
            continue
        agree = float((per["nunique"] == 1).mean())
        if agree >= min_agreement:
            out[col] = round(agree, 4)
    return out


def pool_by_product(probs: dict[str, np.ndarray], groups: np.ndarray, columns) -> dict[str, np.ndarray]:
    """For each column in `columns`: every photo's class probabilities replaced by their geometric mean over the
    photos of its product (renormalised). Photos of one product in other colours then agree on its type, and the
    evidence of every photo counts (held-out H&M products: type +1.7 to +2.9 points, group +1.0 to +1.5)."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    out = dict(probs)
    for col in columns:
        p = probs.get(col)
        if p is None or not len(p):
            continue
        s = np.zeros((len(uniq), p.shape[1]))
        np.add.at(s, inv, np.log(np.clip(p, 1e-9, None)))
        s /= np.bincount(inv, minlength=len(uniq))[:, None]
        s = np.exp(s - s.max(1, keepdims=True))
        out[col] = (s / s.sum(1, keepdims=True))[inv].astype(p.dtype)
    return out


def tag_by_product(
    ids: list[str],
    probs: dict[str, np.ndarray],
    classes: dict[str, list[str]],
    metadata,
    catalog_ids: list[str],
    *,
    group_column: str = "auto",
    agreement: dict[str, float] | None = None,
    fallback: dict[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Tags of photos without a catalog row, made consistent within each product for the product-level columns.

    `ids`/`probs`: the photos to tag and the model's probabilities; `catalog_ids`: every photo of the catalog (their
    rows, where present, are the labelled siblings). `agreement` ({column: agreement}, as `product_level_columns`
    gives it) defaults to what the catalog's rows show, or to `fallback` (a model folder's, measured on its training
    products) where they show too few products. For those columns: probabilities pooled over the product's
    photos to tag (`pool_by_product`); where other photos of the product have a row, mixed with their labels as
    agreement x (labels' distribution) + (1 - agreement) x pooled, so the confidence says how often a product's photos
    agree. Returns (probabilities, {column: photos whose tag came from labelled siblings})."""
    all_ids = [str(i) for i in catalog_ids]
    groups_all = product_groups(all_ids, metadata, group_column)
    if agreement is None:
        agreement = product_level_columns(all_ids, metadata, groups_all, list(probs)) or dict(fallback or {})
    cols = [c for c in probs if c in agreement]
    gid = dict(zip(all_ids, groups_all))
    groups = np.array([gid.get(str(i), f"i:{i}") for i in ids])
    out = pool_by_product(probs, groups, cols)
    from_siblings = {}
    for col in cols:
        if metadata is None or col not in getattr(metadata, "columns", []):
            continue
        index = {c: j for j, c in enumerate(classes[col])}
        known = metadata[col].reindex(all_ids).to_numpy()
        dist: dict[str, np.ndarray] = {}
        for g, v in zip(groups_all, known):
            if isinstance(v, str) and v in index:
                dist.setdefault(g, np.zeros(len(index)))[index[v]] += 1
        rows = [r for r, g in enumerate(groups) if g in dist]
        if rows:
            a = float(agreement[col])
            sib = np.stack([dist[groups[r]] / dist[groups[r]].sum() for r in rows])
            out[col] = out[col].copy()
            out[col][rows] = a * sib + (1 - a) * out[col][rows]
        from_siblings[col] = len(rows)
    return out, from_siblings
