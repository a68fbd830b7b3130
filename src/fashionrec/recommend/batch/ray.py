"""The batch job on Ray: customers sharded over actors that share one copy of the fitted model through the object
store (`ray.put` once); each chunk of customers is written by `rows.write_blocks` to its own part file, and the
parts are concatenated in customer order: the output equals the local runner's, byte for byte."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from fashionrec.distributed import require_ray, start_ray
from fashionrec.io import atomic_path
from fashionrec.recommend.batch.rows import write_blocks


class _Recommender:
    """One per Ray actor: holds the fitted model (deserialised once from the object store) and writes the rows of
    the customer chunks it is given to their own part files."""

    def __init__(self, model_ref, fill: list[str], k: int):
        self.model, self.fill, self.k = model_ref, fill, k  # Ray resolves a top-level ObjectRef argument

    def run(self, users: list[str], path: str, block_size: int) -> dict:
        timings: dict = {}
        with open(path, "w", newline="") as f:
            write_blocks(f, self.model, users, self.k, self.fill, block_size=block_size, timings=timings)
        return {"rows": len(users), "timings": timings, "peak_gib": peak_rss_gib()}


def peak_rss_gib() -> float:
    """This process's high-water mark of resident memory (VmHWM), GiB; 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return 0.0


def _run_chunks(ray, actors, chunks, paths, block_size, t: dict, bar) -> None:
    """Chunks in order to whichever actor is free; timings (a wall-clock share: the actors run in parallel) and
    the actors' peak memory added to `t`."""
    pending, free, nxt, peaks = {}, list(actors), 0, {}
    while nxt < len(chunks) or pending:
        while free and nxt < len(chunks):
            a = free.pop()
            pending[a.run.remote(chunks[nxt], paths[nxt], block_size)] = a
            nxt += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            a = pending.pop(ref)
            res = ray.get(ref)
            peaks[id(a)] = max(peaks.get(id(a), 0.0), res["peak_gib"])
            for name, v in res["timings"].items():
                t[name] = t.get(name, 0.0) + v / len(actors)
            free.append(a)
            bar.update(res["rows"])
    t["worker_peak_gib"] = sum(peaks.values())


def recommend_all_ray(
    model,
    users: list[str],
    k: int,
    out_path,
    *,
    fill: list[str],
    workers: int = 2,
    block_size: int = 2048,
    progress: bool = True,
    header: bool = True,
    address: str | None = None,
    timings: dict | None = None,
    chunk_blocks: int = 4,
) -> Path:
    """`fashionrec.recommend.batch.recommend_all` on Ray: the fitted model is put in the object store once and
    shared by `workers` actors; customers go out in chunks of `chunk_blocks` blocks (in order, to whichever actor is
    free), each chunk's rows are written by its actor to a part file, and the driver concatenates the parts in
    customer order into the output (temporary name, renamed at the end). Locally it starts Ray with `workers` CPUs;
    `address` (or RAY_ADDRESS) joins a cluster, whose workers must see `out_path`'s folder (a shared file system)
    for the part files. `fill`: the items that complete short lists (the workers' slim model cannot make them)."""
    require_ray()
    import ray
    from tqdm.auto import tqdm

    users = list(users)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = start_ray(address, workers)
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
        with tqdm(
            total=len(users),
            desc=f"recommend ({getattr(model, 'name', '?')}, ray x{len(actors)})",
            unit="customer",
            disable=not progress,
            smoothing=0.1,
        ) as bar:
            _run_chunks(ray, actors, chunks, paths, block_size, t, bar)
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
