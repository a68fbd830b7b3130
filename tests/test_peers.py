"""The Cornac peers (vbpr, amr) on data with a known answer.

Two taste groups of customers; each buys only items of one visual cluster (image vectors near e0 or near e1). Each
cluster also holds items nobody bought (new arrivals with a photo only): a visual model must rank a customer's own
cluster's never-bought items above the other cluster's. Two items have neither a photo nor a purchase.
"""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("cornac", reason="the Cornac peers need Cornac: pip install cornac==3.0.1")

from fashionrec.errors import FashionrecError  # noqa: E402
from fashionrec.recommend import create_recommender, load_recommender  # noqa: E402
from fashionrec.recommend.base import ItemFeatures, RecData  # noqa: E402
from fashionrec.recommend.peers import train_cornac  # noqa: E402

PEERS = ["vbpr", "amr"]
DIM = 16
N_BOUGHT, N_NEW = 20, 10  # per cluster
ITEMS = [f"{c}{j:03d}" for c in "AB" for j in range(N_BOUGHT + N_NEW)] + ["X000", "X001"]
CLUSTER = {i: i[0] for i in ITEMS}
BOUGHT = {c: [f"{c}{j:03d}" for j in range(N_BOUGHT)] for c in "AB"}
NEW = {c: [f"{c}{j:03d}" for j in range(N_BOUGHT, N_BOUGHT + N_NEW)] for c in "AB"}
PARAMS = {"n_epochs": 50, "batch_size": 50, "seed": 0}  # more steps than the defaults: the data is tiny


def _world(seed=0) -> RecData:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2020-01-01")
    rows = []
    for u in range(40):
        c = "AB"[u % 2]
        for item in rng.choice(BOUGHT[c], size=8, replace=False):
            rows.append((f"u{u:02d}", item, start + pd.Timedelta(days=int(rng.integers(0, 90))), 1.0))
    ev = pd.DataFrame(rows, columns=["user", "item", "timestamp", "weight"]).sort_values("timestamp")
    with_photo = [i for i in ITEMS if CLUSTER[i] != "X"]
    centre = {"A": np.eye(DIM)[0], "B": np.eye(DIM)[1]}
    vecs = np.stack([centre[CLUSTER[i]] + 0.1 * rng.normal(size=DIM) for i in with_photo]).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return RecData(ev, ITEMS, image_features=ItemFeatures(with_photo, vecs))


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def fitted(world):
    return {name: create_recommender(name, **PARAMS).fit(world) for name in PEERS}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def _idx(data, ids):
    return np.array([data.item_index[i] for i in ids])


def _user_of(c: str) -> list[str]:
    return [f"u{u:02d}" for u in range(40) if "AB"[u % 2] == c]


@pytest.mark.parametrize("name", PEERS)
def test_never_bought_items_of_the_customers_own_look_rank_first(name, world, fitted):
    model = fitted[name]
    for c, other in (("A", "B"), ("B", "A")):
        for user in _user_of(c)[:5]:
            h, t = world.history(user)
            s = model.scores(h, t, user)
            auc = _auc(s[_idx(world, NEW[c])], s[_idx(world, NEW[other])])
            assert auc > 0.8, f"{name}: {user} (cluster {c}) never-bought AUC {auc:.2f}"


@pytest.mark.parametrize("name", PEERS)
def test_a_history_given_at_query_time_is_folded_in(name, world, fitted):
    model = fitted[name]
    for c, other in (("A", "B"), ("B", "A")):
        h = _idx(world, BOUGHT[c][:3])
        t = np.full(len(h), np.datetime64(world.now, "ns"))
        s = model.scores(h, t, None)
        assert _auc(s[_idx(world, NEW[c])], s[_idx(world, NEW[other])]) > 0.8
        assert _auc(s[_idx(world, BOUGHT[c][3:])], s[_idx(world, BOUGHT[other])]) > 0.8
        # a new customer's history that is only a new arrival (never bought, photo only) works too
        s = model.scores(_idx(world, NEW[c][:1]), t[:1], None)
        assert _auc(s[_idx(world, NEW[c][1:])], s[_idx(world, NEW[other])]) > 0.8


@pytest.mark.parametrize("name", PEERS)
def test_fold_in_maximises_the_models_objective_for_the_history(name, world, fitted):
    model = fitted[name]
    pos = _idx(world, BOUGHT["A"][:2] + NEW["A"][:1])
    A, b = model._item_matrix().astype(np.float64), model.item_bias.astype(np.float64)
    negs = model.negatives[~np.isin(model.negatives, pos)]

    def objective(q):
        d = (b[pos] + A[pos] @ q)[:, None] - (b[negs] + A[negs] @ q)[None, :]
        return -np.logaddexp(0, -d).mean() - 0.5 * model.lambda_w * q @ q

    best = model.fold_in(pos).astype(np.float64)
    rng = np.random.default_rng(0)
    steps = [0.05 * rng.normal(size=best.shape) for _ in range(20)] + [-0.05 * best]
    assert all(objective(best) > objective(best + s) for s in steps)
    t = np.full(len(pos), np.datetime64(world.now, "ns"))
    s = model.scores(pos, t)
    np.testing.assert_allclose(s[model.scorable], (b + A @ best)[model.scorable], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PEERS)
