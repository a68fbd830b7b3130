"""Which `fashionrec adapt` model belongs to which data folder: the workspace's registry behind `--backbone auto`.

`fashionrec adapt --data DIR --out MODEL_DIR` records MODEL_DIR for DIR in `<workspace>/adapted/registry.json`,
with its held-out same-product retrieval against the ImageNet trunk it started from. `resolve_backbone("auto",
DIR, workspace)` (the recommenders', `similar`'s, `evaluate`'s and the server's default) then returns MODEL_DIR when
it measured better and its weights are still the ones measured; otherwise the ImageNet default. An explicit name
or folder is returned as given. Light on purpose (json + pathlib): the server resolves it before torch loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fashionrec.config import ADAPTED_MODEL_JSON, DEFAULT_BACKBONE
from fashionrec.io import write_json

log = logging.getLogger(__name__)

AUTO = "auto"
REGISTRY = Path("adapted") / "registry.json"


def _read(workspace: Path) -> dict:
    p = Path(workspace) / REGISTRY
    if not p.exists():
        return {}
    try:
        reg = json.loads(p.read_text())
        return reg if isinstance(reg, dict) else {}
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); ignoring it", p, e)
        return {}


def measured_better(metrics: dict) -> bool:
    """The adapted embedding beats every ImageNet row (plain, and averaged with the mirror image) on held-out
    same-product retrieval: R@10 higher, R@1 not lower."""
    ret = metrics.get("retrieval_heldout") or {}
    a = ret.get("adapted") or {}
    base = [r for name, r in ret.items() if name.startswith("imagenet")]
    try:
        return bool(base) and all(a["recall@10"] > b["recall@10"] and a["recall@1"] >= b["recall@1"] for b in base)
    except (KeyError, TypeError):
        return False


def register_adapted(workspace: str | Path, data_dir: str | Path, model_dir: str | Path, metrics: dict) -> dict:
    """Record `model_dir` as the adapted model of `data_dir` (atomic rewrite of the registry); returns the entry."""
    model_dir = Path(model_dir).resolve()
    ret = metrics.get("retrieval_heldout") or {}
    entry = {
        "model": str(model_dir),
        "weights_sha256": adapted_weights_sha256(model_dir),
        "better": measured_better(metrics),
        "recall@10": {k: (ret.get(k) or {}).get("recall@10") for k in ("imagenet", "adapted")},
        "recall@1": {k: (ret.get(k) or {}).get("recall@1") for k in ("imagenet", "adapted")},
    }
    reg = _read(Path(workspace))
    reg[str(Path(data_dir).resolve())] = entry
    write_json(Path(workspace) / REGISTRY, reg)
    return entry


def adapted_weights_sha256(folder: str | Path) -> str | None:
    """The weights hash an adapted model folder's JSON records; None if `folder` is not one (or is unreadable)."""
    try:
        return json.loads((Path(folder) / ADAPTED_MODEL_JSON).read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def registered_adapted(workspace: str | Path, data_dir: str | Path) -> dict | None:
    """The registry entry of `data_dir` if its folder still holds the weights that were measured, else None."""
    entry = _read(Path(workspace)).get(str(Path(data_dir).resolve()))
    if not entry:
        return None
    sha = adapted_weights_sha256(entry.get("model", ""))
    if sha is None:
        return None
    if sha != entry.get("weights_sha256"):
        log.warning(
            "%s: retrained or replaced since `fashionrec adapt` measured it; not used by default", entry["model"]
        )
        return None
    return entry


def resolve_backbone(name: str | None, data_dir: str | Path, workspace: str | Path) -> tuple[str, str]:
    """(backbone to use, why). `auto`/None: the data folder's registered adapted model when it measured better than
    ImageNet, else the ImageNet default; anything else is returned as given."""
    if name not in (None, AUTO):
        return str(name), "asked for"
    entry = registered_adapted(workspace, data_dir)
    if entry and entry.get("better"):
        r10 = entry.get("recall@10") or {}
        return entry["model"], (
            f"the model `fashionrec adapt` wrote for this data (held-out same-product R@10 {r10.get('adapted'):.3f} "
            f"vs ImageNet {r10.get('imagenet'):.3f}); --backbone {DEFAULT_BACKBONE} for ImageNet features"
        )
    if entry:
        return DEFAULT_BACKBONE, f"ImageNet: the adapted model {entry['model']} did not retrieve better than it"
    return DEFAULT_BACKBONE, "ImageNet (no `fashionrec adapt` model for this data in the workspace)"
