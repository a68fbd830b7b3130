"""End-to-end classification tasks used by the CLI, the experiments and the Python API.

`train_image_classifier` is the one recipe: `prepare_backbone` (backbone + domain handling) -> cached features ->
linear probe -> (optionally) staged fine-tuning, giving a `Classifier` (training/classifier.py: the one classifier
type, with its predict path and checkpoint); `write_run` puts metrics, plots and the checkpoint in `out_dir`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fashionrec.backbones import create_backbone
from fashionrec.backbones.base import DEFAULT_BACKBONE, Backbone
from fashionrec.config import DEFAULT_INPUT_SIZE
from fashionrec.evaluation.metrics import accuracy, confusion_matrix, macro_f1
from fashionrec.features import FeatureCache, Preprocess, embed_arrays
from fashionrec.io import write_json
from fashionrec.training import probe as probe_module
from fashionrec.training.classifier import Classifier, ProbeHead, expand_proba, softmax  # noqa: F401  (public here)
from fashionrec.training.domain import adapt_batchnorm
from fashionrec.training.finetune import FinetuneConfig, finetune, predict_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierConfig:
    """Resolved settings of one training run; saved as `config.json` beside its outputs."""

    method: str = "linear-probe"  # linear-probe | finetune
    backbone: str = DEFAULT_BACKBONE
    input_size: int = DEFAULT_INPUT_SIZE
    invert: bool | None = None  # None: auto (invert light-on-dark greyscale inputs)
    adapt_bn: bool = False  # re-estimate BN statistics on unlabelled target images (AdaBN)
    bn_images: int = 4000
    taps: tuple | None = None  # None: auto (see default_taps)
    probe_C: float = 0.1
    seed: int = 0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self):
        if self.method not in {"linear-probe", "finetune"}:
            raise ValueError(f"method must be 'linear-probe' or 'finetune', not '{self.method}'")
        if self.input_size < 16:
            raise ValueError("input_size must be at least 16")


def is_light_on_dark(images: np.ndarray, sample: int = 500) -> bool:
    """Fashion-MNIST-style images: dark border, light object. Decided from the border pixels' mean."""
    x = images[:sample].astype(np.float32)
    border = np.concatenate(
        [
            x[:, 0].reshape(len(x), -1),
            x[:, -1].reshape(len(x), -1),
            x[:, :, 0].reshape(len(x), -1),
            x[:, :, -1].reshape(len(x), -1),
        ],
        axis=1,
    )
    return float(border.mean()) < 64.0


def default_taps(backbone_name: str, shifted: bool) -> tuple:
    """Which layers to pool, as measured with EfficientNet-Lite0:
    - strongly shifted inputs (28 px greyscale, light on dark): blocks 4+5; +6 points over pre-logits at 10 labels;
    - shop photos: block 5 + pre-logits; +1.8 points (product group) and +1.5 (product type) on H&M at 128 px."""
    if not backbone_name.startswith("efficientnet_lite"):
        return ("final",)
    return (4, 5) if shifted else (5, "final")


TrainedClassifier = Classifier  # compatible alias: trained and loaded classifiers are one type


@dataclass
class PreparedBackbone:
    """A backbone ready to embed a task's images: domain handling applied (inversion, taps, AdaBN)."""

    backbone: Backbone
    preprocess: Preprocess
    config: ClassifierConfig  # with invert and taps resolved


def prepare_backbone(
    cfg: ClassifierConfig, images: np.ndarray, *, unlabelled: np.ndarray | None = None, progress: bool = True
) -> PreparedBackbone:
    """The backbone and preprocessing a classifier for `images` would use (what the label-efficiency experiment
    embeds its whole pool with): light-on-dark inputs inverted and pooled from mid-level blocks (auto), BN statistics
    re-estimated on `unlabelled` (else `images`) when `cfg.adapt_bn`."""
    shifted = images.ndim == 3 and is_light_on_dark(images)
    invert = cfg.invert if cfg.invert is not None else shifted
    taps = cfg.taps if cfg.taps is not None else default_taps(cfg.backbone, shifted)
    backbone = create_backbone(cfg.backbone, input_size=cfg.input_size, taps=taps)
    pre = Preprocess.for_backbone(backbone, invert=bool(invert))
    cfg = replace(cfg, invert=bool(invert), taps=tuple(taps))
    if cfg.adapt_bn:
        pool = unlabelled if unlabelled is not None else images
        adapt_batchnorm(backbone, pool, pre, max_images=cfg.bn_images, seed=cfg.seed, progress=progress)
        # The adapted statistics are part of the model: the cache key must differ from the ImageNet-BN one.
        bn_hash = hashlib.sha1(
            np.ascontiguousarray(pool[:64]).tobytes() + str((len(pool), cfg.bn_images, cfg.seed)).encode()
        ).hexdigest()[:8]
        backbone.weights_id += f"+adabn:{bn_hash}"
    return PreparedBackbone(backbone, pre, cfg)


