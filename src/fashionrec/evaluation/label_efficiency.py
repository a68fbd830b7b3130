"""Label-efficiency experiment: accuracy vs labelled examples per class, several methods and seeds.

Methods
- `pixels`: raw pixels + logistic regression (the baseline transfer must beat);
- `scratch`: a small CNN trained from scratch on the labelled examples;
- `probe`: frozen pretrained features (+ domain handling) + logistic regression;
- `finetune`: the staged fine-tuning schedule, started from the probe's head.
Features for the whole train pool and the test set are extracted once (and cached), then every (k, seed) probe
reuses them: the expensive step is paid once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fashionrec.config import DEFAULT_MEAN, DEFAULT_STD
from fashionrec.data.fashion_mnist import sample_per_class
from fashionrec.errors import FashionrecError
from fashionrec.evaluation.metrics import accuracy, macro_f1
from fashionrec.io import write_json, write_text

log = logging.getLogger(__name__)
ALL_METHODS = ("pixels", "scratch", "probe", "finetune")


PIXEL_SIDE = 32  # the pixel baseline sees images at most this size (Fashion-MNIST: its native 28 px)
SCRATCH_SIDE = 64  # the from-scratch CNN trains at most at this size


def shrink(x: np.ndarray, side: int) -> np.ndarray:
    """uint8 (N, H, W[, 3]) -> at most side x side, area-averaged (no-op when already small enough)."""
    if x.shape[1] <= side and x.shape[2] <= side:
        return x
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(side, side), mode="area").round_().clamp_(0, 255).to(torch.uint8)
    t = t[:, 0] if x.ndim == 3 else t.permute(0, 2, 3, 1)
    return t.contiguous().numpy()


def _pixels(x_tr, y_tr, x_te, seed):
    from sklearn.linear_model import LogisticRegression

    f = lambda x: shrink(x, PIXEL_SIDE).reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    # C=0.1 on unscaled [0, 1] pixels was the strongest of C in {1, 0.1, 0.01} (+/- scaling) at k=10 and 100:
    # the baseline is tuned, not a straw man. Colour photos are shrunk to 32 px (3,072 values): logistic regression
    # on 128 px photos (49,152 values) is many times slower (its accuracy there was not measured).
    clf = LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    return clf.fit(f(x_tr), y_tr).predict(f(x_te))


def _scratch(x_tr, y_tr, x_te, n_classes, seed, epochs_budget=600):
    """TinyCNN from scratch at native resolution; epochs scale so that small k still gets enough steps."""
    from fashionrec.backbones import create_backbone
    from fashionrec.features import Preprocess
    from fashionrec.training.finetune import FinetuneConfig, finetune, predict_logits

    bb = create_backbone("tiny_cnn", seed=seed)
    size = min(x_tr.shape[1], SCRATCH_SIDE)
    pre = Preprocess(size, DEFAULT_MEAN, DEFAULT_STD, invert=False)
    steps_per_epoch = max(1, -(-len(x_tr) // 64))
    epochs = int(np.clip(epochs_budget // steps_per_epoch, 2, 40))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x_tr))
    n_val = len(x_tr) // 5 if len(x_tr) >= 5 * n_classes else 0
    val, tr = perm[:n_val], perm[n_val:]
    cfg = FinetuneConfig(
        stages=(("all", epochs),), lr=3e-3, lr_decay=1.0, patience=max(5, epochs // 4), seed=seed, hflip=True
    )
    res = finetune(bb, x_tr[tr], y_tr[tr], x_tr[val], y_tr[val], n_classes, pre, cfg, progress=False)
    return predict_logits(res.model, x_te, pre).argmax(1)


def _k(k: str):
    return k if k == "all" else int(k)


def experiment_setup(x_pool, y_pool, x_test, y_test, classes, classifier_cfg) -> dict:
    """What makes two runs comparable: the same data (hashed), classes, feature and fine-tuning settings."""
    import hashlib
    import json
    from dataclasses import asdict

    def h(*arrays):
        d = hashlib.sha1()
        for a in arrays:
            d.update(np.ascontiguousarray(a).tobytes())
        return d.hexdigest()[:16]

    c = classifier_cfg
    return {
        "pool": h(x_pool, y_pool),
        "test": h(x_test, y_test),
        "n_pool": int(len(y_pool)),
        "n_test": int(len(y_test)),
        "classes": list(map(str, classes)),
        "backbone": c.backbone,
        "input_size": c.input_size,
        "invert": c.invert,
        "taps": None if c.taps is None else list(map(str, c.taps)),
        "adapt_bn": c.adapt_bn,
        "probe_C": c.probe_C,
        "finetune": {k: v for k, v in json.loads(json.dumps(asdict(c.finetune))).items() if k != "seed"},
    }


def _previous_runs(path: Path, setup: dict) -> list[dict]:
    import json

    if not path.exists():
        return []
    try:
        prev = json.loads(path.read_text())
    except ValueError as e:
        raise FashionrecError(f"{path}: not readable JSON ({e}); move it away or pass --fresh") from e
    if prev.get("setup") != setup:
        diff = sorted(k for k in setup if (prev.get("setup") or {}).get(k) != setup[k])
        raise FashionrecError(
            f"{path} holds runs of a different setup (differs in: {', '.join(diff)}); "
            "use another --out, or --fresh to start over"
        )
    return list(prev.get("runs", []))


def _probe_features(x_pool, x_test, classifier_cfg, unlabelled, cache, progress):
    """One prepared backbone (domain handling, adapted BN) for the whole pool: features computed once, probes per
    (k, seed)."""
    from fashionrec.features import embed_arrays
    from fashionrec.training import tasks

    prep = tasks.prepare_backbone(
        classifier_cfg, x_pool, progress=progress, unlabelled=unlabelled if unlabelled is not None else x_pool
    )
    f_pool = embed_arrays(
        prep.backbone, x_pool, preprocess=prep.preprocess, cache=cache, desc="embed pool", progress=progress
    )
    f_test = embed_arrays(
        prep.backbone, x_test, preprocess=prep.preprocess, cache=cache, desc="embed test", progress=progress
    )
    return f_pool, f_test


def _predict(m, idx, x_pool, y_pool, x_test, classes, seed, classifier_cfg, feats, unlabelled, cache):
    """Test-set predictions of method `m` trained on the labelled examples `idx` of the pool."""
    if m == "pixels":
        return _pixels(x_pool[idx], y_pool[idx], x_test, seed)
    if m == "scratch":
        return _scratch(x_pool[idx], y_pool[idx], x_test, len(classes), seed)
    if m == "probe":
        from fashionrec.training.probe import fit_linear_probe

        clf = fit_linear_probe(feats[0][idx], y_pool[idx], C=classifier_cfg.probe_C, seed=seed)
        return clf.predict(feats[1])
    if m == "finetune":
        from fashionrec.training import tasks

        cfg = replace(classifier_cfg, method="finetune", seed=seed)
        tr = tasks.train_image_classifier(
            x_pool[idx],
            y_pool[idx],
            classes,
            cfg,
            unlabelled=unlabelled if unlabelled is not None else x_pool,
            cache=cache,
            progress=False,
        )
        return tr.predict_proba(x_test).argmax(1)
    raise ValueError(f"unknown method '{m}'; choose from {ALL_METHODS}")


def _summarise(runs: list[dict], ks: list, methods: list[str]) -> tuple[dict, list]:
    """table[method][k] = (mean, std) of accuracy over seeds, for the ks and methods asked and those already run."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    ks = list(dict.fromkeys([*ks, *(_k(r["k"]) for r in runs)]))
    ks.sort(key=lambda k: float("inf") if k == "all" else int(k))
    methods = list(dict.fromkeys([*(m for m in ALL_METHODS if any(r["method"] == m for r in runs)), *methods]))
    for m in methods:
        for k in ks:
            accs = [r["accuracy"] for r in runs if r["method"] == m and r["k"] == str(k)]
            if accs:
                table.setdefault(m, {})[str(k)] = (float(np.mean(accs)), float(np.std(accs)))
    return table, ks


