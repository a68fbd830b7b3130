"""The `adapt` recipe: fine-tune a backbone on a folder's labels + same-product (or same-photo) pairs, write the
model folder, evaluate on held-out products, register the folder for the data. The CLI, the Python API and
benchmarks call `adapt_catalog`; it reports through `AdaptCallbacks` (`console_callbacks` prints).

The steps live in `training/adapt/` (data, lower_cache, loop, heads, calibration, io) and `evaluation/adapt.py`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fashionrec.errors import FashionrecError
from fashionrec.training.adapt.config import AdaptCallbacks, AdaptConfig
from fashionrec.training.adapt.model import AdaptedModel, tta_name


@dataclass
class AdaptResult:
    model: AdaptedModel
    metrics: dict = field(default_factory=dict)
    out_dir: Path | None = None


def console_callbacks(every_seconds: float = 30.0) -> AdaptCallbacks:
    """Print each log line, and progress (caching, training steps) at most every `every_seconds`."""
    last = {"t": 0.0}

    def log(message: str) -> None:
        print(message, flush=True)

    def progress(stage: str, done: int, total: int, info: dict) -> None:
        now = time.time()
        if now - last["t"] < every_seconds and not (total and done == total):
            return
        last["t"] = now
        rate = info.get("photos", done) / max(info.get("seconds", 0.0), 1e-9)
        if stage == "cache":
            eta = (total - done) / max(done / max(info["seconds"], 1e-9), 1e-9) / 60
            log(
                f"  caching the frozen lower part ({info['views']} views): {done}/{total} photos, {rate:.1f} img/s, "
                f"ETA {eta:.1f} min"
            )
        else:
            loss = " ".join(f"{n.replace('_name', '')}={v:.3f}" for n, v in info.get("loss", {}).items())
            log(f"  [{stage}] step {done}, {rate:.0f} photos/s, loss {loss}; stage {min(info['frac'], 1) * 100:.0f}%")

    return AdaptCallbacks(log=log, progress=progress)


def adapt_catalog(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: AdaptConfig = AdaptConfig(),
    *,
    workspace: str | Path | None = None,
    progress: bool = True,
    callbacks: AdaptCallbacks | None = None,
) -> AdaptResult:
    """Fine-tune a backbone on the folder's labels + same-product pairs; write the model folder; evaluate.
    `callbacks` (default: printing when `progress`, else silent) hear of every step."""
    from fashionrec.artifacts.registry import REGISTRY, register_adapted
    from fashionrec.device import resolve_device
    from fashionrec.evaluation.adapt import (
        format_adapt_metrics,
        heldout_figures,
        heldout_retrieval,
        retrieval_by_views,
        type_column_values,
    )
    from fashionrec.io import default_workspace, write_json
    from fashionrec.training.adapt.data import prepare, seed_everything
    from fashionrec.training.adapt.heads import finish_heads
    from fashionrec.training.adapt.io import init_model, save_adapted
    from fashionrec.training.adapt.loop import train, training_seconds
    from fashionrec.training.adapt.lower_cache import view_names

    t_start = time.time()
    cb = callbacks or (console_callbacks() if progress else AdaptCallbacks())
    ws = Path(workspace or default_workspace())
    rng = seed_everything(cfg.seed)
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:  # CUDA asked for and absent: the message names the option
        raise FashionrecError(f"adapt: {e}") from None
    cfg, trunk, pre, k, data = prepare(data_dir, cfg, ws, cb, device)
    model = init_model(trunk, data, cfg, cb.log).to(device)
    train_secs = training_seconds(model, data, cfg, k, t_start)
    history = train(model, data, cfg, k, train_secs, cb, rng, device)
    embs, probs, calibration = finish_heads(model, data, cfg, k, cb.log)
    # the folder embeds with these views averaged: evaluate (and cache) exactly that
    views_name = cfg.embedding_tta or tta_name(cfg.flips, cfg.gray)
    flip, gray = "flip" in views_name, "gray" in views_name
    model.backbone.flip_tta, model.backbone.gray_tta = flip, gray
    cached = view_names(cfg.flips, cfg.gray)
    use = [cached.index(v) for v in view_names(flip, gray)]
    emb = model.backbone.average_views(*(torch.from_numpy(embs[i]) for i in use)).numpy() if len(use) > 1 else embs[0]
    types = type_column_values(data.ids, data.meta, data.heads, data.labels)
    ret = heldout_retrieval([data.base_views[i] for i in use], emb, data.groups, data.held, types, views_name)
    figures = heldout_figures(data.ids, data.meta, data.groups, data.held, data.heads, data.labels, probs)
    wall = time.time() - t_start
    metrics = {
        "retrieval_heldout": ret,
        # the same queries with fewer views averaged (one view embeds 4x faster than "flip+gray")
        "retrieval_heldout_views": retrieval_by_views(embs, cached, data.groups, data.held, types),
        **figures,
        "calibration_heldout": calibration,
        "positives": data.pairs,
        "device": str(device),
        "wall_seconds": round(wall, 1),
        "n_photos": len(data.ids),
        "n_heldout_photos": int(data.held.sum()),
        "n_queries": int(ret["adapted"]["n_queries"]),
        "history": history,
    }
    if cfg.init_from and (Path(cfg.init_from) / "metrics.json").exists():
        prev_m = json.loads((Path(cfg.init_from) / "metrics.json").read_text())
        metrics["continued_from"] = str(cfg.init_from)
        metrics["total_wall_seconds"] = round(wall + prev_m.get("total_wall_seconds", prev_m.get("wall_seconds", 0)), 1)
    config = {
        "base_backbone": cfg.backbone,
        "trunk_kwargs": {},
        "embed_dim": cfg.embed_dim,
        "preprocess": {**asdict(pre), "pad_square": True},
        "split_block": k,
        "embedding": "L2-normalised linear projection of the pre-logits (metric loss: SupConLoss)",
        "embedding_tta": views_name,  # the views averaged into the embedding
        "heads_on": "pooled taps + pre-logits" if model.head_taps else "pre-logits",
        "product_level_columns": figures["product_level_columns"],  # `tag` makes these agree within a product
        "group_column": cfg.group_column,
        "adapt_config": {**asdict(cfg), "label_columns": list(cfg.label_columns)},
        "heldout_products": sorted(np.unique(data.groups[data.held]).tolist()),
        "trained_on": str(Path(data_dir).resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = save_adapted(model, out_dir, config)
    write_json(out / "metrics.json", metrics)
    from fashionrec.backbones import create_backbone

    _write_features_to_cache(create_backbone(str(out)), data.ids, data.paths, emb, ws)
    if trunk.weights_id != "random":  # (its identity string is the ImageNet one: training changed `model` only)
        _write_features_to_cache(trunk, data.ids, data.paths, data.base_views[0], ws)
    entry = register_adapted(ws, data_dir, out, metrics)
    cb.log(f"adapt: wrote {out} in {wall / 60:.1f} min")
    cb.log(format_adapt_metrics(metrics))
    cb.log(
        f"adapt: registered for {Path(data_dir).resolve()} in {ws / REGISTRY}: the recommenders, `similar`, "
        + (
            "`evaluate` and the server use it by default (--backbone auto), as it retrieves better than ImageNet"
            if entry["better"]
            else "`evaluate` and the server keep ImageNet by default: it did not retrieve better than ImageNet"
        )
    )
    return AdaptResult(model, metrics, out)


def _write_features_to_cache(bb, ids: list[str], paths_by_id: dict, emb: np.ndarray, ws: Path) -> None:
    """The held-out evaluation already embedded every photo: store it under the key `embed_image_files` uses for
    the backbone `bb` (the model folder's, or the ImageNet trunk's) in eager fp32, so `fashionrec embed --backbone
    MODEL_DIR` and the benchmark reuse it."""
    from fashionrec.features import FeatureCache, InferencePath, file_fingerprint, model_key
    from fashionrec.features import Preprocess as P

    key = f"files-{model_key(bb, P.for_backbone(bb), InferencePath())}"
    FeatureCache(ws).save(
        key, fingerprints=np.array([file_fingerprint(paths_by_id[i]) for i in ids]), features=emb.astype(np.float32)
    )
