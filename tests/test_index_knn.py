"""The one exact top-k (fashionrec.index.knn: FAISS) against hand-written numpy references, and its users: the exact
index, same-product retrieval and the photo tagger's neighbour vote."""

import numpy as np
import pandas as pd
import pytest

from fashionrec.index.knn import RowStore, knn, l2_normalize


def _oracle_topk(q, g, k):
    """Brute force in numpy: scores of every pair, best first, equal scores by row."""
    s = np.asarray(q, np.float64) @ np.asarray(g, np.float64).T
    rows = np.lexsort((np.broadcast_to(np.arange(g.shape[0]), s.shape), -s), axis=-1)[:, :k]
    return np.take_along_axis(s, rows, 1), rows


def _oracle_nearest_neighbours(features, queries, k):
    """The argpartition version `nearest_neighbours` had: self masked to -inf, stable sort of the top k."""
    f = l2_normalize(features)
    k = min(k, len(f) - 1)
    sim = f[queries] @ f.T
    sim[np.arange(len(queries)), queries] = -np.inf
    part = np.argpartition(-sim, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def test_knn_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3000, 24)).astype(np.float32)
    q = rng.normal(size=(70, 24)).astype(np.float32)  # above FAISS's BLAS threshold (20 queries) and below it
    for qq in (q, q[:5]):
        s, r = knn(qq, g, 15)
        es, er = _oracle_topk(qq, g, 15)
        assert (r == er).all() and np.allclose(s, es, atol=1e-4)
    s, r = knn(q[:3], g[:4], 10)  # k larger than the gallery: all of it
    assert r.shape == (3, 4) and (np.sort(r, 1) == np.arange(4)).all()
    assert knn(q[:3], g[:0], 5)[1].shape == (3, 0) and knn(q[:0], g, 5)[1].shape == (0, 5)


def test_knn_orders_ties_by_row():
    g = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0.5, 0.5]], np.float32)
    s, r = knn(np.array([[1, 0]], np.float32), g, 4)
    assert r.tolist() == [[0, 2, 3, 4]] and s[0, :3].tolist() == [1, 1, 1]


def test_row_store_appends_without_copying_every_row():
    st = RowStore(3)
    buffers = set()
    for i in range(1000):
        st.append(np.full((1, 3), i, np.float32))
        buffers.add(id(st._buf))
    assert len(st) == 1000 and (st.array[:, 0] == np.arange(1000)).all()
    assert len(buffers) <= 8  # capacity doubles: 16, 32, ..., 1024 (a copy per add would give 1000)
    back = RowStore(3, st.array)
    back.append(np.zeros((2, 3)))
    assert len(back) == 1002 and (back.array[:1000] == st.array).all()


def test_exact_index_matches_brute_force_with_categories():
    from fashionrec.index import create_index

    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    cats = np.where(rng.random(500) < 0.3, "a", "b")
    idx = create_index("exact", dim=16)
    for s in range(0, 500, 37):  # many small adds
        idx.add([f"i{j}" for j in range(s, min(s + 37, 500))], x[s : s + 37], categories=list(cats[s : s + 37]))
    q = rng.normal(size=(30, 16)).astype(np.float32)
    xn, qn = l2_normalize(x), l2_normalize(q)
    got, scores = idx.search(q, k=8)
    es, er = _oracle_topk(qn, xn, 8)
    assert (got == np.array([[f"i{j}" for j in row] for row in er], dtype=object)).all()
    assert np.allclose(scores, es, atol=1e-5)
    got, _ = idx.search(q, k=8, category="a")
    sel = np.flatnonzero(cats == "a")
    _, er = _oracle_topk(qn, xn[sel], 8)
    assert (got == np.array([[f"i{sel[j]}" for j in row] for row in er], dtype=object)).all()


def test_nearest_neighbours_matches_the_argpartition_reference():
    from fashionrec.evaluation.retrieval import nearest_neighbours

    rng = np.random.default_rng(2)
    f = rng.normal(size=(400, 12)).astype(np.float32)
    queries = rng.choice(400, 60, replace=False)
    assert (nearest_neighbours(f, queries, 10) == _oracle_nearest_neighbours(f, queries, 10)).all()
    # exact copies tie with the query itself: the query is never its own neighbour, the copies come by row
    dup = np.repeat(f[:3], 4, axis=0)  # rows 0-3 one photo, 4-7 another, 8-11 a third
    nn = nearest_neighbours(dup, np.array([0, 5, 11]), 3)
    assert nn.tolist() == [[1, 2, 3], [4, 6, 7], [8, 9, 10]]
    assert nearest_neighbours(f[:1], np.array([0]), 5).shape == (1, 0)


def test_tag_vote_matches_the_argpartition_reference(monkeypatch):
    """The tagger's vote only depends on which neighbours are found: FAISS gives the numpy reference's tags."""
    from fashionrec.recommend import attributes

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16))
    cls = rng.integers(0, 4, 300)
    x = (centres[cls] + 0.8 * rng.normal(size=(300, 16))).astype(np.float32)
    ids = [f"{j:010d}" for j in range(300)]
    meta = pd.DataFrame({"product_group_name": np.array(list("ABCD"))[cls]}, index=ids)
    meta = meta.iloc[:250]  # 50 items without a row
    got = attributes.predict_attributes(ids, x, meta, ["product_group_name"], k=7, chunk=64)

    def argpartition_knn(q, g, k):
        sim = q @ g.T
        nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        return np.take_along_axis(sim, nb, 1), nb

    monkeypatch.setattr(attributes, "knn", argpartition_knn)
    ref = attributes.predict_attributes(ids, x, meta, ["product_group_name"], k=7, chunk=64)
    assert (got["product_group_name"] == ref["product_group_name"]).all()
    assert np.allclose(got["product_group_name_confidence"], ref["product_group_name_confidence"], atol=1e-5)
    assert (got["product_group_name"].to_numpy() == np.array(list("ABCD"))[cls]).mean() > 0.9


@pytest.mark.parametrize("kind", ["pq"])
def test_pq_rerank_uses_exact_scores(kind):
    from fashionrec.index import create_index

    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    idx = create_index(kind, dim=32)
    idx.add([f"i{j}" for j in range(3000)], x)
    got, scores = idx.search(x[:10], k=5)
    assert (got[:, 0] == np.array([f"i{j}" for j in range(10)], dtype=object)).all()
    # re-ranked scores are exact cosine similarities, best first
    xn = l2_normalize(x)
    exact = np.array([[xn[int(i[1:])] @ xn[b] for i in row] for b, row in enumerate(got)])
    assert np.allclose(scores, exact, atol=1e-5) and (np.diff(scores, axis=1) <= 1e-6).all()
