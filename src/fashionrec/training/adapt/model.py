"""`AdaptedModel`: an adapted backbone plus one linear head per attribute, and its inference (`predict_arrays`)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fashionrec.backbones.adapted import AdaptedBackbone  # the folder's backbone part lives in backbones/
from fashionrec.evaluation.calibration import apply_temperature
from fashionrec.features import Preprocess
from fashionrec.training.adapt.runner import _runner
from fashionrec.training.colour import COLOUR_FEATURES_DIM, colour_features, combine_with_booster

ONNX_MIN_IMAGES = 512  # `predict_arrays` exports the network to ONNX Runtime from this many photos on


class AdaptedModel(nn.Module):
    """Backbone + one linear head per attribute.

    The heads read the pre-logits (so colour survives the metric loss), and with `head_taps` also the pooled outputs
    of those blocks: `adapt` refits the heads on them after training (`refit_heads`), which measured +3 points on
    held-out colour groups."""

    def __init__(
        self,
        backbone: AdaptedBackbone,
        heads: dict[str, list[str]],
        dropout: float = 0.2,
        head_taps: tuple[int, ...] = (),
        colour_heads: tuple[str, ...] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self.head_names = list(heads)
        self.classes = {k: list(v) for k, v in heads.items()}
        self.head_taps = tuple(int(t) for t in head_taps)
        self.colour_heads = tuple(n for n in colour_heads if n in self.classes)
        d = backbone.prelogits_dim + backbone.tap_dims(self.head_taps)
        self.heads = nn.ModuleList(
            [nn.Linear(d + (COLOUR_FEATURES_DIM if n in self.colour_heads else 0), len(c)) for n, c in heads.items()]
        )
        self.dropout = nn.Dropout(dropout)
        self.config: dict = {}
        # {colour head: LightGBM booster on `colour_features` alone}; its probabilities multiply the head's
        # (`with_colour_boosters`); fitted by `adapt` after the refit, saved beside the weights as text
        self.colour_boosters: dict = {}
        # {head: T}: the temperature that calibrates the head's final probabilities (`calibrated`), fitted by `adapt`
        # on the held-out products; `temperatures_no_booster`: a boosted colour head's, for its probabilities
        # without the booster (`tag --no-colour-booster`)
        self.temperatures: dict[str, float] = {}
        self.temperatures_no_booster: dict[str, float] = {}

    def calibrated(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`probs` ({head: proba}, after the boosters) with each head's temperature applied
        (`evaluation.calibration`): confidences that match accuracy; the highest class is unchanged."""
        return {n: apply_temperature(p, self.temperatures.get(n, 1.0)) for n, p in probs.items()}

    def without_colour_boosters(self) -> AdaptedModel:
        """A shallow copy whose colour heads go without their boosters (and take the temperatures fitted for
        that); this model, which may be cached, keeps them."""
        m = copy.copy(self)
        m.colour_boosters = {}
        m.temperatures = {**self.temperatures, **self.temperatures_no_booster}
        for n in self.colour_boosters:
            if n not in self.temperatures_no_booster:
                m.temperatures.pop(n, None)
        return m

    def with_colour_boosters(self, probs: dict[str, np.ndarray], colour: np.ndarray | None) -> dict[str, np.ndarray]:
        """`probs` ({head: proba}) with each boosted colour head's probabilities combined with its booster's, read
        from `colour` (`colour_features` of the same photos)."""
        if not self.colour_boosters:
            return probs
        if colour is None:
            raise ValueError(f"heads {list(self.colour_boosters)} read colour features: pass colour=")
        out = dict(probs)
        for n, booster in self.colour_boosters.items():
            out[n] = combine_with_booster(probs[n], booster, colour)
        return out

    def head_inputs(self, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, what the heads read: pooled taps + pre-logits)."""
        z, e, pooled = self.backbone.upper_outputs(h, k, self.head_taps)
        return e, torch.cat(pooled + [z], 1) if pooled else z

    def head_logits(self, x: torch.Tensor, colour: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every head's logits from its inputs `x`; the `colour_heads` also read `colour` (`colour_features` of the
        same photos, one row per row of `x`)."""
        if self.colour_heads and colour is None:
            raise ValueError(f"heads {list(self.colour_heads)} read colour features: pass colour=")
        return [
            head(torch.cat([x, colour], 1) if n in self.colour_heads else x)
            for n, head in zip(self.head_names, self.heads)
        ]

    def upper(self, h: torch.Tensor, k: int, colour: torch.Tensor | None = None):
        e, x = self.head_inputs(h, k)
        return e, self.head_logits(self.dropout(x), colour)

    @property
    def preprocess(self) -> Preprocess:
        p = self.config.get("preprocess") or {}
        cfg = self.backbone.data_config
        return Preprocess(
            cfg.input_size,
            tuple(cfg.mean),
            tuple(cfg.std),
            invert=bool(p.get("invert", False)),
            pad_square=bool(p.get("pad_square", True)),
        )

    @torch.no_grad()
    def predict_arrays(
        self,
        images: np.ndarray,
        batch_size: int = 128,
        embed: bool = True,
        progress: bool = False,
        onnx: bool | None = None,
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """uint8 images already padded/resized by `self.preprocess.pil_to_array` -> (embeddings, {head: proba}).
        The embedding averages the backbone's test-time views (adapted folders: the photo and its mirror image, and
        their greyscale versions with "flip+gray"), as `embed` computes it; the heads average the colour views.
        `embed=False` (tagging): heads only, so the grey views are not computed (half the work); embeddings None.
        `progress`: a progress bar (photos, rate, ETA). `onnx`: the network runs through ONNX Runtime where it
        matches torch (`features.onnx_function`; the heads stay in torch); None (default): from ONNX_MIN_IMAGES
        photos on, where the export's few seconds pay (tagging 12,728 H&M photos: `benchmarks/onnx_speed.py`)."""
        from tqdm.auto import tqdm

        self.eval()
        pre = self.preprocess
        bb = self.backbone
        if onnx is None:
            onnx = len(images) >= ONNX_MIN_IMAGES
        n = pre.input_size
        run = _runner(onnx, self, lambda t: self.head_inputs(bb.forward_lower(t, 0), 0), (3, n, n))
        embs, probs, descs = [], {n: [] for n in self.head_names}, []
        bar = tqdm(total=len(images), desc="tag" if not embed else "embed + tag", unit="img", disable=not progress)
        for s in range(0, len(images), batch_size):
            x = pre.arrays_to_tensor(images[s : s + batch_size])
            bar.update(len(x))
            b = len(x)
            xv = bb.views(x, gray=None if embed else False)
            col = None
            if self.colour_heads or self.colour_boosters:  # a mirror image has the same colour features
                descs.append(colour_features(images[s : s + batch_size]))
                col = torch.from_numpy(descs[-1]).repeat(len(xv) // b, 1)  # (grey views' outputs are unused)
            e, hx = (torch.from_numpy(a) for a in run(xv.numpy()))  # eval mode: no dropout before the heads
            logits = self.head_logits(hx, col)
            parts = e.split(b)
            if embed:
                embs.append((bb.average_views(*parts) if len(parts) > 1 else e).numpy())
            colour = colour_views(len(parts), bb.gray_tta and embed)
            for n, lg in zip(self.head_names, logits):
                p = torch.softmax(lg.float(), 1).split(b)
                probs[n].append(torch.stack([p[i] for i in colour]).mean(0).numpy())
        bar.close()
        d = bb.embed_dim
        probs = {n: np.concatenate(v) if v else np.zeros((0, len(self.classes[n]))) for n, v in probs.items()}
        if descs:
            probs = self.with_colour_boosters(probs, np.concatenate(descs))
        probs = self.calibrated(probs)
        return None if not embed else np.concatenate(embs) if embs else np.zeros((0, d), np.float32), probs


def tta_name(flips: bool, gray: bool) -> str:
    """The folder's `embedding_tta`: which views the embedding averages."""
    return "+".join(v for v, on in (("flip", flips), ("gray", gray)) if on) or "none"


def is_colour_column(name: str) -> bool:
    """A label a greyscale photo cannot show (colour_group_name, perceived_colour_*)."""
    return "colour" in name.lower() or "color" in name.lower()


def colour_views(n_views: int, gray: bool) -> list[int]:
    """Positions of the colour views in `Backbone.views`' order (photo, [grey], then their mirror images)."""
    return list(range(0, n_views, 2)) if gray else list(range(n_views))
