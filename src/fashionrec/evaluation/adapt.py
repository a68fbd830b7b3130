"""Held-out evaluation of `fashionrec adapt`: same-product retrieval (ImageNet vs adapted features), tagging as `tag`
does it (product-level columns pooled over each product's photos), and the printed tables. Numpy only: it reads
arrays, not models."""

from __future__ import annotations

import numpy as np

from fashionrec.data.products import pool_by_product, product_level_columns
from fashionrec.evaluation.calibration import THRESHOLDS


def heldout_retrieval(
    base_views: list[np.ndarray], adapted: np.ndarray, groups: np.ndarray, held: np.ndarray, types, views_name: str
) -> dict:
    """{features: retrieval_metrics} for the ImageNet pre-logits (the photo, and its views averaged, as the adapted
    embedding is) and the adapted embedding. Queries: held-out photos of products with 2+ photos; gallery: every
    photo. Without such products (a folder with no groups) every held-out photo is a query and only same-type P@10
    is measured (recall is None: no other photo of the same product exists)."""
    from fashionrec.evaluation.retrieval import retrieval_metrics

    uniq, counts = np.unique(groups, return_counts=True)
    q = np.flatnonzero(held & np.isin(groups, uniq[counts >= 2]))
    no_products = not len(q)
    if no_products:
        q = np.flatnonzero(held)
    rows = {"imagenet": base_views[0]}
    if len(base_views) > 1:
        rows["imagenet+" + views_name] = sum(base_views)
    rows["adapted"] = adapted
    out = {name: retrieval_metrics(f, groups, q, types) for name, f in rows.items()}
    if no_products:
        for r in out.values():
            r.update({k: None for k in r if k.startswith("recall@")})
    return out


def retrieval_by_views(
    embs: list[np.ndarray], names: tuple[str, ...], groups: np.ndarray, held: np.ndarray, types
) -> dict:
    """{embedding_tta: retrieval_metrics} of the adapted embedding with each setting of the test-time views the run
    cached (`embs[i]`: view `names[i]`, `view_names` order): "none" the photo alone, "flip" with its mirror image,
    "gray" with its greyscale version, "flip+gray" all four; the same queries and gallery as `heldout_retrieval`."""
    from fashionrec.evaluation.retrieval import retrieval_metrics

    uniq, counts = np.unique(groups, return_counts=True)
    q = np.flatnonzero(held & np.isin(groups, uniq[counts >= 2]))
    if not len(q):
        return {}
    out = {}
    for flip in (False, True):
        for gray in (False, True):
            want = ["photo"] + (["gray"] if gray else [])
            want += [f"{v}_flip" for v in want] if flip else []
            if all(v in names for v in want):
                name = "+".join(v for v, on in (("flip", flip), ("gray", gray)) if on) or "none"
                out[name] = retrieval_metrics(sum(embs[names.index(v)] for v in want), groups, q, types)
    return out


def type_column_values(ids: list[str], meta, heads: dict, labels: dict) -> np.ndarray | None:
    """The labels same-type P@10 compares: product_type_name where present, else the first head's column."""
    type_col = "product_type_name" if "product_type_name" in meta.columns else next(iter(heads), None)
    if type_col is None:
        return None
    types = labels.get(type_col + "\0raw")
    if types is None:
        types = np.array([str(meta[type_col].get(i, "")) if i in meta.index else "" for i in ids], dtype=object)
    return types


def heldout_figures(ids, meta, groups, held, heads, labels, probs) -> dict:
    """Held-out tagging as `tag` does it: product-level columns (measured on the training products) pooled over each
    product's photos; per photo as well, for comparison. -> {tagging_heldout, tagging_heldout_per_photo,
    product_level_columns}."""
    hrows, tr_rows = np.flatnonzero(held), np.flatnonzero(~held)
    plevel = product_level_columns([ids[i] for i in tr_rows], meta, groups[tr_rows], list(heads))
    tagging, per_photo = heldout_tagging(
        {n: labels[n + "\0raw"][hrows] for n in heads},
        {n: probs[n][hrows] for n in heads},
        heads,
        groups[hrows],
        plevel,
    )
    return {"tagging_heldout": tagging, "tagging_heldout_per_photo": per_photo, "product_level_columns": plevel}


