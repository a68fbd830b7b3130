"""The one image classifier type: a backbone plus either a linear-probe head (arrays) or a fine-tuned network, with
one predict path and its checkpoint format.

A freshly trained classifier and one loaded from `model.pt` are the same class and predict through the same code,
so "what training measured" and "what `fashionrec predict` answers" cannot drift apart.

Checkpoint format 2: one `torch.save` file holding only tensors, str/int/float and a JSON string, read back with
`torch.load(weights_only=True)`. That still unpickles, but through torch's restricted unpickler, which rebuilds only
tensors, primitive types and plain containers and refuses any other class or callable: a crafted file cannot run
code while loading (format 1 pickled numpy arrays and needed `weights_only=False`, so a crafted model.pt did).

    {"format": "fashionrec-classifier", "version": 2,
     "meta": "<JSON: kind, classes, backbone, taps, preprocess, extra, probe classes>",
     "state_dict": {name: tensor}, "bn_state": {name: tensor}, "probe": {"mean"|"scale"|"coef"|"intercept": tensor}}
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashionrec.backbones import create_backbone
from fashionrec.backbones.base import Backbone
from fashionrec.errors import FashionrecError
from fashionrec.evaluation.calibration import apply_temperature
from fashionrec.features import FeatureCache, Preprocess, embed_arrays
from fashionrec.io import atomic_path
from fashionrec.training.finetune import ImageClassifier, predict_logits

FORMAT = "fashionrec-classifier"
VERSION = 2
KINDS = ("linear-probe", "finetune")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def expand_proba(p: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """A probe only knows the classes it saw in training: put its columns at their class ids (others get 0)."""
    out = np.zeros((len(p), n_classes), dtype=np.float64)
    out[:, np.asarray(present, dtype=int)] = p
    return out


@dataclass
class ProbeHead:
    """A fitted linear probe as arrays: standardise with (mean, scale), then logistic regression (coef, intercept)
    over `classes` (the class ids seen in training)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_sklearn(cls, pipeline) -> ProbeHead:
        scaler, lr = pipeline.steps[0][1], pipeline.steps[-1][1]
        return cls(
            np.asarray(scaler.mean_, np.float64),
            np.asarray(scaler.scale_, np.float64),
            np.asarray(lr.coef_, np.float64),
            np.asarray(lr.intercept_, np.float64),
            np.asarray(lr.classes_),
        )

    def predict_proba(self, feats: np.ndarray, n_classes: int) -> np.ndarray:
        z = ((feats - self.mean) / self.scale) @ self.coef.T + self.intercept
        if z.shape[1] == 1:  # binary logistic regression: sklearn's p(class 1) = sigmoid(z) = softmax([0, z])
            z = np.hstack([np.zeros_like(z), z])
        return expand_proba(softmax(z), self.classes, n_classes)


