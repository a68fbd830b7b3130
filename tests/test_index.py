import numpy as np
import pytest

from fashionrec.errors import FashionrecError
from fashionrec.index import VectorIndex, create_index, list_indexes, load_index
from fashionrec.index.base import choose_index_kind

KINDS = list_indexes()  # the contract runs on every registered backend, not a hand-kept list


def test_every_builtin_backend_is_registered():
    assert set(KINDS) >= {"exact", "flat", "hnsw", "ivf", "pq"}


def _data(n=2000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return [f"i{j}" for j in range(n)], x


@pytest.mark.parametrize("kind", KINDS)
def test_contract_self_is_nearest_and_matches_exact(kind, tmp_path):
    ids, x = _data()
    idx = create_index(kind, dim=32)
    idx.add(ids, x, categories=["a" if j % 2 else "b" for j in range(len(ids))])
    got, scores = idx.search(x[:50], k=10)
    assert (got[:, 0] == np.array(ids[:50], dtype=object)).mean() >= 0.95
    ref = create_index("exact", dim=32)
    ref.add(ids, x)
    exp, _ = ref.search(x[50:100] + 0.1, k=10)
    got2, _ = idx.search(x[50:100] + 0.1, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got2, exp)])
    assert recall >= (0.99 if kind in ("exact", "flat") else 0.6)
    # category filter: only odd items ('a')
    cat_ids, _ = idx.search(x[:5], k=5, category="a")
    assert all(int(i[1:]) % 2 == 1 for i in cat_ids.ravel() if i)
    # add a new item without rebuild: it is found at once
    new = np.random.default_rng(9).normal(size=(1, 32)).astype(np.float32)
    idx.add(["new"], new, categories=["a"])
    assert idx.search(new, k=1)[0][0, 0] == "new"
    # save/load round trip: the same answers (ids and scores), the same categories, the same backend
    idx.save(tmp_path / "i.idx")
    back = VectorIndex.load(tmp_path / "i.idx")
    assert type(back) is type(idx) and back.kind == kind and back.config() == idx.config()
    assert back.search(new, k=1)[0][0, 0] == "new" and len(back) == len(ids) + 1
    q = x[100:110] + 0.05
    for cat in (None, "a"):
        a_ids, a_sc = idx.search(q, k=10, category=cat)
        b_ids, b_sc = back.search(q, k=10, category=cat)
        assert (a_ids == b_ids).all() and np.allclose(a_sc, b_sc)
    assert back.categories == idx.categories


def test_exclude_and_replace():
    ids, x = _data(50, 8)
    idx = create_index("exact", dim=8)
    idx.add(ids, x)
    got, _ = idx.search(x[:1], k=3, exclude=["i0"])
    assert "i0" not in got[0]
    idx.add(["i0"], -x[:1])  # replacing a vector masks the old one
    assert len(idx) == 50
    got, _ = idx.search(x[:1], k=1)
    assert got[0, 0] != "i0"


def test_auto_choice_by_size():
    assert choose_index_kind(20_000) == "exact"
    assert choose_index_kind(1_000_000) == "hnsw"
    assert choose_index_kind(50_000_000) == "pq"
    with pytest.raises(ValueError, match="unknown index"):
        create_index("annoy", dim=4)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "pq"])
def test_category_filter_returns_k_when_k_exist(kind):
    """HNSW with a selector ran out of candidates (a 9-item category gave 2-5 of 9, a 250-item
    one 88-97 of 100). An approximate search that comes back short is completed exactly within the category."""
    rng = np.random.default_rng(0)
    n, d = 5000, 32
    x = rng.normal(size=(n, d)).astype(np.float32)
    cats = np.array(["big"] * n, dtype=object)
    cats[rng.choice(n, 250, replace=False)] = "mid"
    small = np.flatnonzero(cats == "big")[:9]
    cats[small] = "small"
    idx = create_index(kind, dim=d)
    ids = [f"i{j}" for j in range(n)]
    idx.add(ids, x, categories=list(cats))
    for cat, k, expect in [("mid", 100, 100), ("small", 100, 9), ("small", 5, 5)]:
        got, scores = idx.search(x[:20], k=k, category=cat)
        assert [int((g != "").sum()) for g in got] == [expect] * 20, (cat, k)
        assert all(cats[int(i[1:])] == cat for i in got.ravel() if i)
    # the exact completion ranks like the reference
    ref = create_index("exact", dim=d)
    ref.add(ids, x, categories=list(cats))
    exp, _ = ref.search(x[:20], k=9, category="small")
    got, _ = idx.search(x[:20], k=9, category="small")
    assert (got == exp).all()
    # excluded items do not count as available
    got, _ = idx.search(x[:1], k=9, category="small", exclude=[ids[small[0]]])
    assert (got[0] != "").sum() == 8 and ids[small[0]] not in got[0]


def test_remove_masks_items_and_survives_save_load(tmp_path):
    ids, x = _data(50, 8)
    idx = create_index("exact", dim=8)
    idx.add(ids, x)
    idx.remove(["i0", "nope"])
    assert "i0" not in idx and len(idx) == 49
    assert "i0" not in idx.search(x[:1], k=5)[0][0]
    idx.save(tmp_path / "i.idx")
    back = load_index(tmp_path / "i.idx")
    assert "i0" not in back and len(back) == 49 and "i0" not in back.search(x[:1], k=5)[0][0]
    back.add(["i0"], x[:1])  # a removed id can be added again
    assert back.search(x[:1], k=1)[0][0, 0] == "i0"


def test_categories_none_survive_save_load(tmp_path):
    idx = create_index("exact", dim=4)
    idx.add(["a", "b", "c"], np.eye(4, dtype=np.float32)[:3], categories=["x", None, ""])
    idx.save(tmp_path / "i.idx")
    assert load_index(tmp_path / "i.idx").categories == ["x", None, ""]


def test_a_new_backend_registers_without_editing_base(tmp_path):
    from fashionrec.index import base
    from fashionrec.index.exact import ExactIndex

    @base.register_index("test-reversed")
    class Reversed(ExactIndex):  # a toy backend: exact search, its own kind and config
        def config(self):
            return {**super().config(), "note": "reversed"}

        def __init__(self, dim, note="reversed"):
            super().__init__(dim)

    try:
        idx = create_index("test-reversed", dim=4)
        idx.add(["a", "b"], np.eye(4, dtype=np.float32)[:2])
        idx.save(tmp_path / "r.idx")
        back = load_index(tmp_path / "r.idx")
        assert type(back) is Reversed and back.search(np.eye(4)[1:2], k=1)[0][0, 0] == "b"
        from fashionrec.index.faiss import HNSWIndex

        with pytest.raises(FashionrecError, match="holds a 'test-reversed' index, not a HNSWIndex"):
            HNSWIndex.load(tmp_path / "r.idx")
    finally:
        del base._REGISTRY["test-reversed"]


def test_old_pickled_index_is_refused_with_a_clear_error(tmp_path):
    import pickle

    old = tmp_path / "items.idx"
    old.write_bytes(pickle.dumps({"config": {"kind": "exact", "dim": 4}, "ids": []}, protocol=5))
    with pytest.raises(FashionrecError, match="old format.*refit / rebuild"):
        load_index(old)
    (tmp_path / "junk.idx").write_bytes(b"not an index")
    with pytest.raises(FashionrecError, match="junk.idx: not a fashionrec artifact"):
        load_index(tmp_path / "junk.idx")