def heldout_tagging(
    truth: dict[str, np.ndarray],
    probs: dict[str, np.ndarray],
    classes: dict[str, list[str]],
    groups: np.ndarray,
    plevel: dict[str, float],
) -> tuple[dict, dict]:
    """(report as `tag` tags: `plevel` columns pooled over each product's photos, report per photo): accuracy and
    macro-F1 per column over the photos whose true label (`truth`, "" = none) is known."""
    from fashionrec.evaluation.retrieval import classification_report

    pooled = pool_by_product(probs, groups, plevel)
    by_product, per_photo = {}, {}
    for name, raw in truth.items():
        has = raw != ""
        cls = np.array(classes[name], dtype=object)
        by_product[name] = classification_report(raw[has], cls[pooled[name][has].argmax(1)], classes[name])
        per_photo[name] = classification_report(raw[has], cls[probs[name][has].argmax(1)], classes[name])
    return by_product, per_photo


def format_adapt_metrics(m: dict) -> str:
    no_groups = all(r.get("recall@10") is None for r in m["retrieval_heldout"].values())
    lines = [
        "held-out photos (no product groups): same-label P@10 (queries: every held-out photo; gallery: every photo)"
        if no_groups
        else "held-out products: same-product retrieval (queries: held-out photos of products with 2+ photos; "
        "gallery: every photo)",
        "| features | Recall@1 | Recall@10 | same-type P@10 |",
        "|---|---|---|---|",
    ]
    for name, r in m["retrieval_heldout"].items():
        cells = [r.get("recall@1"), r.get("recall@10"), r.get("type_precision@10")]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    views = m.get("retrieval_heldout_views") or {}
    if len(views) > 1:
        lines += [
            "",
            "adapted embedding by test-time views averaged (`embedding_tta`)",
            "| views | Recall@1 | Recall@10 |",
        ]
        lines.append("|---|---|---|")
        lines += [f"| {n} | {r['recall@1']:.3f} | {r['recall@10']:.3f} |" for n, r in views.items()]
    lines += [
        "",
        "held-out tagging (photos of held-out products that have the label; as `tag` does it: the product-level "
        "columns pooled over each product's photos, marked *)",
        "| attribute | classes | n | accuracy | macro-F1 | per photo: accuracy |",
        "|---|---|---|---|---|---|",
    ]
    plevel = m.get("product_level_columns") or {}
    per_photo = m.get("tagging_heldout_per_photo") or {}
    for name, t in m["tagging_heldout"].items():
        pp = per_photo.get(name, {}).get("accuracy")
        lines.append(
            f"| {name}{' *' if name in plevel else ''} | {t['n_classes']} | {t['n']} | {t['accuracy']:.3f} | "
            f"{t['macro_f1']:.3f} | {'-' if pp is None else f'{pp:.3f}'} |"
        )
    cal = m.get("calibration_heldout") or {}
    if cal:
        lines += [
            "",
            "confidence calibration per photo (held-out products; each half's temperature fitted on the other half); "
            "`--min-confidence X` keeps the tags at or above X: share kept, their accuracy",
            "| attribute | T | accuracy | mean confidence: raw -> calibrated | ECE: raw -> calibrated | "
            + " | ".join(f">= {t}" for t in THRESHOLDS)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(THRESHOLDS),
        ]
        for name, c in cal.items():
            b, a = c["before"], c["after"]
            keep = [a["at_min_confidence"][str(t)] for t in THRESHOLDS]
            lines.append(
                f"| {name} | {c['temperature']:.2f} | {a['accuracy']:.3f} | {b['mean_confidence']:.3f} -> "
                f"{a['mean_confidence']:.3f} | {b['ece']:.3f} -> {a['ece']:.3f} | "
                + " | ".join(
                    f"{k['coverage']:.2f}, {k['accuracy']:.3f}" if k["accuracy"] is not None else "0, -" for k in keep
                )
                + " |"
            )
    return "\n".join(lines)
