"""Fashion-MNIST from its original IDX files (gzipped or not).

Offline default: Debian's `dataset-fashion-mnist` package puts the files in /usr/share/datasets/fashion-mnist.
With internet, `download_fashion_mnist(folder)` fetches the official files and checks their MD5.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# The MD5s torchvision checks for the same files.
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class FashionMNIST:
    x_train: np.ndarray  # (60000, 28, 28) uint8, light garment on black
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...] = tuple(CLASSES)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array, with errors that name the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file: {e}", path=path) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError("not an IDX file (bad magic number)", path=path)
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(f"IDX header says {dims} ({expected} bytes) but the file holds {len(body)} bytes", path=path)
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise DataError(
        f"missing {stem}(.gz). Install Debian's dataset-fashion-mnist, point --data-dir at the IDX files, "
        "or call fashionrec.data.fashion_mnist.download_fashion_mnist(folder)",
        path=folder,
    )


def load_fashion_mnist(folder: str | Path | None = None) -> FashionMNIST:
    folder = Path(folder or os.environ.get("FASHIONREC_FMNIST_DIR") or DEFAULT_DIR)
    parts = {}
    for key, stem in [
        ("x_train", "train-images-idx3-ubyte"),
        ("y_train", "train-labels-idx1-ubyte"),
        ("x_test", "t10k-images-idx3-ubyte"),
        ("y_test", "t10k-labels-idx1-ubyte"),
    ]:
        parts[key] = read_idx(_find(folder, stem))
    for split in ("train", "test"):
        x, y = parts[f"x_{split}"], parts[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{split} images {x.shape} and labels {y.shape} do not match", path=folder)
    return FashionMNIST(**{k: np.ascontiguousarray(v) for k, v in parts.items()})


def download_fashion_mnist(folder: str | Path, url: str = URL) -> Path:
    """Download the four official files into `folder`, verifying each MD5; existing good files are kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in MD5.items():
        dest = folder / name
        if dest.exists() and hashlib.md5(dest.read_bytes()).hexdigest() == md5:
            continue
        tmp = dest.with_suffix(".part")
        urllib.request.urlretrieve(url + name, tmp)
        got = hashlib.md5(tmp.read_bytes()).hexdigest()
        if got != md5:
            tmp.unlink()
            raise DataError(f"checksum mismatch: md5 {got}, expected {md5}", path=url + name)
        os.replace(tmp, dest)
    return folder


def sample_per_class(y: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Indices of `k` examples per class (all when k is None), chosen with `seed`; sorted."""
    if k is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < k:
            raise DataError(f"class {c} has {len(members)} examples, fewer than the {k} asked for")
        idx.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(idx))
