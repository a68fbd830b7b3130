"""How does tagging accuracy grow with the number of labelled products, and how many would a goal need?

    python benchmarks/label_curve.py --data ../shared/data/hm --model MODEL_DIR --out docs/results
        [--workspace WS] [--columns product_type_name,colour_group_name]
        [--goals product_type_name=0.82,colour_group_name=0.80]

The classifier `fashionrec tag` trains without a model folder (frozen ImageNet backbone at the settings chosen from
the photos, logistic head; a colour column times the LightGBM booster of the garment's colour descriptor) is fitted
on 1/8, 1/4, 1/2 and all of the training products (two random subsets of products per fraction below 1), and scored
on the products the model folder held out, as `tag` scores them (product-level columns pooled over each product's
photos). Accuracy against log2(labelled products) is fitted by least squares; its slope (points per doubling) gets a
95% interval from a bootstrap over held-out products, and the goal is extrapolated from the probe's full-data
figure and from the adapted folder's (measured here on the same photos, as `tag --model` tags), assuming the
folder gains as much per doubling as the probe. Writes label_curve_<data>.md / .png / .json. Prints figures, never
asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def _slope(log_n: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """Least squares acc = a + b * log_n -> (a, b)."""
    b, a = np.polyfit(log_n, acc, 1)
    return float(a), float(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="an adapted folder: its held-out products, and its figure")
    ap.add_argument("--columns", default="product_type_name,colour_group_name")
    ap.add_argument("--goals", default="product_type_name=0.82,colour_group_name=0.80")
    ap.add_argument("--workspace", default=None, help="feature cache folder (default: none)")
    ap.add_argument("--seeds", type=int, default=2, help="random subsets of products per fraction below 1")
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from fashionrec.data.products import pool_by_product, product_level_columns
    from fashionrec.features import FeatureCache, decode_images_to_array, embed_arrays
    from fashionrec.tagging import Tagger
    from fashionrec.training.adapt import heldout_tagging, is_colour_column, load_heldout
    from fashionrec.training.colour import colour_features, combine_with_booster, fit_colour_booster
    from fashionrec.training.photo_defaults import resolve_photo_defaults
    from fashionrec.training.probe import fit_linear_probe
    from fashionrec.training.tasks import ClassifierConfig, prepare_backbone
    from fashionrec.workflows.classify import photo_decoder

    t0 = time.time()
    progress = not args.quiet
    columns = [c for c in args.columns.split(",") if c]
    goals = {k: float(v) for k, v in (g.split("=") for g in args.goals.split(",") if g)}
    h = load_heldout(args.model, args.data)
    m, cat, ids_all, groups_all, held = h.model, h.catalog, h.ids, h.groups, h.held
    meta = cat.metadata
    gid = dict(zip(ids_all, groups_all))

    # the adapted folder on its held-out photos, as `tag --model` tags them
    h_ids, h_groups, m_probs, _ = h.predict_heldout(progress=progress)
    truth = {
        c: np.array([v if isinstance(v, str) else "" for v in meta[c].reindex(h_ids).to_numpy()], object)
        for c in columns
    }
    folder, _ = heldout_tagging(truth, {c: m_probs[c] for c in columns}, m.classes, h_groups, h.product_level(columns))
    train_ids = [i for i, g in zip(ids_all, groups_all) if g not in held and i in meta.index]

    # the probe `tag` trains: settings chosen from the photos, features of every labelled photo + held-out photo
    d = resolve_photo_defaults(args.data, "auto")
    cfg = ClassifierConfig(backbone=d.backbone, input_size=d.input_size, taps=tuple(d.taps), flip_tta=d.flip_tta)
    need = sorted(set(train_ids) | set(h_ids))
    ids, x, failures = decode_images_to_array(
        {i: cat.image_paths[i] for i in need}, photo_decoder(cfg.input_size), progress=progress
    )
    prepared = prepare_backbone(cfg, x, progress=progress)
    cache = FeatureCache(args.workspace) if args.workspace else None
    F = embed_arrays(prepared.backbone, x, preprocess=prepared.preprocess, cache=cache, progress=progress)
    groups = np.array([gid[i] for i in ids])
    is_held = np.array([g in held for g in groups])
    train_products = np.unique(groups[~is_held & np.isin(ids, train_ids)])
    print(
        f"{len(ids)} photos ({len(failures)} unreadable); {len(train_products)} training products, "
        f"{len(held)} held out; probe: {cfg.backbone} at {cfg.input_size} px, taps {cfg.taps}",
        file=sys.stderr,
    )

    rows, points = [], {c: [] for c in columns}  # points: (log2 products, per-photo 0/1 on held-out photos)
    for c in columns:
        raw = np.array([v if isinstance(v, str) else "" for v in meta[c].reindex(ids).to_numpy()], object)
        test = is_held & (raw != "")
        colour = colour_features(x[~is_held | test]) if is_colour_column(c) else None
        col_pos = np.full(len(ids), -1)
        col_pos[~is_held | test] = np.arange(int((~is_held | test).sum()))
        for frac in FRACTIONS:
            for seed in range(1 if frac == 1.0 else args.seeds):
                rng = np.random.default_rng(seed)
                chosen = set(rng.permutation(train_products)[: max(1, round(len(train_products) * frac))])
                tr = ~is_held & (raw != "") & np.isin(groups, list(chosen))
                classes = sorted(set(raw[tr]))
                y = np.array([classes.index(v) for v in raw[tr]])
                probe = fit_linear_probe(F[tr], y, C=cfg.probe_C, seed=seed)
                p = np.zeros((len(ids), len(classes)))
                p[is_held] = Tagger.from_pipeline(c, probe).predict_proba(F[is_held], len(classes))
                if colour is not None:
                    booster = fit_colour_booster(
                        colour[col_pos[tr]], y, len(classes), seed=seed, threads=torch.get_num_threads()
                    )
                    p[test] = combine_with_booster(p[test], booster, colour[col_pos[test]])
                plevel = product_level_columns([i for i, t in zip(ids, tr) if t], meta, groups[tr], [c])
                if c in plevel:
                    p[is_held] = pool_by_product({c: p[is_held]}, groups[is_held], [c])[c]
                right = (np.array(classes, object)[p[test].argmax(1)] == raw[test]).astype(float)
                points[c].append((np.log2(len(chosen)), right))
                rows.append(
                    {
                        "column": c,
                        "fraction": frac,
                        "seed": seed,
                        "products": len(chosen),
                        "photos": int(tr.sum()),
                        "accuracy": round(float(right.mean()), 4),
                    }
                )
                print(
                    f"  {c}: {len(chosen)} products ({int(tr.sum())} photos), seed {seed}: {right.mean():.3f}",
                    file=sys.stderr,
                )
        # the test photos' products, for the bootstrap over products
        points[c] = (points[c], groups[test])

    summary = {}
    rng = np.random.default_rng(0)
    for c in columns:
        pts, g = points[c]
        log_n = np.array([p[0] for p in pts])
        R = np.stack([p[1] for p in pts])  # (fits, test photos)
        top = log_n >= log_n.max() - 1  # the last doubling: half of the products -> all of them
        uniq, inv = np.unique(g, return_inverse=True)
        boot = {"all": [], "last": []}
        for _ in range(args.resamples):
            w = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))[inv].astype(float)
            acc = (R * w).sum(1) / w.sum()
            boot["all"].append(_slope(log_n, acc)[1])
            boot["last"].append(_slope(log_n[top], acc[top])[1])
        full, n_full = float(R[-1].mean()), len(train_products)
        s = {"probe_full": full, "folder": float(folder[c]["accuracy"]), "products_full": int(n_full)}
        for k, sel in (("all", np.ones_like(top)), ("last", top)):
            s[f"slope_{k}"] = _slope(log_n[sel], R[sel].mean(1))[1]
            s[f"slope_{k}_ci"] = [float(v) for v in np.percentile(boot[k], [2.5, 97.5])]
        goal = goals.get(c)
        if goal is not None:
            s["goal"] = goal
            for k in ("all", "last"):
                for name, start in (("probe", full), ("folder", s["folder"])):
                    s[f"products_for_goal_{name}_{k}"] = {
                        q: (n_full * 2 ** ((goal - start) / v) if v > 0 else float("inf"))
                        for q, v in (
                            ("fit", s[f"slope_{k}"]),
                            ("slope_hi", s[f"slope_{k}_ci"][1]),
                            ("slope_lo", s[f"slope_{k}_ci"][0]),
                        )
                    }
        summary[c] = s

    name = Path(args.data).name
    md = [
        f"# Labelled products and tagging accuracy on {name}",
        "",
        f"Held-out photos: the {len(held)} products `{Path(args.model).name}` held out. The probe `tag` trains "
        f"without a model folder ({cfg.backbone} at {cfg.input_size} px, taps {list(cfg.taps)}"
        f"{', flip averaged' if cfg.flip_tta else ''}; colour columns x the colour booster), fitted on random "
        "subsets of the training products; product-level columns pooled over each product's photos, as `tag` does. "
        "Points per doubling: least squares of accuracy on log2(products), over all sizes and over the last doubling "
        "alone (half of the products -> all); intervals: bootstrap over held-out products.",
        "",
        "| column | " + " | ".join(f"{f:g} of the products" for f in FRACTIONS) + " | points per doubling: all sizes "
        "| last doubling | adapted folder (all products) |",
        "|---|" + "---|" * (len(FRACTIONS) + 3),
    ]
    for c in columns:
        by_f = [np.mean([r["accuracy"] for r in rows if r["column"] == c and r["fraction"] == f]) for f in FRACTIONS]
        n_f = [next(r["products"] for r in rows if r["column"] == c and r["fraction"] == f) for f in FRACTIONS]
        s = summary[c]
        md.append(
            f"| {c} | "
            + " | ".join(f"{v:.3f} ({n:,})" for v, n in zip(by_f, n_f))
            + "".join(
                f" | {100 * s[f'slope_{k}']:+.1f} [{100 * s[f'slope_{k}_ci'][0]:+.1f}, {100 * s[f'slope_{k}_ci'][1]:+.1f}]"
                for k in ("all", "last")
            )
            + f" | {s['folder']:.3f} |"
        )
    md += [
        "",
        "Labelled products a goal would need if each doubling gained as much as measured here (in brackets: "
        "at the ends of the slope's interval):",
        "",
    ]
    md += ["| column | goal | slope | from the probe | from the adapted folder |", "|---|---|---|---|---|"]
    for c in columns:
        s = summary[c]
        if "goal" not in s:
            continue
        for k, label in (("all", "all sizes"), ("last", "last doubling")):
            cell = []
            for who in ("probe", "folder"):
                n = s[f"products_for_goal_{who}_{k}"]
                cell.append(
                    f"{n['fit']:,.0f} ({n['slope_hi']:,.0f} to {n['slope_lo']:,.0f}); "
                    f"{n['fit'] / s['products_full']:.1f}x the {s['products_full']:,} here"
                )
            md.append(f"| {c} | {s['goal']:.2f} | {label} | {cell[0]} | {cell[1]} |")
    md += ["", f"({time.time() - t0:.0f} s)"]
    text = "\n".join(md)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"label_curve_{name}.md").write_text(text + "\n")
        (out / f"label_curve_{name}.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
        _plot(rows, summary, columns, out / f"label_curve_{name}.png")
    return 0


def _plot(rows, summary, columns, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 4), squeeze=False)
    for ax, c in zip(axes[0], columns):
        r = [x for x in rows if x["column"] == c]
        ax.scatter([x["products"] for x in r], [x["accuracy"] for x in r], color="C0", label="tag's probe")
        s = summary[c]
        xs = np.array([min(x["products"] for x in r), s["products_full"] * 16])
        b = s["slope_last"]
        ax.plot(xs, s["probe_full"] + b * np.log2(xs / s["products_full"]), "--", color="C0", lw=1)
        ax.scatter([s["products_full"]], [s["folder"]], color="C1", marker="*", s=120, label="adapted folder")
        ax.plot(xs, s["folder"] + b * np.log2(xs / s["products_full"]), ":", color="C1", lw=1)
        if "goal" in s:
            ax.axhline(s["goal"], color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled training products")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(c)
        ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
