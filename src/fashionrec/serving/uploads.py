"""What an upload may be: bytes and pixels capped, the image type checked from its header before any pixel is
decoded, text fields without control characters, ids that are safe file names; and which stored images are served
(`checked_image`: only files that open as images, with the content type of the format found)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from fastapi import Request, UploadFile

from fashionrec.data.images import ImageDecodeError, decode_image
from fashionrec.serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from fashionrec.serving.middleware import MAX_UPLOAD_BYTES
from fashionrec.serving.state import ServingState

MAX_UPLOAD_PIXELS = 40_000_000  # header check, before decoding (a 48 Mpx JPEG is decoded at draft scale)
UPLOAD_DRAFT_SIZE = 512  # JPEGs decode at the smallest DCT scale still >= 512 px
MAX_NAME_CHARS = 200
MAX_LABEL_CHARS = 100
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
SERVED_FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# Ids of new arrivals become file names: letters and digits first, then letters, digits, '_', '-', '.';
# fullmatch, so '.', '..', 'a/b' and 'x\n' (which `$` would let through) are refused.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
ID_RE = re.compile(ID_PATTERN[1:-1])


def read_upload(file: UploadFile):
    """The upload's bytes and decoded image (call from a worker thread). The header is read first to type what is
    wrong: 413 (bytes or pixels over the limit), 415 (not an image), 422 (an image that does not decode)."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"upload is over the {MAX_UPLOAD_BYTES:,}-byte limit")
    ctype = (file.content_type or "").split(";")[0].strip().lower()
    if ctype and ctype not in IMAGE_TYPES and ctype != "application/octet-stream":
        raise UnsupportedMediaType(f"'{file.filename}' is {ctype}, not an image (accepted: {sorted(IMAGE_TYPES)})")
    if not data:
        raise InvalidInput(f"'{file.filename}': empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # the header only: no pixel is decoded here
                w, h = im.size
    except UnidentifiedImageError as e:
        raise UnsupportedMediaType(f"'{file.filename}' is not an image: {e}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PayloadTooLarge(f"'{file.filename}' refused: over the pixel limit ({e})") from None
    except Exception:  # a header PIL reads badly: decode_image below says what is wrong (422)
        w = h = 0
    if w * h > MAX_UPLOAD_PIXELS:
        raise PayloadTooLarge(f"image is {w}x{h} pixels, over the {MAX_UPLOAD_PIXELS:,}-pixel limit")
    try:
        img = decode_image(
            data, source=file.filename or "upload", max_pixels=MAX_UPLOAD_PIXELS, draft_size=UPLOAD_DRAFT_SIZE
        )
    except ImageDecodeError as e:
        raise InvalidInput(str(e)) from None
    return data, img


def text_field(value: str | None, what: str, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip(" \t\r\n\f\v")  # ASCII white space at the ends (U+0085 is checked below)
    if len(value) > limit:
        raise InvalidInput(f"{what} is {len(value):,} characters; at most {limit}")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf")), None)
    if bad is not None:  # C0/C1 controls (U+0085, U+009B), bidi overrides (U+202E), zero-width and other formats
        raise InvalidInput(
            f"{what} contains control characters (U+{ord(bad):04X} {unicodedata.name(bad, 'unnamed')}; control and "
            "format characters such as bidi overrides are refused)"
        )
    return value or None


def checked_image(request: Request, state: ServingState, item_id: str) -> tuple[Path, str] | None:
    p = state.safe_image_path(item_id)
    if p is None:
        return None
    try:
        st = p.stat()
    except OSError:
        return None
    checks = request.app.state.image_checks
    hit = checks.get(item_id)
    if hit and hit[:3] == (p, st.st_size, st.st_mtime_ns):
        return (p, hit[3]) if hit[3] else None
    media = None
    try:
        from PIL import Image

        with Image.open(p) as im:
            fmt = im.format
            im.verify()
        media = SERVED_FORMATS.get(fmt)
    except Exception:  # not an image, truncated, a bomb: not served
        media = None
    checks[item_id] = (p, st.st_size, st.st_mtime_ns, media)
    return (p, media) if media else None