def train_image_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    classes: list[str],
    cfg: ClassifierConfig,
    *,
    unlabelled: np.ndarray | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
    device=None,
) -> Classifier:
    """Train on uint8 images (greyscale (N,H,W) or RGB (N,H,W,3)) with integer labels. `device`: where the backbone
    embeds and fine-tunes (None: the CPU)."""
    prepared = prepare_backbone(cfg, x_train, unlabelled=unlabelled, progress=progress)
    backbone, pre, cfg = prepared.backbone, prepared.preprocess, prepared.config
    # Fine-tuning holds out a validation split for early stopping. The probe that starts its head is fitted on the
    # training part only: a head that has seen the validation images scores them perfectly, and early stopping
    # would then always pick the untouched probe.
    n_val = 0
    if cfg.method == "finetune" and len(x_train) >= 5 * len(classes):
        n_val = min(len(x_train) // 5, 5000)
    if n_val:
        perm = np.random.default_rng(cfg.seed).permutation(len(x_train))
        x_val, y_val, x_tr, y_tr = (
            x_train[perm[:n_val]],
            y_train[perm[:n_val]],
            x_train[perm[n_val:]],
            y_train[perm[n_val:]],
        )
    else:  # no copy of the (possibly large) training set when nothing is held out
        x_val, y_val, x_tr, y_tr = x_train[:0], y_train[:0], x_train, y_train
    feats = embed_arrays(
        backbone, x_tr, preprocess=pre, cache=cache, desc="embed train", progress=progress, device=device
    )
    probe = probe_module.fit_linear_probe(feats, y_tr, C=cfg.probe_C, seed=cfg.seed)
    trained = Classifier(
        classes, pre, backbone, kind=cfg.method, probe=ProbeHead.from_sklearn(probe), config=cfg, progress=progress
    )
    if cfg.method == "finetune":
        lr = probe.steps[-1][1]
        scaler = probe.steps[0][1]
        # Fold the scaler into the head: W' = W / scale, b' = b - W' @ mean
        w = lr.coef_ / scaler.scale_
        b = lr.intercept_ - w @ scaler.mean_
        # A binary or class-incomplete probe has another shape: then the head starts from scratch.
        init = (w, b) if w.shape[0] == len(classes) else None
        ft_cfg = replace(cfg.finetune, seed=cfg.seed)
        res = finetune(
            backbone,
            x_tr,
            y_tr,
            x_val,
            y_val,
            len(classes),
            pre,
            ft_cfg,
            init_head=init,
            progress=progress,
            device=device,
        )
        trained.model = res.model
        trained.probe = None
        trained.metrics["finetune_history"] = res.history
        trained.metrics["finetune_seconds"] = round(res.wall_seconds, 1)
        if n_val >= 10:  # its confidences, calibrated on the validation split (which the weights never fitted)
            from fashionrec.evaluation.calibration import fit_temperature

            p_val = softmax(predict_logits(res.model, x_val, pre))
            trained.temperature = fit_temperature(p_val, y_val)
            trained.metrics["calibration_fit"] = {
                "on": "the validation split early stopping read",
                "n": int(n_val),
                "temperature": round(trained.temperature, 4),
            }
    return trained


def evaluate_classifier(
    trained: Classifier, x_test: np.ndarray, y_test: np.ndarray, *, cache=None, device=None
) -> dict:
    proba = trained.predict_proba(x_test, cache=cache, device=device)
    pred = proba.argmax(1)
    n = len(trained.classes)
    return {
        "test_accuracy": accuracy(y_test, pred),
        "macro_f1": macro_f1(y_test, pred, n),
        "n_test": int(len(y_test)),
        "confusion_matrix": confusion_matrix(y_test, pred, n).tolist(),
        "_pred": pred,
        "_proba": proba,
    }


def write_run(out_dir: str | Path, trained: Classifier, result: dict, extra: dict | None = None) -> dict:
    """metrics.json, config.json, confusion.png and model.pt, each written atomically."""
    from fashionrec.evaluation.plots import plot_confusion

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in result.items() if not k.startswith("_")}
    metrics.update({k: v for k, v in trained.metrics.items()})
    metrics.update(extra or {})
    write_json(out / "metrics.json", metrics)
    write_json(out / "config.json", asdict(trained.config))
    plot_confusion(
        np.array(result["confusion_matrix"]),
        trained.classes,
        out / "confusion.png",
        title=f"{trained.config.method} ({trained.config.backbone}): acc {result['test_accuracy']:.3f}",
    )
    trained.save(out / "model.pt")
    return metrics