def test_score_shape_and_never_conventions(name, world, fitted):
    model = fitted[name]
    h, t = world.history("u00")
    s = model.scores(h, t, "u00")
    assert s.shape == (world.n_items,)
    no_photo_no_purchase = _idx(world, ["X000", "X001"])
    assert np.isneginf(s[no_photo_no_purchase]).all()
    assert np.isfinite(np.delete(s, no_photo_no_purchase)).all()  # every item with a photo or a purchase
    assert "X000" not in [r.item for r in model.recommend("u00", k=len(ITEMS))]
    empty = model.scores(np.zeros(0, dtype=np.int64), np.zeros(0, dtype="datetime64[ns]"), "nobody")
    assert empty.shape == (world.n_items,)
    if name == "vbpr":  # its user-independent part beta_i + beta'^T f_i
        assert np.isfinite(np.delete(empty, no_photo_no_purchase)).all()
    else:  # AMR has no user-independent part: nothing to recommend
        assert np.isneginf(empty).all() and model.recommend("nobody") == []


@pytest.mark.parametrize("name", PEERS)
def test_scores_are_cornacs_own_and_its_visual_terms_for_never_bought_items(name, world, fitted):
    """A known customer's scores equal Cornac's `score(u)` on the items Cornac was trained on; a never-bought item
    gets the model's visual terms from Cornac's learned E (and beta'), computed here from Cornac's own attributes."""
    model = fitted[name]
    F, _ = world.image_features.aligned(world.item_ids)
    cm, user_rows, item_cols = train_cornac(model._cornac_model(), world.matrix, F, PARAMS["seed"])
    new = _idx(world, NEW["A"] + NEW["B"])
    for u in (0, 1, 7):
        user = world.user_ids[user_rows[u]]
        h, t = world.history(user)
        ours = model.scores(h, t, user)
        np.testing.assert_allclose(ours[item_cols], cm.score(u), rtol=1e-4, atol=1e-4)
        if name == "vbpr":
            cold = F[new] @ cm.emb_matrix @ cm.theta_user[u] + (F[new] @ cm.beta_prime).ravel()
        else:
            cold = F[new] @ cm.emb_matrix @ cm.gamma_user[u]
        np.testing.assert_allclose(ours[new], cold, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PEERS)
def test_fit_is_deterministic_given_the_seed(name, world, fitted):
    again = create_recommender(name, **PARAMS).fit(world)
    other = create_recommender(name, **{**PARAMS, "seed": 1}).fit(world)
    h, t = world.history("u03")
    a = fitted[name].scores(h, t, "u03")
    assert np.array_equal(again.scores(h, t, "u03"), a)
    assert not np.array_equal(other.scores(h, t, "u03"), a)


@pytest.mark.parametrize("name", PEERS)
def test_new_arrival_is_scored_from_its_photo(name):
    data = _world()
    model = create_recommender(name, **PARAMS).fit(data)
    model.add_items(["A999"], vectors=np.eye(DIM)[0:1] * 3.0)  # looks like cluster A (any length)
    model.add_items(["Z999"])  # no photo: never recommended
    h, t = data.history("u00")  # a cluster-A customer
    s = model.scores(h, t, "u00")
    assert s.shape == (len(ITEMS) + 2,)
    assert s[data.item_index["A999"]] > np.max(s[_idx(data, NEW["B"] + BOUGHT["B"])])
    assert np.isneginf(s[data.item_index["Z999"]])
    recs = model.recommend_from_history(BOUGHT["A"][:3], k=len(data.item_ids))
    assert "A999" in [r.item for r in recs] and "Z999" not in [r.item for r in recs]


@pytest.mark.parametrize("name", PEERS)
def test_save_load_roundtrip_scores_without_cornac(name, world, fitted, tmp_path, monkeypatch):
    model = fitted[name]
    path = model.save(tmp_path / f"{name}.npz")
    import sys

    monkeypatch.setitem(sys.modules, "cornac", None)  # a loaded model scores from its arrays alone
    back = load_recommender(path)
    assert type(back) is type(model)
    for user in ("u00", "u01", "nobody"):
        h, t = world.history(user)
        assert np.array_equal(back.scores(h, t, user), model.scores(h, t, user))
    h = _idx(world, [BOUGHT["B"][0], NEW["B"][0]])
    t = np.full(2, np.datetime64(world.now, "ns"))
    np.testing.assert_allclose(back.scores(h, t), model.scores(h, t), rtol=1e-6)
    with pytest.raises(FashionrecError, match="need Cornac"):
        create_recommender(name).fit(world)


@pytest.mark.parametrize("name", PEERS)
def test_refuses_data_without_image_features(name, world):
    data = RecData(world.events, world.item_ids)
    with pytest.raises(FashionrecError, match="needs image features"):
        create_recommender(name).fit(data)
    with pytest.raises(ValueError, match="positive"):
        create_recommender(name, k=0)
