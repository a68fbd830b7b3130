"""Vector index at scale: exact search vs FAISS IVF / HNSW / IVF-PQ on N synthetic vectors (and the real H&M
features when ../shared/data/hm and a feature cache are there).

Synthetic data is clustered like real embeddings (a mixture of 2,000 Gaussians in 256-d, the serving dimension),
L2-normalised. Per index: build time, memory, single-query latency p50/p99 with one thread, recall@10 against exact
search. The last line is for the automatic choice (`fashionrec.index.create_index("auto", n_items=N)`):
    N items: p99 X.XX ms at recall@10 R.RRR (INDEX)

    .venv/bin/python benchmarks/index_scale.py [--n 1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def clustered(n: int, d: int, seed: int = 0, centers: int | None = None) -> np.ndarray:
    """Gaussian blobs (about 100 points each) with noise as large as the spread of the centres: hard for IVF's cells
    and HNSW's graph alike, unlike well-separated blobs where every index scores recall 1.0."""
    rng = np.random.default_rng(seed)
    centers = centers or max(10, n // 100)
    c = rng.normal(size=(centers, d)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x[s : s + m] = c[rng.integers(0, centers, m)] + 1.0 * rng.normal(size=(m, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench(kind: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, **params) -> dict:
    import faiss

    from fashionrec.index import create_index

    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    idx = create_index(kind, dim=x.shape[1], **params)
    ids = np.arange(len(x)).astype(str)
    idx.add(ids.tolist(), x)
    build = time.perf_counter() - t
    faiss.omp_set_num_threads(1)  # single query, one thread: the serving situation
    lat, hits = [], 0
    for i in range(len(q)):
        t = time.perf_counter()
        rows, _ = idx._search_rows(q[i : i + 1], 10, None)
        lat.append(time.perf_counter() - t)
        hits += len(set(rows[0].tolist()) & set(truth[i].tolist()))
    faiss.omp_set_num_threads(2)
    mem = idx._x.nbytes if kind == "exact" else len(faiss.serialize_index(idx._index))
    ms = np.array(lat) * 1000
    return {
        "kind": kind,
        "params": {k: v for k, v in idx.config().items() if k not in ("kind", "dim")},
        "build_s": build,
        "mem_mb": mem / 2**20,
        "p50": np.percentile(ms, 50),
        "p99": np.percentile(ms, 99),
        "recall": hits / (10 * len(q)),
    }


def exact_truth(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    """The true top-k rows of each query (exact brute force, FAISS knn)."""
    from fashionrec.index.knn import knn

    return knn(q, x, k)[1]


def run(x: np.ndarray, q: np.ndarray, label: str, configs: list) -> dict:
    from fashionrec.index.base import choose_index_kind

    truth = exact_truth(x, q)
    auto = choose_index_kind(len(x))
    print(f"\n{label}: {len(x):,} vectors x {x.shape[1]}-d, {len(q)} queries; automatic choice: {auto}")
    print(f"{'index':8s} {'params':44s} {'build s':>8s} {'MiB':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'recall@10':>9s}")
    first = {}  # the first configuration of each kind is its default, which the automatic choice uses
    for kind, params in configs:
        r = bench(kind, x, q, truth, **params)
        first.setdefault(kind, r)
        print(
            f"{kind:8s} {str(r['params'])[:44]:44s} {r['build_s']:8.1f} {r['mem_mb']:8.1f} {r['p50']:7.3f} {r['p99']:7.3f} {r['recall']:9.3f}",
            flush=True,
        )
    if auto not in first:
        first[auto] = bench(auto, x, q, truth)
    return first[auto] | {"auto": auto}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--skip-exact", action="store_true", help="exact search is slow at 1M (tens of ms per query)")
    ap.add_argument("--kinds", default="exact,hnsw,ivf,pq", help="which index kinds to run")
    args = ap.parse_args()
    x = clustered(args.n + args.queries, args.dim)
    q, x = x[: args.queries], x[args.queries :]
    configs = [("exact", {}), ("hnsw", {}), ("ivf", {"nprobe": 32}), ("pq", {"nprobe": 32, "m": 32})]
    kinds = set(args.kinds.split(",")) - ({"exact"} if args.skip_exact else set())
    configs = [c for c in configs if c[0] in kinds]
    auto = run(x, q, "synthetic (clustered)", configs)
    print(f"{args.n} items: p99 {auto['p99']:.2f} ms at recall@10 {auto['recall']:.3f} ({auto['auto']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
