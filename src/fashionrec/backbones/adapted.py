"""A folder written by `fashionrec adapt` used as a backbone: `create_backbone("runs/adapted")`.

The folder holds `weights.safetensors` and `fashionrec_model.json` (format: training/adapt/io.py, which writes it and
adds the attribute heads). This plug-in owns the backbone part, `AdaptedBackbone` (a trunk plus a linear embedding
layer), and reads only that part of the folder, so backbones never import training (training imports backbones).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fashionrec.artifacts.keys import file_sha256
from fashionrec.backbones.base import (
    Backbone,
    DataConfig,
    create_backbone,
    is_adapted_model_dir,
    register_backbone_source,
)
from fashionrec.config import ADAPTED_MODEL_JSON
from fashionrec.errors import FashionrecError

log = logging.getLogger(__name__)

FORMAT = "fashionrec-adapted-model"
FORMAT_VERSION = 1
CONFIG_FILE = ADAPTED_MODEL_JSON
WEIGHTS_FILE = "weights.safetensors"


def _pool(h: torch.Tensor) -> torch.Tensor:
    """Mean and max over the positions: a CNN map (B, C, H, W) over H x W, ViT tokens (B, N, C) over N."""
    dims = (2, 3) if h.ndim == 4 else (1,)
    return torch.cat([h.mean(dims), h.amax(dims)], 1)


def _out_channels(block: nn.Module) -> int:
    """Width of a block's output: its last convolution's or linear layer's (EfficientNet conv_pwl, ResNet conv2/3,
    ConvNeXt and ViT mlp.fc2)."""
    layers = [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise FashionrecError(f"{type(block).__name__}: no convolution or linear layer, cannot tap its output")
    last = layers[-1]
    return last.out_channels if isinstance(last, nn.Conv2d) else last.out_features


class AdaptedBackbone(Backbone):
    """A trunk plus a linear embedding layer; `forward` gives L2-normalised embeddings (cosine = dot product)."""

    def __init__(self, trunk: Backbone, embed_dim: int, weights_id: str, name: str | None = None):
        super().__init__(
            name or f"adapted-{trunk.name}", trunk.model, embed_dim, trunk.data_config, weights_id, blocks=trunk._blocks
        )
        self.prelogits_dim = trunk.embed_dim
        self.embed = nn.Linear(trunk.embed_dim, embed_dim)

    @staticmethod
    def average_views(*parts: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.stack(parts).sum(0), dim=1)  # still a unit vector: cosine = dot product

    def prelogits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feats, pre_logits=True)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return F.normalize(self.embed(self.prelogits(feats)), dim=1)

    def upper_outputs(
        self, h: torch.Tensor, k: int, taps: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """From the output map of blocks[:k]: (pre-logits, normalised embedding, [pooled output of block i for i in
        taps]). A tap pools its map two ways, mean and max over the positions (colour and texture live there, and
        the pre-logits of a metric-trained trunk keep less of them)."""
        pooled = []
        if k - 1 in taps:
            pooled.append(_pool(h))
        for i, b in enumerate(self.blocks[k:], start=k):
            h = b(h)
            if i in taps:
                pooled.append(_pool(h))
        z = self.prelogits(self.forward_tail(h))
        return z, F.normalize(self.embed(z), dim=1), pooled

    def tap_dims(self, taps: tuple[int, ...]) -> int:
        """Width of the pooled taps (2 x the channels of each tapped block's output)."""
        return sum(2 * _out_channels(self.blocks[i]) for i in taps)

    def with_input_size(self, size: int) -> Backbone:
        if int(size) != self.data_config.input_size:
            log.info(
                "%s: trained at %d px; keeping that input size (asked %d)", self.name, self.data_config.input_size, size
            )
        return self


def read_adapted_config(path: str | Path) -> tuple[dict, Path]:
    """(config, weights file) of a model folder, checked: format, version, weights present."""
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise FashionrecError(f"{path}: not an adapted model folder (no {CONFIG_FILE})")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != FORMAT or int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise FashionrecError(f"{cfg_path}: unsupported model format {cfg.get('format')} v{cfg.get('format_version')}")
    wpath = path / cfg.get("weights_file", WEIGHTS_FILE)
    if not wpath.is_file():
        raise FashionrecError(f"{wpath}: weights file missing")
    return cfg, wpath


def build_adapted_backbone(cfg: dict, weights_sha256: str) -> AdaptedBackbone:
    """The (untrained) backbone a folder's config describes; its identity is the weights file's SHA-256, so features
    of different weights never mix in a cache."""
    trunk = create_backbone(cfg["base_backbone"], pretrained=False, **(cfg.get("trunk_kwargs") or {}))
    pre = cfg["preprocess"]
    trunk.data_config = DataConfig(int(pre["input_size"]), tuple(pre["mean"]), tuple(pre["std"]))
    bb = AdaptedBackbone(
        trunk,
        int(cfg["embed_dim"]),
        weights_id=f"adapted:sha256:{weights_sha256[:24]}",
        name=f"adapted-{cfg['base_backbone']}",
    )
    # Embeddings average the photo and its mirror image (measured on held-out H&M products: same-product R@10
    # 0.577 -> 0.605), and with "flip+gray" their greyscale versions too (R@1 0.226 -> 0.276: the nearest photo is
    # more often the same product in another colour); "none" turns it off.
    views = set(str(cfg.get("embedding_tta", "flip")).split("+")) - {"none"}
    if views - {"flip", "gray"}:
        raise FashionrecError(f"embedding_tta {cfg.get('embedding_tta')!r}: use none, flip, gray or flip+gray")
    bb.flip_tta, bb.gray_tta = "flip" in views, "gray" in views
    return bb


def load_adapted_backbone(path: str | Path) -> AdaptedBackbone:
    """Only the backbone of a model folder (the `backbone.` tensors; heads are left out), from safetensors."""
    from safetensors.torch import load_file  # lazy: only model folders need it

    cfg, wpath = read_adapted_config(path)
    bb = build_adapted_backbone(cfg, file_sha256(wpath))
    try:
        sd = load_file(str(wpath))
        bb.load_state_dict({k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}, strict=True)
    except Exception as e:  # safetensors' own errors (a damaged file) and shape/key mismatches alike
        raise FashionrecError(f"{wpath}: weights do not match {CONFIG_FILE}: {str(e)[:300]}") from None
    return bb.eval()


register_backbone_source(is_adapted_model_dir, load_adapted_backbone)