def _table_markdown(table: dict, ks: list, title: str, n_test: int, n_pool: int, seeds: list[int]) -> str:
    lines = [
        f"# {title}",
        "",
        f"test images: {n_test}; train pool: {n_pool}; seeds: {seeds}",
        "",
        "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---" * (len(ks) + 1) + "|",
    ]
    for m, row in table.items():
        lines.append(
            f"| {m} | "
            + " | ".join(f"{row[str(k)][0]:.3f} ± {row[str(k)][1]:.3f}" if str(k) in row else "-" for k in ks)
            + " |"
        )
    return "\n".join(lines) + "\n"


def run_label_efficiency(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: list[str],
    *,
    ks: list,
    seeds: list[int],
    methods: list[str],
    out_dir: str | Path,
    classifier_cfg,
    unlabelled: np.ndarray | None = None,
    cache=None,
    finetune_max_k: int = 100,
    title: str = "label efficiency",
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Returns table[method][k] = (mean, std) of test accuracy; writes results.json, table.md and curve.png.

    results.json is rewritten after every run, so an interrupted experiment loses at most one run; with `resume`
    the runs already in `out_dir/results.json` are kept and skipped (a second call with more methods or seeds
    only pays for what is new). The saved setup (data, backbone, preprocessing) must match, or it refuses.
    """
    from fashionrec.evaluation.plots import plot_label_efficiency

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = experiment_setup(x_pool, y_pool, x_test, y_test, classes, classifier_cfg)
    runs = _previous_runs(out / "results.json", setup) if resume else []
    done = {(r["method"], r["k"], r["seed"]) for r in runs}
    if runs and progress:
        print(f"  resuming: {len(runs)} runs already in {out / 'results.json'}", flush=True)

    def pending(m):
        return any((m, str(k), s) not in done for k in ks for s in seeds)

    feats = None
    if "probe" in methods and pending("probe"):
        feats = _probe_features(x_pool, x_test, classifier_cfg, unlabelled, cache, progress)
    for k in ks:
        kk = None if k == "all" else int(k)
        for seed in seeds:
            idx = sample_per_class(y_pool, kk, seed)
            for m in methods:
                if m == "finetune" and (kk if kk is not None else len(y_pool)) > finetune_max_k:
                    continue  # CPU budget; "all" counts as the pool size
                if (m, str(k), seed) in done:
                    continue
                t0 = time.time()
                pred = _predict(m, idx, x_pool, y_pool, x_test, classes, seed, classifier_cfg, feats, unlabelled, cache)
                run = {
                    "method": m,
                    "k": str(k),
                    "seed": seed,
                    "accuracy": accuracy(y_test, pred),
                    "macro_f1": macro_f1(y_test, pred),
                    "seconds": round(time.time() - t0, 1),
                }
                runs.append(run)
                write_json(out / "results.json", {"runs": runs, "setup": setup, "config": str(classifier_cfg)})
                if progress:
                    print(
                        f"  {m:9s} k={str(k):>4s} seed={seed}: acc {run['accuracy']:.4f} f1 {run['macro_f1']:.4f} ({run['seconds']}s)",
                        flush=True,
                    )
    table, ks = _summarise(runs, ks, methods)
    md = _table_markdown(table, ks, title, len(y_test), len(y_pool), seeds)
    write_text(out / "table.md", md)
    write_json(out / "results.json", {"runs": runs, "table": table, "setup": setup, "config": str(classifier_cfg)})
    plot_label_efficiency(table, out / "curve.png", title)
    print(md)
    return table
