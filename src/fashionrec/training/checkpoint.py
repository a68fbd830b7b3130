"""Classifier checkpoints: everything needed to rebuild and run a model, written atomically."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fashionrec.backbones import create_backbone
from fashionrec.features import Preprocess
from fashionrec.io import atomic_path
from fashionrec.training.finetune import ImageClassifier


def save_classifier(path: str | Path, *, kind: str, classes: list[str], backbone_name: str, preprocess: Preprocess,
                    taps=("final",),
                    model: ImageClassifier | None = None, probe=None, backbone_state: dict | None = None,
                    extra: dict | None = None) -> Path:
    """kind='finetune' stores the whole network's state_dict; kind='linear-probe' stores the sklearn pipeline
    (as plain arrays, so loading never unpickles code) and the backbone identity."""
    blob = {"kind": kind, "classes": list(classes), "backbone": backbone_name, "taps": list(taps or ("final",)),
            "preprocess": asdict(preprocess),
            "extra": extra or {}}
    if model is not None:
        blob["state_dict"] = model.state_dict()
    if probe is not None:
        scaler, lr = probe.steps[0][1], probe.steps[-1][1]
        blob["probe"] = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": lr.coef_, "intercept": lr.intercept_,
                         "classes": lr.classes_}
    if backbone_state is not None:  # e.g. BN statistics re-estimated on the target domain
        blob["bn_state"] = backbone_state
    with atomic_path(path, suffix=".tmp.pt") as tmp:
        torch.save(blob, tmp)
    return Path(path)


class LoadedClassifier:
    """A checkpoint ready to predict probabilities for uint8 images or PIL images."""

    def __init__(self, blob: dict):
        self.kind = blob["kind"]
        self.classes = blob["classes"]
        self.preprocess = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in blob["preprocess"].items()})
        self.backbone = create_backbone(blob["backbone"], input_size=self.preprocess.input_size, taps=blob.get("taps"))
        self.extra = blob.get("extra", {})
        if "bn_state" in blob:
            self.backbone.load_state_dict(blob["bn_state"])
        if self.kind == "finetune":
            self.model = ImageClassifier(self.backbone, len(self.classes))
            self.model.load_state_dict(blob["state_dict"])
            self.model.eval()
        else:
            self.probe = {k: np.asarray(v) for k, v in blob["probe"].items()}

    def predict_proba_features(self, feats: np.ndarray) -> np.ndarray:
        p = self.probe
        z = ((feats - p["mean"]) / p["scale"]) @ p["coef"].T + p["intercept"]
        if z.shape[1] == 1:  # binary logistic regression
            z = np.hstack([np.zeros_like(z), z])  # sklearn: p(class 1) = sigmoid(z)
        from fashionrec.training.tasks import expand_proba, softmax

        return expand_proba(softmax(z), p["classes"], len(self.classes))

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        from fashionrec.features import embed_arrays
        from fashionrec.training.finetune import predict_logits
        from fashionrec.training.tasks import softmax

        if self.kind == "finetune":
            return softmax(predict_logits(self.model, images, self.preprocess))
        return self.predict_proba_features(embed_arrays(self.backbone, images, preprocess=self.preprocess, progress=False))


def load_classifier(path: str | Path) -> LoadedClassifier:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    return LoadedClassifier(blob)
