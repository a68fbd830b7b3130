"""Classifier checkpoints: everything needed to rebuild and run a model, written atomically.

Format 2 (safe to load): one `torch.save` file holding only tensors and a JSON string, read back with
`torch.load(weights_only=True)`, so loading a file can never run code (format 1 pickled numpy arrays and needed
`weights_only=False`: a crafted model.pt executed its payload at load time).

    {"format": "fashionrec-classifier", "version": 2,
     "meta": "<JSON: kind, classes, backbone, taps, preprocess, extra, probe classes>",
     "state_dict": {name: tensor}, "bn_state": {name: tensor}, "probe": {"mean"|"scale"|"coef"|"intercept": tensor}}
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fashionrec.backbones import create_backbone
from fashionrec.errors import FashionrecError
from fashionrec.features import Preprocess
from fashionrec.io import atomic_path
from fashionrec.training.finetune import ImageClassifier

FORMAT = "fashionrec-classifier"
VERSION = 2


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a)).clone()


def save_classifier(path: str | Path, *, kind: str, classes: list[str], backbone_name: str, preprocess: Preprocess,
                    taps=("final",),
                    model: ImageClassifier | None = None, probe=None, backbone_state: dict | None = None,
                    extra: dict | None = None) -> Path:
    """kind='finetune' stores the whole network's state_dict; kind='linear-probe' stores the sklearn pipeline
    (scaler and logistic regression as plain tensors) and the backbone identity. Tensors + JSON only."""
    meta = {"kind": kind, "classes": list(classes), "backbone": backbone_name, "taps": list(taps or ("final",)),
            "preprocess": asdict(preprocess), "extra": extra or {}}
    blob: dict = {"format": FORMAT, "version": VERSION}
    if model is not None:
        blob["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if probe is not None:
        scaler, lr = probe.steps[0][1], probe.steps[-1][1]
        blob["probe"] = {"mean": _tensor(scaler.mean_), "scale": _tensor(scaler.scale_), "coef": _tensor(lr.coef_),
                         "intercept": _tensor(lr.intercept_)}
        meta["probe_classes"] = [c.item() if isinstance(c, np.generic) else c for c in lr.classes_]
    if backbone_state is not None:  # e.g. BN statistics re-estimated on the target domain
        blob["bn_state"] = {k: v.detach().cpu().clone() for k, v in backbone_state.items()}
    blob["meta"] = json.dumps(meta, default=_json_default)
    with atomic_path(path, suffix=".tmp.pt") as tmp:
        torch.save(blob, tmp)
    return Path(path)


class LoadedClassifier:
    """A checkpoint ready to predict probabilities for uint8 images or PIL images."""

    def __init__(self, blob: dict):
        meta = json.loads(blob["meta"])
        self.kind = meta["kind"]
        self.classes = meta["classes"]
        self.preprocess = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["preprocess"].items()})
        self.backbone = create_backbone(meta["backbone"], input_size=self.preprocess.input_size, taps=meta.get("taps"))
        self.extra = meta.get("extra", {})
        if "bn_state" in blob:
            self.backbone.load_state_dict(blob["bn_state"])
        if self.kind == "finetune":
            self.model = ImageClassifier(self.backbone, len(self.classes))
            self.model.load_state_dict(blob["state_dict"])
            self.model.eval()
        else:
            self.probe = {k: v.numpy() for k, v in blob["probe"].items()}
            self.probe["classes"] = np.asarray(meta["probe_classes"])

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
    """Read a format-2 checkpoint with `weights_only=True`: tensors and plain containers only, never code.
    A missing, foreign or old-format (pickled) file is a FashionrecError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FashionrecError(f"{path}: model file not found" + (" (it is a folder)" if path.is_dir() else ""))
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not a checkpoint
        raise FashionrecError(f"{path}: not a model checkpoint (not a torch.save archive)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FashionrecError(
            f"{path}: refused to load: not a weights-only checkpoint. It is either a model.pt from fashionrec before "
            f"format {VERSION} (pickled arrays) or a file that would run code when unpickled; retrain with "
            f"`fashionrec train` to get a safe checkpoint") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise FashionrecError(f"{path}: not a readable model checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FashionrecError(f"{path}: not a fashionrec classifier checkpoint (expected format '{FORMAT}')")
    if blob.get("version") != VERSION:
        raise FashionrecError(f"{path}: checkpoint format version {blob.get('version')}; this fashionrec reads "
                              f"version {VERSION}; retrain with `fashionrec train`")
    return LoadedClassifier(blob)
