"""Decode and validate images. A corrupt file in a batch of thousands is reported and skipped, never fatal."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fashionrec.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Decompression-bomb guard: 64 million pixels (8000 x 8000; ~190 MB once decoded as RGB) is far beyond any product
# photo. Checked from the header before any pixel is decoded (PIL itself only raises at twice its own limit).
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageDecodeError(DataError):
    """An image that cannot be decoded (empty, truncated, not an image, too large)."""


def decode_image(
    data: bytes, *, source: object = "<bytes>", max_pixels: int | None = None, draft_size: int | None = None
) -> Image.Image:
    """Decode bytes fully into an RGB PIL image as a shop would display it, or raise ImageDecodeError naming `source`.

    - `Image.open` is lazy (it reads the header only), so the pixel count is checked before any pixel is decoded,
      and `load()` is forced here: a truncated JPEG must fail now, not in a worker later.
    - `max_pixels` (default MAX_IMAGE_PIXELS) caps width x height as declared in the header.
    - `draft_size`: JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale still at least this size (libjpeg's
      DCT scaling: a 48-megapixel phone photo costs what a 0.75-megapixel one does when the model needs 128 px).
    - EXIF orientation is applied (a phone photo shot sideways is shown upright), 16-bit images are scaled to
      8 bits (not clipped to white), and transparency is composited on white, the way product photos are shot.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes), not an image", path=source)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > limit:
                raise ImageDecodeError(f"image is {w}x{h} pixels, over the {limit:,}-pixel limit", path=source)
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_display_rgb(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"refused as a decompression bomb ({e})", path=source) from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError) for bad files
        raise ImageDecodeError(f"cannot decode image: {e}", path=source) from None
    return img


_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def to_display_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: high bit depths scaled (not clipped), any transparency composited on white."""
    if img.mode in _HIGH_DEPTH_MODES:
        a = np.asarray(img)
        if img.mode == "F":
            a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            hi = float(a.max()) if a.size else 0.0
            scale = 255.0 / hi if hi > 255 else (255.0 if 0 < hi <= 1.0 else 1.0)
        else:
            # PIL opens 16-bit greyscale PNG/TIFF as I;16 (or I): 0..65535. Converting straight to L clips every
            # value above 255 to white; scale instead (65535 / 257 = 255).
            scale = 1 / 257 if a.dtype.itemsize >= 2 else 1.0
        img = Image.fromarray(np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (
        img.mode in {"P", "L", "RGB"} and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """`decode_image` of a file's bytes (`draft_size`: see there)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read: {e.strerror}", path=path) from None
    return decode_image(data, source=path, draft_size=draft_size)


def list_images(folder: str | Path) -> list[Path]:
    """All image files under `folder` (recursively, so Kaggle's 3-digit subfolders work), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("image folder does not exist", path=folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)
