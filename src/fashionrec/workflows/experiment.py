"""The label-efficiency experiment and the offline Fashion-MNIST demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.workflows.classify import FASHION_MNIST, held_out_split, load_labelled_photos


def parse_ks(spec: str) -> list:
    """'1,5,all' -> [1, 5, 'all']."""
    return [k if k == "all" else int(k) for k in spec.split(",")]


def label_efficiency(
    dataset: str,
    *,
    cfg,
    out: str | Path,
    ks: list,
    seeds: list[int],
    methods: list[str],
    data_dir: str | Path | None = None,
    label_column: str | None = None,
    pool: int = 10000,
    test_size: int = 10000,
    finetune_max_k: int = 100,
    cache=None,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Test accuracy against the number of labels per class, per method (see run_label_efficiency).

    Fashion-MNIST: a `pool` of train images drawn with the run's seed, the first `test_size` test images.
    A photo folder: the held-out fifth of the labelled articles (the same split `train` uses with the same seed);
    classes too small to give the largest k are dropped."""
    from fashionrec.evaluation.label_efficiency import run_label_efficiency

    rng = np.random.default_rng(cfg.seed)
    if dataset == FASHION_MNIST:
        from fashionrec.data.fashion_mnist import load_fashion_mnist

        d = load_fashion_mnist(data_dir)
        sel = rng.permutation(len(d.y_train))[:pool]
        x_pool, y_pool, classes = d.x_train[sel], d.y_train[sel], list(d.classes)
        x_te, y_te = d.x_test[:test_size], d.y_test[:test_size]
        unl = x_pool
        title = f"Fashion-MNIST label efficiency ({cfg.backbone}, {cfg.input_size}px)"
    else:
        photos = load_labelled_photos(Path(dataset), label_column, cfg.input_size, progress)
        x, y, classes = photos.images, photos.labels, photos.classes
        tr, te = held_out_split(len(photos.ids), cfg.seed, y=y)  # `train`'s split: the same test photos
        counts = np.bincount(y[tr], minlength=len(classes))
        kmax = max(int(k) for k in ks if k != "all") if any(k != "all" for k in ks) else 1
        keep_cls = np.flatnonzero(counts >= kmax)
        remap = -np.ones(len(classes), dtype=int)
        remap[keep_cls] = np.arange(len(keep_cls))
        tr = tr[np.isin(y[tr], keep_cls)]
        te = te[np.isin(y[te], keep_cls)]
        x_pool, y_pool, x_te, y_te = x[tr], remap[y[tr]], x[te], remap[y[te]]
        classes = [classes[c] for c in keep_cls]
        unl = x
        title = f"H&M {label_column} label efficiency ({cfg.backbone}, {cfg.input_size}px)"
    return run_label_efficiency(
        x_pool,
        y_pool,
        x_te,
        y_te,
        classes,
        ks=ks,
        seeds=seeds,
        methods=methods,
        out_dir=out,
        classifier_cfg=cfg,
        unlabelled=unl,
        cache=cache,
        finetune_max_k=finetune_max_k,
        title=title,
        progress=progress,
        resume=resume,
    )


# ---------------------------------------------------------------- demo
@dataclass
class DemoData:
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]


def demo_data(data_dir: str | Path | None, pool: int, test_size: int, seed: int) -> DemoData:
    """A random pool of Fashion-MNIST train images (labels drawn from it) and a random test sample."""
    from fashionrec.data.fashion_mnist import load_fashion_mnist

    d = load_fashion_mnist(data_dir)
    rng = np.random.default_rng(seed)
    sel = rng.permutation(len(d.y_train))[:pool]
    test = rng.permutation(len(d.y_test))[:test_size]
    return DemoData(d.x_train[sel], d.y_train[sel], d.x_test[test], d.y_test[test], list(d.classes))


def demo_classifier(
    data: DemoData, out: str | Path, cfg, labels_per_class: int, *, cache=None, progress: bool = True
) -> dict:
    """A few-label linear probe: metrics.json, confusion.png, model.pt and predictions.png (32 test images)."""
    from fashionrec.data.fashion_mnist import sample_per_class
    from fashionrec.evaluation.plots import image_grid
    from fashionrec.training.tasks import evaluate_classifier, train_image_classifier, write_run

    out = Path(out)
    idx = sample_per_class(data.y_pool, labels_per_class, cfg.seed)
    trained = train_image_classifier(
        data.x_pool[idx], data.y_pool[idx], data.classes, cfg, unlabelled=data.x_pool, cache=cache, progress=progress
    )
    result = evaluate_classifier(trained, data.x_test, data.y_test, cache=cache)
    metrics = write_run(out, trained, result, extra={"labels_per_class": labels_per_class, "n_train": int(len(idx))})
    pred, y_te = result["_pred"], data.y_test
    show = np.arange(min(32, len(data.x_test)))
    caps = [f"{data.classes[pred[i]]}\n(true: {data.classes[y_te[i]]})" for i in show]
    cols = ["green" if pred[i] == y_te[i] else "red" for i in show]
    image_grid(
        [data.x_test[i] for i in show],
        caps,
        out / "predictions.png",
        colors=cols,
        title=f"{labels_per_class} labels/class: predicted (true); red = wrong",
    )
    return metrics


def demo_label_efficiency(data: DemoData, out: str | Path, cfg, *, cache=None, progress: bool = True) -> dict:
    """One seed of the label-efficiency curve (pixels vs probe) in out/label_efficiency/."""
    from fashionrec.evaluation.label_efficiency import run_label_efficiency

    smallest = int(np.bincount(data.y_pool).min())
    ks = [k for k in (1, 5, 10, 50) if k <= smallest]  # a small pool cannot give 50 per class
    return run_label_efficiency(
        data.x_pool,
        data.y_pool,
        data.x_test,
        data.y_test,
        data.classes,
        ks=ks,
        seeds=[cfg.seed],
        methods=["pixels", "probe"],
        out_dir=Path(out) / "label_efficiency",
        classifier_cfg=cfg,
        unlabelled=data.x_pool,
        cache=cache,
        progress=progress,
        title="Fashion-MNIST (demo)",
    )
