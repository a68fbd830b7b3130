"""Taste: the metrics (new-item taste AUC, colour pick) on known answers, and the learned taste model on a log whose
taste structure is known (customers who prefer a style and a colour)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashionrec.evaluation.taste import auc_of, pick_baselines, score_task, taste_task, top1_share
from fashionrec.recommend.base import ItemFeatures, RecData


def test_auc_known_answers():
    s = np.array([4.0, 3.0, 2.0, 1.0])
    assert auc_of(s, np.array([0])) == 1.0
    assert auc_of(s, np.array([3])) == 0.0
    assert auc_of(s, np.array([1])) == pytest.approx(2 / 3)
    assert auc_of(np.zeros(5), np.array([2])) == 0.5  # ties count half
    assert auc_of(np.array([-np.inf, -np.inf, 1.0]), np.array([0])) == 0.25  # -inf ties with -inf
    assert np.isnan(auc_of(s, np.array([], dtype=int)))
    assert np.isnan(auc_of(s, np.arange(4)))  # no negative


def test_top1_share_splits_ties():
    assert top1_share(np.array([1.0, 3.0, 2.0]), 1) == 1.0
    assert top1_share(np.array([1.0, 3.0, 2.0]), 2) == 0.0
    assert top1_share(np.array([3.0, 3.0, 2.0]), 0) == 0.5


def _events(rows):
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    df["weight"] = 1.0
    return df


def test_taste_task_builds_the_questions():
    # products 0100000 (3 colours) and 0200000 (2 colours); 0300000001 is a brand-new product in the window
    items = ["0100000001", "0100000002", "0100000003", "0200000001", "0200000002", "0300000001"]
    train = _events(
        [
            ("a", "0100000001", "2020-01-01"),
            ("b", "0200000001", "2020-01-02"),
        ]
    )
    test = _events(
        [
            ("a", "0100000002", "2020-02-01"),  # a new colour of a product a bought: a colour pick, and first sold
            ("a", "0300000001", "2020-02-02"),  # a new product
            ("b", "0200000001", "2020-02-03"),  # a repurchase: neither
            ("c", "0300000001", "2020-02-03"),  # no history: not asked
        ]
    )
    data = RecData(train, items)
    task = taste_task(data, train, test)
    pool_ids = [items[j] for j in task.pool]
    assert pool_ids == ["0100000002", "0300000001"]  # first sold in the window
    assert task.users == ["a"]
    assert sorted(pool_ids[p] for p in task.positives[0]) == ["0100000002", "0300000001"]
    newp = dict(zip([pool_ids[p] for p in task.positives[0]], task.new_product[0]))
    assert newp == {"0100000002": False, "0300000001": True}
    assert len(task.picks) == 1
    u, item, cand = task.picks[0]
    assert u == "a" and items[item] == "0100000002"
    assert sorted(items[j] for j in cand) == ["0100000002", "0100000003"]  # the colour a bought is not a candidate
    chance, popular = pick_baselines(task, np.asarray(data.matrix.sum(0)).ravel())
    assert chance == [0.5] and popular == [0.5]  # neither colour sold before: a tie


class _Fixed:
    """A model whose scores are given: item index -> score, the same for every customer."""

    def __init__(self, s):
        self.s = np.asarray(s, dtype=float)

    def score_items(self, users, items):
        return np.tile(self.s[np.asarray(items)], (len(users), 1))


def test_score_task_reads_the_models_scores():
    items = ["0100000001", "0100000002", "0100000003", "0400000001"]
    train = _events([("a", "0100000001", "2020-01-01")])
    test = _events(
        [("a", "0100000002", "2020-02-01"), ("z", "0100000003", "2020-02-01"), ("z", "0400000001", "2020-02-02")]
    )
    data = RecData(train, items)
    task = taste_task(data, train, test)
    assert [items[j] for j in task.pool] == ["0100000002", "0100000003", "0400000001"]
    good = score_task(_Fixed([0, 9, 1, 0]), task)  # the bought colour scores highest
    bad = score_task(_Fixed([0, 0, 9, 5]), task)
    assert good.auc == [1.0] and bad.auc == [0.0]
    assert good.pick == [1.0] and bad.pick == [0.0]
    assert np.isnan(good.auc_new_product[0]) and good.auc_new_colour == [1.0]


# ---------------------------------------------------------------------------------------------- the taste model
def taste_shop(seed: int = 0):
    """20 products in two styles, each in a red and a blue colour; 4 groups of customers, each buying one style in
    one colour. Image vectors tell the style (and a little colour); colour descriptors tell the colour."""
    rng = np.random.default_rng(seed)
    items, img, col = [], [], []
    for p in range(20):
        style = p // 10
        for c in range(2):
            items.append(f"0{100 + p:03d}000{c + 1:03d}")
            v = np.zeros(8)
            v[style] = 1.0
            v[2 + c] = 0.3
            img.append(v + 0.15 * rng.normal(size=8))
            d = np.zeros(6)
            d[c] = 1.0
            col.append(d + 0.05 * rng.normal(size=6))
    img, col = np.array(img, np.float32), np.array(col, np.float32)
    rows = []
    groups = {}
    for u in range(80):
        style, colour = (u // 2) % 2, u % 2
        groups[f"u{u}"] = (style, colour)
        mine = [j for j in range(40) if (j // 2) // 10 == style and j % 2 == colour]
        # the last product of each style-colour is never bought: a "new arrival" to rank
        mine = mine[:-1]
        for d, j in enumerate(rng.choice(mine, 8, replace=True)):
            rows.append((f"u{u}", items[j], pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(d * 3))))
    ev = _events(rows)
    data = RecData(
        ev,
        items,
        image_features=ItemFeatures(items, img),
        colour_features=ItemFeatures(items, col),
    )
    return data, items, groups


def test_taste_learns_style_and_colour_and_ranks_unsold_items():
    from fashionrec.recommend.taste import Taste

    data, items, groups = taste_shop()
    m = Taste(dim=8, epochs=40, negatives=16, batch_size=128, colour_dims=2, sale_days=1000, lr=0.05, seed=0)
    m.fit(data)
    assert m.train_loss[-1] < m.train_loss[0]
    never = [j for j in range(40) if data.matrix[:, j].nnz == 0]
    assert len(never) == 4  # one per style and colour
    hits, picks = 0, 0
    for u, (style, colour) in groups.items():
        s = m.score_items([u], np.arange(40))[0]
        assert s.shape == (40,) and np.isfinite(s).all()
        target = [j for j in never if (j // 2) // 10 == style and j % 2 == colour][0]
        hits += int(np.argmax(s[never]) == never.index(target))
        sib = target ^ 1  # the same product in the other colour
        picks += int(s[target] > s[sib])
    assert hits / len(groups) >= 0.8  # the unsold item of the customer's style and colour comes first
    assert picks / len(groups) >= 0.9  # the customer's colour, among one product's colours


def test_taste_is_deterministic_and_saves_as_data(tmp_path):
    from fashionrec.recommend import load_recommender
    from fashionrec.recommend.taste import Taste

    data, items, _ = taste_shop()
    a = Taste(dim=4, epochs=3, batch_size=64, colour_dims=2, seed=1).fit(data)
    b = Taste(dim=4, epochs=3, batch_size=64, colour_dims=2, seed=1).fit(data)
    np.testing.assert_array_equal(a.F, b.F)
    path = a.save(tmp_path / "taste.npz")
    c = load_recommender(path)
    np.testing.assert_allclose(c.score_items(["u0", "u5"], np.arange(40)), a.score_items(["u0", "u5"], np.arange(40)))
    # an anonymous history scores like the customer's own
    h, t = data.history("u3")
    np.testing.assert_allclose(a.scores(h, t), a.score_items(["u3"], np.arange(40))[0])


def test_taste_scores_new_arrivals_from_their_photo():
    from fashionrec.recommend.taste import Taste

    data, items, groups = taste_shop()
    m = Taste(dim=8, epochs=30, negatives=16, batch_size=128, colour_dims=2, sale_days=1000, lr=0.05).fit(data)
    style0 = np.zeros(8, np.float32)
    style0[0] = 1.0
    style1 = np.zeros(8, np.float32)
    style1[1] = 1.0
    m.add_items(["new-a", "new-b"], vectors=np.stack([style0, style1]))
    ia, ib = data.item_index["new-a"], data.item_index["new-b"]
    fans = [u for u, (s, _) in groups.items() if s == 0]
    S = m.score_items(fans, np.array([ia, ib]))
    assert (S[:, 0] > S[:, 1]).mean() >= 0.8


# ---------------------------------------------------------------------------------------------- the hybrid with taste
@pytest.fixture(scope="module")
def hybrid():
    from fashionrec.recommend import create_recommender
    from test_batch import _log

    return create_recommender("hybrid").fit(_log())


def test_hybrid_ranks_every_item_candidates_first(hybrid):
    assert hybrid.taste_model is not None
    n = hybrid.data.n_items
    users = list(hybrid.data.user_ids[:20]) + ["never-seen"]
    S = hybrid.score_items(users, np.arange(n))
    has = hybrid.has_vec
    assert np.isfinite(S[:, has]).all()  # every item with a photo is ranked, not only the candidates
    for r, u in enumerate(users):
        lst = hybrid.recommend_block([u], 12)[0]
        top = [hybrid.data.item_index[i] for i in lst]
        rest = np.setdiff1d(np.flatnonzero(has), hybrid._features_block(hybrid.state, [u])[0][0])
        assert S[r, top].min() > S[r, rest].max()  # candidates above every other item
    full = hybrid.recommend_block(users[:3], n)
    photo_ids = {hybrid.data.item_ids[j] for j in np.flatnonzero(has)}
    for r, lst in enumerate(full):
        assert len(lst) == len(set(lst)) == n  # a full ranking of every item, no repeats
        k_photo = int(has.sum())
        assert set(lst[:k_photo]) == photo_ids  # every photo ranked by the model before the items without one
        u = users[r]
        n_cand = len(hybrid._features_block(hybrid.state, [u])[0][0])
        beyond = [S[r, hybrid.data.item_index[i]] for i in lst[n_cand:k_photo]]
        assert beyond == sorted(beyond, reverse=True)  # past the candidates: the taste order of score_items
    assert full[0][:12] == hybrid.recommend_block(users[:1], 12)[0]


def test_hybrid_items_restriction_ranks_only_those(hybrid):
    rng = np.random.default_rng(0)
    items = np.sort(rng.choice(hybrid.data.n_items, 15, replace=False))
    users = list(hybrid.data.user_ids[:10])
    lists = hybrid.recommend_block(users, 50, items=items)
    S = hybrid.score_items(users, items)
    allowed = {hybrid.data.item_ids[j] for j in items}
    for r, lst in enumerate(lists):
        assert set(lst) <= allowed and len(lst) == int(np.isfinite(S[r]).sum())
        got = [S[r, list(items).index(hybrid.data.item_index[i])] for i in lst]
        assert got == sorted(got, reverse=True)  # in the model's order


def test_hybrid_never_sold_pool_is_personalised(hybrid):
    """Customers of the two taste groups get different never-sold candidates, each mostly from their own group."""
    from fashionrec.recommend.hybrid.block import sources_of

    st = hybrid.state
    own = []
    users = [u for u in hybrid.data.user_ids[:60] if len(hybrid._history(st, u)[0]) >= 3]
    _, _, triple = hybrid._features_block(st, users, want_sources=True)
    for u, src in zip(users, sources_of(triple, len(users))):
        new = src.get("new_arrival", np.zeros(0, dtype=int))[:5]
        g = int(u[1:]) % 2
        own += [int(hybrid.data.item_ids[j][1:7]) % 2 == g for j in new]
    assert len(own) > 50 and np.mean(own) > 0.7


def test_recommend_cli_items_file(tmp_path, capsys):
    """`recommend --items FILE`: every customer gets only the listed items, photo-only items (no catalog row, never
    sold) included; unknown ids are refused with a message."""
    from PIL import Image

    from fashionrec.cli import main
    from serving_helpers import make_shop

    root, ids, users = make_shop(tmp_path / "shop")
    fresh = ["0999000001", "0999000002"]
    for j, aid in enumerate(fresh):  # two new arrivals: a photo, no row, no sale
        Image.new("RGB", (64, 96), (200, 20, 30) if j == 0 else (20, 30, 200)).save(root / "images" / f"{aid}.jpg")
    listed = fresh + ids[:3] + ids[20:22]
    (tmp_path / "new.txt").write_text("\n".join(listed) + "\n")
    out = tmp_path / "recs.csv"
    argv = [
        "-q",
        "recommend",
        "--data",
        str(root),
        "--k",
        "100",
        "--out",
        str(out),
        "--items",
        str(tmp_path / "new.txt"),
    ]
    assert main(argv + ["--recommender", "visual"]) == 0
    table = pd.read_csv(out, dtype=str)
    preds = table["prediction"].str.split()
    assert len(table) == len(users) + 1  # everyone in customers.csv
    known = table["customer_id"].isin(users)
    assert preds[known].map(lambda p: set(p) == set(listed)).all()  # k > len(items): every listed item, nothing else
    (tmp_path / "new.csv").write_text("article_id,name\n" + "\n".join(f"{i},x" for i in listed[:4]) + "\n")
    assert main(argv[:-1] + [str(tmp_path / "new.csv"), "--k", "3"]) == 0
    preds = pd.read_csv(out, dtype=str)["prediction"].str.split()
    assert preds.map(lambda p: len(p) == 3 and set(p) <= set(listed[:4])).all()
    (tmp_path / "bad.txt").write_text("0999000001\nnot-an-item\n")
    assert main(argv[:-1] + [str(tmp_path / "bad.txt")]) == 2
    assert "not-an-item" in capsys.readouterr().err
