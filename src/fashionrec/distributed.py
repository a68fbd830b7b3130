"""Batch work past one machine, with Ray: image embedding (Ray Data) and the nightly recommendation job (actors).

`embed_with_ray` reads image paths as a Ray Dataset, decodes in parallel tasks, and embeds with `map_batches`
over an actor pool (each actor builds the backbone once). Locally it starts a Ray instance on this machine; on a
cluster pass `address="ray://head:10001"` (or set RAY_ADDRESS) and the same code fans out over every node. The
features equal the local path's (same backbone, same preprocessing, same fp32 eager forward).

`recommend_all_ray` shards the customers of a batch recommendation over actors that share one copy of the fitted
model through the object store (`ray.put` once); each chunk of customers is written to its own part file, and the
parts are concatenated in customer order: the output equals `fashionrec.recommend.batch.recommend_all`'s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _require_ray() -> None:
    from fashionrec.extras import require

    require("distributed", "ray", what="Ray is not installed")


def _start_ray(address: str | None, cpus: int) -> bool:
    """Connect to `address`, or start a local Ray with `cpus` CPUs, unless Ray is already up. True if this call
    started it (the caller shuts it down when done)."""
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting from offline machines
    _require_ray()
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
        from fashionrec.features import InferencePath, _forward

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
            f = _forward(self.bb, self.pre.arrays_to_tensor(np.stack(arrays)), InferencePath()).numpy()
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

    _require_ray()
    import ray

    started = _start_ray(address, num_actors)
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


# ----------------------------------------------------------------------------------------------- batch recommendation
class _Recommender:
    """One per Ray actor: holds the fitted model (deserialised once from the object store) and writes the rows of
    the customer chunks it is given to their own part files."""

    def __init__(self, model_ref, fill: list[str], k: int):
        self.model, self.fill, self.k = model_ref, fill, k  # Ray resolves a top-level ObjectRef argument

    def run(self, users: list[str], path: str, block_size: int) -> dict:
        from fashionrec.recommend.batch import recommend_lists, write_rows

        timings: dict = {}
        with open(path, "w", newline="") as f:
            for b in range(0, len(users), block_size):
                part = users[b : b + block_size]
                lists = recommend_lists(self.model, part, self.k, timings)
                t0 = time.perf_counter()
                write_rows(f, part, lists, self.fill, self.k)
                timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
        return {"rows": len(users), "timings": timings, "peak_gib": _peak_rss_gib()}


def _peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return 0.0


def recommend_all_ray(
    model,
    users: list[str],
    k: int,
    out_path,
    *,
    workers: int = 2,
    block_size: int = 2048,
    progress: bool = True,
    fill: list[str] | None = None,
    header: bool = True,
    address: str | None = None,
    timings: dict | None = None,
    chunk_blocks: int = 4,
) -> Path:
    """`fashionrec.recommend.batch.recommend_all` on Ray: the fitted model is put in the object store once and
    shared by `workers` actors; customers go out in chunks of `chunk_blocks` blocks (in order, to whichever actor is
    free), each chunk's rows are written by its actor to a part file, and the driver concatenates the parts in
    customer order into the output (temporary name, renamed at the end). The output equals the single-process
    one byte for byte. Locally it starts Ray with `workers` CPUs; `address` (or RAY_ADDRESS) joins a cluster, whose
    workers must see `out_path`'s folder (a shared file system) for the part files."""
    import shutil
    import tempfile

    _require_ray()
    import ray
    from tqdm.auto import tqdm

    from fashionrec.io import atomic_path
    from fashionrec.recommend.batch import popular_fill

    if fill is None:
        fill = popular_fill(model, k)
    users = list(users)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = _start_ray(address, workers)
    parts_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.parts-", dir=out_path.parent))
    t = timings if timings is not None else {}
    try:
        # once: every actor maps the same serialized model (without the training log where the model can drop it)
        model_ref = ray.put(model.batch_copy() if hasattr(model, "batch_copy") else model)
        actor_cls = ray.remote(num_cpus=1)(_Recommender)
        actors = [actor_cls.remote(model_ref, fill, k) for _ in range(max(1, workers))]
        step = block_size * max(1, chunk_blocks)
        chunks = [users[a : a + step] for a in range(0, len(users), step)]
        paths = [str(parts_dir / f"part-{c:06d}.csv") for c in range(len(chunks))]
        pending, free, nxt, results = {}, list(actors), 0, {}
        peaks = {}
        with tqdm(
            total=len(users),
            desc=f"recommend ({getattr(model, 'name', '?')}, ray x{len(actors)})",
            unit="customer",
            disable=not progress,
            smoothing=0.1,
        ) as bar:
            while nxt < len(chunks) or pending:
                while free and nxt < len(chunks):
                    a = free.pop()
                    pending[a.run.remote(chunks[nxt], paths[nxt], block_size)] = (a, nxt)
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    a, c = pending.pop(ref)
                    res = ray.get(ref)
                    results[c] = res
                    peaks[id(a)] = max(peaks.get(id(a), 0.0), res["peak_gib"])
                    for name, v in res["timings"].items():
                        t[name] = t.get(name, 0.0) + v / len(actors)  # wall-clock share: the actors run in parallel
                    free.append(a)
                    bar.update(res["rows"])
        t["worker_peak_gib"] = sum(peaks.values())
        t0 = time.perf_counter()
        with atomic_path(out_path, suffix=".tmp.csv") as tmp:
            with open(tmp, "wb") as out:
                if header:
                    out.write(b"customer_id,prediction\n")
                for p in paths:
                    with open(p, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
        t["write"] = t.get("write", 0.0) + time.perf_counter() - t0
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
        if started:
            ray.shutdown()
    return out_path
