"""Work past one machine, with Ray: starting or joining Ray (`start_ray`), and image embedding (Ray Data).

`embed_with_ray` reads image paths as a Ray Dataset, decodes in parallel tasks, and embeds with `map_batches`
over an actor pool (each actor builds the backbone once). Locally it starts a Ray instance on this machine; on a
cluster pass `address="ray://head:10001"` (or set RAY_ADDRESS) and the same code fans out over every node. The
features equal the local path's (same backbone, same preprocessing, same fp32 eager forward).

The nightly recommendation job on Ray actors is `fashionrec.recommend.batch.ray`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def require_ray() -> None:
    from fashionrec.extras import require

    require("distributed", "ray", what="Ray is not installed")


def start_ray(address: str | None, cpus: int) -> bool:
    """Connect to `address`, or start a local Ray with `cpus` CPUs, unless Ray is already up. True if this call
    started it (the caller shuts it down when done)."""
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting from offline machines
    require_ray()
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address=address,
        num_cpus=None if address else max(1, cpus),
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    return True


class _Embedder:
    """One per Ray actor: the backbone is built once, then reused for every batch."""

    def __init__(self, backbone: str, input_size: int, backbone_kwargs: dict):
        from fashionrec.backbones import create_backbone
        from fashionrec.features import Preprocess

        self.bb = create_backbone(backbone, input_size=input_size, **backbone_kwargs)
        self.pre = Preprocess.for_backbone(self.bb)

    def __call__(self, batch: dict) -> dict:
        from fashionrec.data.images import ImageDecodeError
        from fashionrec.features import InferencePath, run_backbone

        arrays, ok = [], []
        for p in batch["path"]:
            try:
                arrays.append(self.pre.load(p))
                ok.append(True)
            except ImageDecodeError:
                ok.append(False)
        dim = self.bb.embed_dim
        feats = np.zeros((len(ok), dim), dtype=np.float32)
        if arrays:
            f = run_backbone(self.bb, self.pre.arrays_to_tensor(np.stack(arrays)), InferencePath()).numpy()
            feats[np.flatnonzero(ok)] = f
        return {"id": batch["id"], "ok": np.array(ok), "features": feats}


def embed_with_ray(
    items: dict[str, Path],
    *,
    backbone: str = "efficientnet_lite0",
    input_size: int = 96,
    num_actors: int = 2,
    batch_size: int = 64,
    address: str | None = None,
    backbone_kwargs: dict | None = None,
) -> tuple[list[str], np.ndarray]:

    require_ray()
    import ray

    started = start_ray(address, num_actors)
    try:
        ds = ray.data.from_items([{"id": k, "path": str(v)} for k, v in items.items()])
        out = ds.map_batches(
            _Embedder,
            fn_constructor_args=(backbone, input_size, backbone_kwargs or {}),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=1,
        )
        rows = out.take_all()
    finally:
        if started:
            ray.shutdown()
    order = {k: j for j, k in enumerate(items)}
    rows = sorted((r for r in rows if r["ok"]), key=lambda r: order[str(r["id"])])
    ids = [str(r["id"]) for r in rows]
    feats = np.stack([r["features"] for r in rows]) if rows else np.zeros((0, 0), dtype=np.float32)
    return ids, feats
