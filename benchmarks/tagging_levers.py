"""Three ways to tag type and colour better without more labels, each paired against the classifier it extends.

    python benchmarks/tagging_levers.py --data ../shared/data/hm --model MODEL_DIR --workspace WS
        [--second-backbone efficientnet_lite2 --second-size 260]

Photos: the labelled photos of the products the adapted folder held out (type pooled over each product's photos,
as `fashionrec tag` does). The probe is the one `tag` trains without a model folder (settings chosen from the
photos); colour is the probe times the LightGBM booster of the garment's colour descriptor.

1. Self-training (type): the photos without a catalog row join the probe's training photos, those of training
   products with their product's type, those of other products (not held out) with the probe's pooled prediction
   when it is at least 0.7 / 0.9 sure.
2. The colour hierarchy (colour): the perceived master colour (and value) predicted as well, each group's
   probability times its master's (and value's) to the power 0.5 / 1, or the master first and the group within it.
3. A second network (type and colour): the adapted folder's heads times an ImageNet probe of a larger backbone at a
   larger size (geometric mean, weight 0.3 / 0.5 on the probe).

Differences: 95% intervals from a bootstrap over held-out products. Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

TYPE, COLOUR = "product_type_name", "colour_group_name"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="an adapted folder: its held-out products and heads")
    ap.add_argument("--workspace", default=None, help="feature cache folder (default: none)")
    ap.add_argument("--second-backbone", default="efficientnet_lite2")
    ap.add_argument("--second-size", type=int, default=260)
    ap.add_argument("--out", default=None, help="folder for tagging_levers_<data name>.md")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from fashionrec.backbones import create_backbone
    from fashionrec.data.products import pool_by_product
    from fashionrec.evaluation.metrics import paired_bootstrap_by_group
    from fashionrec.features import FeatureCache, Preprocess, decode_images_to_array, embed_arrays
    from fashionrec.tagging import Tagger
    from fashionrec.training.adapt import load_heldout
    from fashionrec.training.colour import colour_features, fit_colour_booster
    from fashionrec.training.photo_defaults import resolve_photo_defaults
    from fashionrec.training.probe import fit_linear_probe
    from fashionrec.training.tasks import ClassifierConfig, prepare_backbone
    from fashionrec.workflows.classify import photo_decoder

    t0 = time.time()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text)
        lines.append(text)

    progress = not args.quiet
    threads = torch.get_num_threads()
    h = load_heldout(args.model, args.data)
    m, cat, held = h.model, h.catalog, h.held
    meta = cat.metadata
    cache = FeatureCache(args.workspace) if args.workspace else None
    d = resolve_photo_defaults(args.data, "auto")
    cfg = ClassifierConfig(backbone=d.backbone, input_size=d.input_size, taps=tuple(d.taps), flip_tta=d.flip_tta)
    ids, x, failures = decode_images_to_array(
        dict(sorted(cat.image_paths.items())), photo_decoder(cfg.input_size), progress=progress
    )
    prepared = prepare_backbone(cfg, x, progress=progress)
    F = embed_arrays(prepared.backbone, x, preprocess=prepared.preprocess, cache=cache, progress=progress)
    ids = np.array(ids)
    product_of = dict(zip(h.ids, h.groups))
    groups = np.array([product_of[i] for i in ids])
    is_held = np.array([g in held for g in groups])
    has_row = np.isin(ids, meta.index)
    lab = {
        c: np.array([v if isinstance(v, str) else "" for v in meta[c].reindex(ids).to_numpy()], object)
        for c in (TYPE, COLOUR, "perceived_colour_master_name", "perceived_colour_value_name")
    }
    tr = ~is_held & has_row
    te = is_held & (lab[TYPE] != "")
    print(
        f"{len(ids)} photos ({len(failures)} unreadable), {int(tr.sum())} labelled training photos, "
        f"{int(te.sum())} held-out; probe: {cfg.backbone} at {cfg.input_size} px",
        file=sys.stderr,
    )

    def probe_probs(mask, y, classes, rows):
        probe = Tagger.from_pipeline("probe", fit_linear_probe(F[mask], y, C=cfg.probe_C, seed=0))
        return probe.predict_proba(F[rows], len(classes))

    def report(name, base, new):
        _, (lo, hi) = paired_bootstrap_by_group(base, new, groups[te])
        say(f"  {name}: {new.mean():.3f} ({new.mean() - base.mean():+.3f} [{lo:+.3f}, {hi:+.3f}])")

    # 1. self-training on the photos without a catalog row (type)
    classes = sorted(set(lab[TYPE][tr]))
    index = {c: i for i, c in enumerate(classes)}

    def type_accuracy(mask, y):
        p = probe_probs(mask, y, classes, is_held)
        pooled = pool_by_product({TYPE: p}, groups[is_held], [TYPE])[TYPE]
        return (np.array(classes, object)[pooled[te[is_held]].argmax(1)] == lab[TYPE][te]).astype(float)

    y_tr = np.array([index[v] for v in lab[TYPE][tr]])
    base = type_accuracy(tr, y_tr)
    say(f"1. self-training, {TYPE}: the probe {base.mean():.3f}")
    by_product = {}
    for g, v in zip(groups[tr], lab[TYPE][tr]):
        by_product.setdefault(g, []).append(v)
    by_product = {g: max(set(v), key=v.count) for g, v in by_product.items()}
    sib = ~has_row & ~is_held & np.isin(groups, list(by_product))
    y = np.full(len(ids), -1)
    y[tr] = y_tr
    y[sib] = [index[by_product[g]] for g in groups[sib]]
    report(
        f"+ {int(sib.sum())} photos of training products, their product's type", base, type_accuracy(y >= 0, y[y >= 0])
    )
    other = ~has_row & ~is_held & ~sib
    p_other = pool_by_product({TYPE: probe_probs(y >= 0, y[y >= 0], classes, other)}, groups[other], [TYPE])[TYPE]
    for tau in (0.7, 0.9):
        sure = p_other.max(1) >= tau
        y2 = y.copy()
        y2[np.where(other)[0][sure]] = p_other[sure].argmax(1)
        report(
            f"+ those and {int(sure.sum())} photos of {len(set(groups[other][sure]))} other products at >= {tau}",
            base,
            type_accuracy(y2 >= 0, y2[y2 >= 0]),
        )

    # 2. the colour hierarchy
    H = colour_features(x[tr | te])
    hpos = np.full(len(ids), -1)
    hpos[tr | te] = np.arange(int((tr | te).sum()))
    del x

    def colour_probs(col):
        cls = sorted(set(lab[col][tr]) - {""})
        keep = tr & (lab[col] != "")
        yy = np.array([cls.index(v) for v in lab[col][keep]])
        p = probe_probs(keep, yy, cls, te)
        b = fit_colour_booster(H[hpos[keep]], yy, len(cls), seed=0, threads=threads)
        p = p * b.predict(H[hpos[te]]).reshape(len(p), -1)
        return cls, p / p.sum(1, keepdims=True)

    cg, pg = colour_probs(COLOUR)
    right = lambda p: (np.array(cg, object)[p.argmax(1)] == lab[COLOUR][te]).astype(float)  # noqa: E731
    base_c = right(pg)
    say(f"2. the colour hierarchy, {COLOUR}: the probe x the booster {base_c.mean():.3f}")
    parents = {}
    for col in ("perceived_colour_master_name", "perceived_colour_value_name"):
        cls, p = colour_probs(col)
        acc = float((np.array(cls, object)[p.argmax(1)] == lab[col][te]).mean())
        say(f"  {col} alone: {acc:.3f} ({len(cls)} classes)")
        tr_g, tr_p = lab[COLOUR][tr], lab[col][tr]
        first = [cls.index(max(set(tr_p[tr_g == c]), key=list(tr_p[tr_g == c]).count)) for c in cg]
        parents[col] = p[:, first]  # each colour group's probability of its usual parent
    for lm, lv in ((0.5, 0.0), (1.0, 0.0), (0.5, 0.5), (1.0, 1.0)):
        p = pg * parents["perceived_colour_master_name"] ** lm * parents["perceived_colour_value_name"] ** lv
        report(f"x master^{lm} x value^{lv}", base_c, right(p))
    master = parents["perceived_colour_master_name"]
    first = master == master.max(1, keepdims=True)
    report("the master first, then the group within it", base_c, right(pg * first + 1e-12 * pg))

    # 3. the adapted heads times a probe of a second, larger network
    bb = create_backbone(args.second_backbone, input_size=args.second_size, taps=tuple(d.taps))
    bb.flip_tta = True
    both = tr | is_held
    h_ids, h_x, _ = decode_images_to_array(
        {i: cat.image_paths[i] for i in ids[both]}, photo_decoder(args.second_size), progress=progress
    )
    F2 = embed_arrays(bb, h_x, preprocess=Preprocess.for_backbone(bb), cache=cache, progress=progress)
    del h_x
    h_pos = {i: k for k, i in enumerate(h_ids)}
    m_ids, _, m_probs, _ = h.predict_heldout(progress=False)
    m_pos = {i: k for k, i in enumerate(m_ids)}
    held_ids = [i for i in ids[is_held] if i in h_pos and i in m_pos]  # the readable held-out photos
    is_te = np.isin(held_ids, ids[te])
    held_groups = groups[np.searchsorted(ids, held_ids)]
    say(f"3. the adapted heads x an ImageNet probe of {args.second_backbone} at {args.second_size} px")
    for col in (TYPE, COLOUR):
        cls = list(m.classes[col])
        keep = tr & np.isin(lab[col], cls)
        probe = fit_linear_probe(
            F2[[h_pos[i] for i in ids[keep]]], np.array([cls.index(v) for v in lab[col][keep]]), C=cfg.probe_C, seed=0
        )
        p2 = Tagger.from_pipeline(col, probe).predict_proba(F2[[h_pos[i] for i in held_ids]], len(cls))
        pa = m_probs[col][[m_pos[i] for i in held_ids]]
        truth = lab[col][np.searchsorted(ids, held_ids)][is_te]

        def acc(p, cls=cls, col=col, truth=truth):
            if col == TYPE:  # product-level: pooled over each product's held-out photos, as `tag` does
                p = pool_by_product({col: p}, held_groups, [col])[col]
            return (np.array(cls, object)[p[is_te].argmax(1)] == truth).astype(float)

        a0 = acc(pa)
        say(f"  {col}: the adapted heads {a0.mean():.3f}, the second probe alone {acc(p2).mean():.3f}")
        for w in (0.3, 0.5):
            pe = np.exp((1 - w) * np.log(pa + 1e-9) + w * np.log(p2 + 1e-9))
            report(f"heads x probe, weight {w}", a0, acc(pe / pe.sum(1, keepdims=True)))
    say(f"({time.time() - t0:.0f} s)")
    if args.out:
        from pathlib import Path

        path = Path(args.out) / f"tagging_levers_{Path(args.data).name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "\n".join(f"    {t}" for t in lines)
        path.write_text(
            f"# Tagging without more labels on {Path(args.data).name}\n\nFolder `{Path(args.model).name}`; "
            f"`python benchmarks/tagging_levers.py --data {args.data} --model MODEL_DIR --workspace WS`, 2-core CPU."
            f"\n\n{body}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
