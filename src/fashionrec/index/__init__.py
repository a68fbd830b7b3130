"""Vector indexes behind one interface: exact brute force (the reference) and FAISS (flat, IVF, HNSW, IVF-PQ).

No torch or timm here. `create_index("auto", n_items=N)` picks by catalog size:
- N < 100,000: exact (flat inner product; brute force is both exact and fast at this size);
- N < 3,000,000: HNSW (M=32; sub-millisecond queries, recall@10 >= 0.95 with efSearch 64-128, no training);
- larger: IVF-PQ (memory-bounded; ~sqrt(N) lists, 16-byte codes, exact re-ranking of a shortlist).

`base` holds the contract, the table, the factory and the automatic choice; `exact` and `faiss` register their
backends when imported, which this package does.
"""

from fashionrec.index import exact, faiss  # noqa: F401,E402  (backends register themselves)
from fashionrec.index.base import VectorIndex, create_index, list_indexes, load_index, register_index

__all__ = ["VectorIndex", "create_index", "list_indexes", "load_index", "register_index"]