@dataclass
class Classifier:
    """Images -> class probabilities. `kind` is 'linear-probe' (frozen `backbone` + `probe`) or 'finetune'
    (`model`: backbone + trained head). `config` is the run's resolved settings (a ClassifierConfig after training,
    its dict after loading); `metrics` what training recorded; `extra` what the checkpoint carried besides."""

    classes: list[str]
    preprocess: Preprocess
    backbone: Backbone
    kind: str = "linear-probe"
    probe: ProbeHead | None = None
    model: ImageClassifier | None = None
    config: Any = None
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    progress: bool = True  # default for predict_proba's progress bar (a loaded checkpoint predicts quietly)
    # calibrates the confidences (`evaluation.calibration.apply_temperature`; the best class is unchanged): fitted by
    # `fashionrec train` on labelled images the classifier did not fit on; 1.0 = as trained (older checkpoints)
    temperature: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not '{self.kind}'")

    # ---- the one predict path
    def predict_proba_features(self, feats: np.ndarray) -> np.ndarray:
        """Probabilities from backbone features (linear-probe classifiers only)."""
        if self.probe is None:
            raise FashionrecError("a fine-tuned classifier predicts from images, not from frozen features")
        return apply_temperature(self.probe.predict_proba(feats, len(self.classes)), self.temperature)

    def predict_proba(
        self, images: np.ndarray, cache: FeatureCache | None = None, progress: bool | None = None, device=None
    ) -> np.ndarray:
        """uint8 images (N, H, W) or (N, H, W, 3), already padded/resized by `preprocess.pil_to_array` or raw
        arrays of any size (resized by the preprocessing) -> (N, len(classes)) probabilities. `device`: where the
        network runs (None: a fine-tuned network where its weights are, the probe's backbone on the CPU)."""
        if self.model is not None:
            logits = predict_logits(self.model, images, self.preprocess, device=device)
            return apply_temperature(softmax(logits), self.temperature)
        progress = self.progress if progress is None else progress
        feats = embed_arrays(
            self.backbone,
            images,
            preprocess=self.preprocess,
            cache=cache,
            desc="embed",
            progress=progress,
            device=device,
        )
        return self.predict_proba_features(feats)

    # ---- checkpoint
    def save(self, path: str | Path) -> Path:
        """Tensors + JSON only (format 2), written atomically. kind='finetune' stores the whole network's state_dict;
        'linear-probe' the probe arrays, the backbone's name and its (possibly AdaBN re-estimated) state."""
        cfg = self.config
        cfg_dict = asdict(cfg) if cfg is not None and hasattr(cfg, "__dataclass_fields__") else dict(cfg or {})
        taps = list(self.backbone.taps) if getattr(self.backbone, "taps", None) else ["final"]
        meta = {
            "kind": self.kind,
            "classes": list(self.classes),
            "backbone": cfg_dict.get("backbone", self.backbone.name),
            "taps": taps,
            "preprocess": asdict(self.preprocess),
            "temperature": float(self.temperature),
            "extra": {**self.extra, "config": cfg_dict},
        }
        blob: dict = {"format": FORMAT, "version": VERSION}
        if self.model is not None:
            blob["state_dict"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            blob["bn_state"] = {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}
        if self.probe is not None:
            p = self.probe
            blob["probe"] = {
                k: torch.as_tensor(np.ascontiguousarray(getattr(p, k))).clone()
                for k in ("mean", "scale", "coef", "intercept")
            }
            meta["probe_classes"] = [c.item() if isinstance(c, np.generic) else c for c in p.classes]
        blob["meta"] = json.dumps(meta, default=_json_default)
        with atomic_path(path, suffix=".tmp.pt") as tmp:
            torch.save(blob, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """Read a format-2 checkpoint with `weights_only=True` (torch's restricted unpickler: tensors and plain
        containers, no other classes). A missing, foreign or old-format file is a FashionrecError naming the file."""
        meta, blob = _read_checkpoint(Path(path))
        pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["preprocess"].items()})
        backbone = create_backbone(meta["backbone"], input_size=pre.input_size, taps=meta.get("taps"))
        if "bn_state" in blob:
            backbone.load_state_dict(blob["bn_state"])
        extra = dict(meta.get("extra", {}))
        out = cls(
            meta["classes"],
            pre,
            backbone,
            kind=meta["kind"],
            config=extra.get("config"),
            extra=extra,
            progress=False,
            temperature=float(meta.get("temperature", 1.0)),
        )
        if out.kind == "finetune":
            out.model = ImageClassifier(backbone, len(out.classes))
            out.model.load_state_dict(blob["state_dict"])
            out.model.eval()
        else:
            p = {k: v.numpy() for k, v in blob["probe"].items()}
            out.probe = ProbeHead(p["mean"], p["scale"], p["coef"], p["intercept"], np.asarray(meta["probe_classes"]))
        return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    if not path.is_file():
        raise FashionrecError(f"{path}: model file not found" + (" (it is a folder)" if path.is_dir() else ""))
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not a checkpoint
        raise FashionrecError(f"{path}: not a model checkpoint (not a torch.save archive)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FashionrecError(
            f"{path}: refused to load: not a weights-only checkpoint. It is either a model.pt from fashionrec before "
            f"format {VERSION} (pickled arrays) or a file that would run code when unpickled; retrain with "
            f"`fashionrec train` to get a safe checkpoint"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise FashionrecError(f"{path}: not a readable model checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FashionrecError(f"{path}: not a fashionrec classifier checkpoint (expected format '{FORMAT}')")
    if blob.get("version") != VERSION:
        raise FashionrecError(
            f"{path}: checkpoint format version {blob.get('version')}; this fashionrec reads "
            f"version {VERSION}; retrain with `fashionrec train`"
        )
    return json.loads(blob["meta"]), blob


def load_classifier(path: str | Path) -> Classifier:
    return Classifier.load(path)
