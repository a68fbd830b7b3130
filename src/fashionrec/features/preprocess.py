"""How raw pixels become model input: `Preprocess` (from the backbone's data config) and the decode version that is
part of every feature-cache key."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fashionrec.backbones.base import Backbone
from fashionrec.data.images import load_image

# Part of every feature-cache key: 2 = large JPEGs decoded at reduced scale (`Preprocess.load`)
DECODE_VERSION = 2


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become model input. `input_size`, `mean`, `std` come from the backbone's data config.

    `invert`: Fashion-MNIST is a light garment on black; ImageNet shop photos are dark-on-light. Inverting maps
    the greyscale digits-style images towards the photos the backbone learned from (a domain-shift fix).
    `pad_square`: product photos are portrait; padding with white keeps the whole garment and its shape.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    invert: bool = False
    pad_square: bool = True

    @classmethod
    def for_backbone(cls, backbone: Backbone, **overrides) -> Preprocess:
        cfg = backbone.data_config
        kw = {"input_size": cfg.input_size, "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def key(self) -> str:
        return json.dumps({**asdict(self), "decode": DECODE_VERSION}, sort_keys=True)

    def load(self, path: str | Path) -> np.ndarray:
        """An image file -> uint8 (S, S, 3), as `pil_to_array` makes it. A JPEG much larger than the input is
        decoded at libjpeg's 1/2, 1/4 or 1/8 scale that still covers `input_size` on both sides (`draft`): 5x faster
        for a 1166x1750 H&M original at 160 px (22 -> 4 ms, `benchmarks/decode_speed.py`), mean pixel difference
        0.45 of 255; a photo whose shorter side is under twice the input size decodes exactly as before."""
        return self.pil_to_array(load_image(path, draft_size=self.input_size))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 3, H, W) in [0, 1] -> resized, normalised model input."""
        if self.invert:
            x = 1.0 - x
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def arrays_to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W) greyscale or (B, H, W, 3) RGB -> normalised (B, 3, S, S)."""
        x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).float().div_(255.0)
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return self.normalize(x)

    def pil_to_array(self, img: Image.Image) -> np.ndarray:
        """Decode-side work done in loader workers: pad to square (white), resize, -> uint8 (S, S, 3)."""
        img = img.convert("RGB")
        if self.pad_square and img.width != img.height:
            side = max(img.size)
            canvas = Image.new("RGB", (side, side), (255, 255, 255))
            canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
            img = canvas
        img = img.resize((self.input_size, self.input_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
