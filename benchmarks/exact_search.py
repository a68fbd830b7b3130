"""Exact top-k, index adds and the bootstrap at scale, each next to the numpy code it stands for.

- single-query exact top-10 over N unit vectors, one thread: `fashionrec.index.knn.knn` (FAISS) and numpy
  (scores of every row, argpartition, sort);
- `--adds` single-vector adds to an exact index already holding N vectors: the RowStore the index keeps, and
  `np.vstack` of the whole matrix per add;
- `bootstrap_ci` of the mean of `--boot-n` values (1,000 resamples): seconds and tracemalloc peak; the n_boot x n
  index matrix a one-shot draw needs is printed for comparison (not allocated).

    .venv/bin/python benchmarks/exact_search.py [--n 1000000] [--dim 256] [--queries 200] [--adds 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np


def _p(ms: list[float]) -> str:
    return f"p50 {np.percentile(ms, 50):7.2f} ms, p99 {np.percentile(ms, 99):7.2f} ms"


def search(x: np.ndarray, q: np.ndarray) -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    from fashionrec.index.knn import knn

    faiss.omp_set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS too: one thread each, the serving situation
    lat_f, lat_n, same = [], [], 0
    for i in range(len(q)):
        t = time.perf_counter()
        _, rows = knn(q[i : i + 1], x, 10)
        lat_f.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        s = x @ q[i]
        part = np.argpartition(-s, 10)[:10]
        ref = part[np.argsort(-s[part], kind="stable")]
        lat_n.append(1000 * (time.perf_counter() - t))
        same += set(rows[0].tolist()) == set(ref.tolist())
    print(f"exact top-10, {len(x):,} x {x.shape[1]}-d, 1 thread: faiss.knn {_p(lat_f)}")
    print(f"exact top-10, {len(x):,} x {x.shape[1]}-d, 1 thread: numpy     {_p(lat_n)}")
    print(f"same top-10 set: {same}/{len(q)} queries")


def adds(x: np.ndarray, n_adds: int) -> None:
    from fashionrec.index import create_index

    idx = create_index("exact", dim=x.shape[1])
    idx.add([str(i) for i in range(len(x))], x)
    new = np.random.default_rng(1).normal(size=(n_adds, x.shape[1])).astype(np.float32)
    t = time.perf_counter()
    for i in range(n_adds):
        idx.add([f"new{i}"], new[i : i + 1])
    a = time.perf_counter() - t
    m = x.copy()
    t = time.perf_counter()
    for i in range(n_adds):
        m = np.vstack([m, new[i : i + 1]])
    b = time.perf_counter() - t
    print(f"{n_adds} single adds onto {len(x):,} vectors: exact index {a:.2f} s, np.vstack per add {b:.2f} s")


def bootstrap(n: int) -> None:
    from fashionrec.evaluation.metrics import bootstrap_ci

    v = np.random.default_rng(2).random(n)
    tracemalloc.start()
    t = time.perf_counter()
    lo, hi = bootstrap_ci(v, n_boot=1000)
    sec = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(
        f"bootstrap_ci of {n:,} values, 1,000 resamples: {sec:.1f} s, peak {peak / 2**20:.0f} MiB "
        f"(a one-shot index matrix: {1000 * n * 8 / 2**30:.1f} GiB); interval [{lo:.5f}, {hi:.5f}]"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--adds", type=int, default=1000)
    ap.add_argument("--add-n", type=int, default=100_000, help="vectors in the index before the single adds")
    ap.add_argument("--boot-n", type=int, default=1_000_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = np.empty((args.n, args.dim), np.float32)
    for s in range(0, args.n, 100_000):
        x[s : s + 100_000] = rng.normal(size=(min(100_000, args.n - s), args.dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(args.n, args.queries, replace=False)] + 0.1 * rng.normal(size=(args.queries, args.dim))
    search(x, q.astype(np.float32))
    adds(x[: args.add_n], args.adds)
    bootstrap(args.boot_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
