"""Decode and validate images. A corrupt file in a batch of thousands is reported and skipped, never fatal."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from fashionrec.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Decompression-bomb guard: a 128 MiB-pixel image is far beyond any product photo.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageDecodeError(DataError):
    """An image that cannot be decoded (empty, truncated, not an image, too large)."""


def decode_image(data: bytes, *, source: object = "<bytes>") -> Image.Image:
    """Decode bytes fully into an RGB PIL image, or raise ImageDecodeError naming `source`.

    `Image.open` is lazy, so `load()` is forced here: a truncated JPEG must fail now, not in a worker later.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes), not an image", path=source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(f"image is {w}x{h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit", path=source)
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"refused as a decompression bomb ({e})", path=source) from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError) for bad files
        raise ImageDecodeError(f"cannot decode image: {e}", path=source) from None
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read: {e.strerror}", path=path) from None
    return decode_image(data, source=path)


def list_images(folder: str | Path) -> list[Path]:
    """All image files under `folder` (recursively, so Kaggle's 3-digit subfolders work), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("image folder does not exist", path=folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)
