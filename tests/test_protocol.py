"""The leak-free, multi-window evaluation protocol: known answers, and proof that "has a catalog row" tells nothing."""

import zlib

import numpy as np
import pandas as pd
import pytest

from fashionrec.data.catalog import Catalog
from fashionrec.data.interactions import Interactions
from fashionrec.evaluation.protocol import evaluate_windows, format_windows_table, temporal_split, window_splits
from fashionrec.recommend.base import ItemFeatures, RecData, Recommender
from fashionrec.workflows.shop import Shop, rec_data


class FixedList(Recommender):
    """Recommends the same list to everyone (known answers)."""

    name = "fixed"

    def __init__(self, items):
        super().__init__()
        self.items = items

    def fit(self, data):
        self.data = data
        return self

    def scores(self, hist_idx, hist_ts, user=None):
        s = np.full(self.data.n_items, -np.inf)
        for r, i in enumerate(self.items):
            s[self.data.item_index[i]] = len(self.items) - r
        return s


def _log(rows):
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"]).assign(
        timestamp=lambda d: pd.to_datetime(d["timestamp"]), weight=1.0
    )


def test_windows_are_consecutive_and_train_on_the_past():
    ev = _log([("u", "a", f"2020-01-{d:02d}") for d in range(1, 29)])
    splits = window_splits(ev, n_windows=3, test_days=7)
    assert [str(s.split_date.date()) for s in splits] == ["2020-01-22", "2020-01-15", "2020-01-08"]
    for s in splits:
        assert s.train["timestamp"].max() < s.split_date <= s.test["timestamp"].min()
        assert s.test["timestamp"].max() < s.split_date + pd.Timedelta(days=7)


def test_known_answer_map_and_paired_difference():
    # Two 7-day windows ending 2020-01-14. Window 2 (Jan 8-14): x buys b; y buys c, d.
    # Window 1 (Jan 1-7): x buys a. Training logs: everything before each window (one early purchase).
    ev = _log(
        [
            ("z", "a", "2019-12-20"),
            ("x", "a", "2020-01-02"),
            ("x", "b", "2020-01-09"),
            ("y", "c", "2020-01-10"),
            ("y", "d", "2020-01-11"),
        ]
    )
    items = ["a", "b", "c", "d", "e"]
    fac = {"ab": lambda: FixedList(["a", "b"]), "cd": lambda: FixedList(["e", "c"])}
    df, det = evaluate_windows(
        lambda e: RecData(e, items), fac, ev, n_windows=2, test_days=7, k=12, baseline="ab", progress=False
    )
    # pairs: (x, w2) (y, w2) (x, w1). "ab": AP = 1/2 (b at rank 2), 0, 1 -> mean 0.5
    # "cd": 0, (c at rank 2: 1/2) / min(2, 12) = 0.25, 0 -> mean 1/12
    assert df.loc["ab", "map@12"] == pytest.approx(0.5)
    assert df.loc["cd", "map@12"] == pytest.approx(0.25 / 3)
    assert df.loc["cd", "diff_vs_ab"] == pytest.approx(0.25 / 3 - 0.5)
    lo, hi = df.loc["cd", "diff_ci"]
    assert lo <= df.loc["cd", "diff_vs_ab"] <= hi
    assert df.loc["ab", "window_map"] == pytest.approx([0.25, 1.0])  # newest window first
    # b and c, d were never bought before their window: cold. "ab" hits b (cold) in w2 and a (warm) in w1.
    assert df.loc["ab", "recall_cold"] == pytest.approx(1 / 3)
    assert df.loc["ab", "recall_warm"] == pytest.approx(1.0)
    assert df.attrs["pairs"] == 3 and df.attrs["purchases"] == 4
    assert "| ab |" in format_windows_table(df)


# A hand-built log whose every number below is computed by hand. H&M-style ids: 7-digit product + 3-digit colour.
A, A2, B, C, E = "1000000001", "1000000002", "2000000001", "3000000001", "4000000001"  # A2: A's product, other colour
HAND_LOG = [
    ("z", A, "2019-12-20 00:00"),  # before both windows
    ("x", A, "2020-01-02 00:00"),  # window 1 (Jan 1-7)
    ("x", B, "2020-01-08 00:00"),  # window 2 (Jan 8-14), at its first minute
    ("y", A2, "2020-01-10 00:00"),  # window 2: never bought before (cold), but a known product
    ("n", E, "2020-01-12 18:00"),  # window 2: a new customer (no history), new product
    ("y", C, "2020-01-14 23:59"),
]  # window 2, its last minute; the last event of the log


def test_temporal_split_known_answer():
    ev = _log(HAND_LOG)
    s = temporal_split(ev, test_days=7)  # default: the last 7 days, from midnight: Jan 8 - Jan 14
    assert s.split_date == pd.Timestamp("2020-01-08")
    assert sorted(s.train["item"]) == [A, A] and sorted(s.test["user"]) == ["n", "x", "y", "y"]
    assert s.truth == {"x": {B}, "y": {A2, C}, "n": {E}}
    s = temporal_split(ev, "2020-01-02", test_days=6)  # [Jan 2, Jan 8): the Jan 8 purchase is outside
    assert s.truth == {"x": {A}} and list(s.train["user"]) == ["z"]
    with pytest.raises(ValueError, match="empty train"):
        temporal_split(ev, "2019-12-01")
    ws = window_splits(ev, n_windows=1, test_days=7, last="2020-01-07")  # windows end with the day `last`
    assert [str(w.split_date.date()) for w in ws] == ["2020-01-01"] and ws[0].truth == {"x": {A}}
    with pytest.raises(ValueError, match="split at 2019-12-25 leaves an empty train"):
        window_splits(ev, n_windows=2, test_days=7, last="2020-01-07")  # [Dec 25, Jan 1) holds no purchase


def test_evaluate_windows_known_answer_by_hand():
    """k=2, two 7-day windows: w2 = Jan 8-14 (pairs n, x, y), w1 = Jan 1-7 (pair x). 'ab' recommends [A, B] to
    everyone, 'ec' [E, C, A2] (A2 is cut by k=2).
        pair     truth     ab: AP  recall hit    ec: AP  recall hit
        n  w2    {E}           0    0     0          1     1      1
        x  w2    {B}          1/2   1     1          0     0      0
        y  w2    {A2, C}       0    0     0         1/4   1/2     1   (C at rank 2: (1/2) / min(2, k))
        x  w1    {A}           1    1     1          0     0      0
    Cold (never bought before the window): E, B, A2, C (4 of 5 purchases); warm: A in w1. New products (no colour
    sold before): E, B, C (A2 is a colour of A, sold on Dec 20)."""
    ev = _log(HAND_LOG)
    items = [A, A2, B, C, E]
    fac = {"ab": lambda: FixedList([A, B]), "ec": lambda: FixedList([E, C, A2])}
    df, det = evaluate_windows(
        lambda e: RecData(e, items), fac, ev, n_windows=2, test_days=7, k=2, baseline="ab", n_boot=200, progress=False
    )
    assert det["ap"] == {"ab": [0, 0.5, 0, 1], "ec": [1, 0, 0.25, 0]}  # pairs in order: w2 (n, x, y), then w1 (x)
    ab, ec = df.loc["ab"], df.loc["ec"]
    assert ab["map@2"] == pytest.approx(1.5 / 4) and ec["map@2"] == pytest.approx(1.25 / 4)
    assert ab["recall@2"] == pytest.approx(2 / 4) and ec["recall@2"] == pytest.approx(1.5 / 4)
    assert ab["hitrate@2"] == pytest.approx(2 / 4) and ec["hitrate@2"] == pytest.approx(2 / 4)
    assert ab["window_map"] == pytest.approx([0.5 / 3, 1.0]) and ec["window_map"] == pytest.approx([1.25 / 3, 0.0])
    assert ab["recall_cold"] == pytest.approx(1 / 4) and ec["recall_cold"] == pytest.approx(2 / 4)
    assert ab["recall_warm"] == pytest.approx(1.0) and ec["recall_warm"] == pytest.approx(0.0)
    assert ab["recall_new_product"] == pytest.approx(1 / 3) and ec["recall_new_product"] == pytest.approx(2 / 3)
    assert ab["coverage_items"] == 2 and ec["coverage_items"] == 2
    assert ec["diff_vs_ab"] == pytest.approx((1 - 0.5 + 0.25 - 1) / 4)
    assert ec["ratio_vs_baseline"] == pytest.approx(1.25 / 1.5)
    assert ab["diff_vs_ab"] == 0 and ab["diff_ci"] == (0, 0)
    assert df.attrs["pairs"] == 4 and df.attrs["purchases"] == 5
    assert df.attrs["cold_share"] == pytest.approx(4 / 5) and df.attrs["newprod_share"] == pytest.approx(3 / 5)
    # taste questions: w2's pool is what was first sold in it (E, B, A2, C); only x has a history and buys from it
    # (B, a new product: no colour pick); in w1 nothing was first sold (A sold on Dec 20)
    assert det["windows"] == [
        {
            "split": "2020-01-08",
            "customers": 3,
            "purchases": 4,
            "cold_share": 1.0,
            "taste_pool": 4,
            "taste_customers": 1,
            "colour_picks": 0,
        },
        {
            "split": "2020-01-01",
            "customers": 1,
            "purchases": 1,
            "cold_share": 0.0,
            "taste_pool": 0,
            "taste_customers": 0,
            "colour_picks": 0,
        },
    ]
    # 'ab' ranks B (x's purchase) first among the pool: AUC 1; 'ec' ranks E, C, A2 above B: AUC 0
    assert ab["taste_auc"] == 1.0 and ec["taste_auc"] == 0.0 and ec["taste_auc_diff"] == -1.0


class CheatOnMissingRow(Recommender):
    """Scores never-bought items that have no catalog row highest: in the H&M sample, that is the future."""

    name = "cheat"

    def fit(self, data):
        self.data = data
        return self

    def scores(self, hist_idx, hist_ts, user=None):
        rows = set(self.data.metadata.index) if not self.data.metadata.empty else set()
        bought = self.data.bought_before()
        no_row = np.array([i not in rows for i in self.data.item_ids])
        seed = zlib.crc32(str(user).encode())  # a different random order for each customer, reproducible
        noise = np.random.default_rng(seed).random(self.data.n_items) * 0.5
        return (no_row & ~bought).astype(float) + noise


def _trap_shop(tmp_path):
    """The sample's trap, in miniature: rows for 200 never-bought catalog items and the items bought before the
    split; the 20 items bought later (in the test window) have photos but no row."""
    rng = np.random.default_rng(1)
    old = [f"{1000000 + j:07d}001" for j in range(30)]
    catalog_only = [f"{2000000 + j:07d}001" for j in range(200)]
    later = [f"{3000000 + j:07d}001" for j in range(20)]
    items = old + catalog_only + later
    rows = []
    for u in range(80):
        for _ in range(3):
            rows.append(
                (
                    f"c{u}",
                    old[rng.integers(30)],
                    pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 50))),
                )
            )
        rows.append(
            (f"c{u}", later[rng.integers(20)], pd.Timestamp("2020-02-25") + pd.Timedelta(days=int(rng.integers(0, 7))))
        )
    ev = pd.DataFrame(rows, columns=["user", "item", "timestamp"]).assign(weight=1.0)
    meta = pd.DataFrame(
        {"product_group_name": rng.choice(["Top", "Shoe"], len(old) + len(catalog_only))},
        index=pd.Index(old + catalog_only, name="article_id"),
    )
    vecs = rng.normal(size=(len(items), 8)).astype(np.float32)
    cat = Catalog(item_ids=items, image_paths={i: tmp_path / f"{i}.jpg" for i in items}, metadata=meta)
    return Shop(tmp_path, cat, Interactions(ev), [f"c{u}" for u in range(80)], ItemFeatures(items, vecs), {})


def test_has_a_row_predicts_nothing_in_the_leak_free_view(tmp_path):
    shop = _trap_shop(tmp_path)
    ev = shop.interactions.events
    fac = {"cheat": CheatOnMissingRow}
    leaky = lambda e: RecData(e, shop.candidates, image_features=shop.image_features, metadata=shop.catalog.metadata)
    df_leak, _ = evaluate_windows(leaky, fac, ev, n_windows=1, test_days=7, baseline=None, progress=False)
    df_safe, _ = evaluate_windows(
        lambda e: rec_data(shop, e), fac, ev, n_windows=1, test_days=7, baseline=None, progress=False
    )
    # With every row handed over, the cheat finds the future (12 slots, 20 row-less items)...
    assert df_leak.loc["cheat", "recall_cold"] > 0.5
    # ...in the leak-free view all 220 never-bought items look alike: chance is 12 / 220 = 0.055.
    assert df_safe.loc["cheat", "recall_cold"] < 0.15
    # and the models still get a description of every item (predicted from its photo), not a blank
    desc = rec_data(shop, ev[ev["timestamp"] < pd.Timestamp("2020-02-25")]).describe()
    assert (desc["product_group_name"] != "?").all()


@pytest.mark.slow
def test_items_without_a_row_are_tagged_from_their_photo(tmp_path):
    """Red tops and blue shoes with rows; one new red top and one new blue shoe without: the photo-predicted tags
    describe them, with confidences, and items with rows are predicted out-of-fold (cross-fitted)."""
    from PIL import Image, ImageDraw

    from fashionrec.recommend.attributes import tag_accuracy
    from fashionrec.workflows.shop import load_shop
    from serving_helpers import make_shop

    root = tmp_path / "shop"
    make_shop(root)
    for aid, red in (("0900000001", True), ("0900001001", False)):
        img = Image.new("RGB", (64, 96), (245, 245, 245))
        d = ImageDraw.Draw(img)
        if red:
            d.rectangle([12, 10, 52, 60], fill=(220, 20, 30))
        else:
            d.ellipse([8, 50, 56, 80], fill=(20, 30, 220))
        img.save(root / "images" / f"{aid}.jpg", quality=90)
    shop = load_shop(root, workspace=tmp_path / "ws", progress=False)
    pred = shop.predicted_attributes()
    assert pred.loc["0900000001", "product_group_name"] == "Garment Upper body"
    assert pred.loc["0900001001", "product_group_name"] == "Shoes"
    assert pred.loc["0900001001", "colour_group_name"] == "Blue"
    assert 0.5 < pred.loc["0900000001", "product_group_name_confidence"] <= 1.0
    assert tag_accuracy(pred, shop.catalog.metadata)["product_group_name"] >= 0.9


def test_model_cache_key_follows_resolved_settings(tmp_path, monkeypatch):
    """A cached model is reused only when every resolved setting matches (a changed default refits)."""
    from fashionrec.recommend.baselines import Popularity
    from fashionrec.workflows.shop import fit_recommender

    shop = _trap_shop(tmp_path)
    shop.fingerprint = lambda: "fp"
    ws = tmp_path / "ws"
    fit_recommender(shop, "popularity", cache_dir=ws)
    fit_recommender(shop, "popularity", cache_dir=ws)

    def cached():  # whatever the cache's file suffix (.pkl before artifacts were data, .npz after)
        return [p for p in (ws / "models").iterdir() if not p.name.startswith(".")]

    assert len(cached()) == 1  # same settings: one cached model, reused
    monkeypatch.setattr(Popularity.__init__, "__defaults__", (14.0, 28.0))  # a new default half-life
    fit_recommender(shop, "popularity", cache_dir=ws)
    assert len(cached()) == 2
    shop.image_features.vectors = shop.image_features.vectors[:, ::-1].copy()  # other weights: other image vectors
    fit_recommender(shop, "popularity", cache_dir=ws)
    assert len(cached()) == 3  # same files and settings, new features: refitted, not served stale


def test_describe_takes_product_columns_from_visible_colours_of_the_product():
    """Known answer: 12 products, colours 001 and 002 bought (rows visible), colour 003 not bought yet. Type describes
    the product (all visible colours agree), colour does not: colour 003 gets the product's type from its bought
    colours, never from its own hidden row, and its colour from the photo's predicted tag."""
    from fashionrec.recommend.attributes import describe_items

    ids = [f"{1000000 + p:07d}{c:03d}" for p in range(12) for c in (1, 2, 3)]
    meta = pd.DataFrame(
        {
            "product_type_name": [f"type{p % 5}" for p in range(12) for _ in range(3)],
            "colour_group_name": [["Red", "Blue", "Green"][c] for _ in range(12) for c in range(3)],
        },
        index=ids,
    )
    meta.loc["1000000003", "product_type_name"] = "hidden"  # the row of a not-yet-bought colour: must not show
    predicted = pd.DataFrame({"product_type_name": "guess", "colour_group_name": "Grey"}, index=ids)
    visible = np.array([not i.endswith("003") for i in ids])
    cols = ["product_type_name", "colour_group_name"]
    d = describe_items(ids, meta, predicted, visible, cols)
    new = [i for i in ids if i.endswith("003")]
    assert list(d.loc[new, "product_type_name"]) == [f"type{p % 5}" for p in range(12)]
    assert (d.loc[new, "colour_group_name"] == "Grey").all()  # colour is not a product's: the photo's tag
    assert (d.loc[~d.index.str.endswith("003"), "product_type_name"] == meta["product_type_name"][visible]).all()
    off = describe_items(ids, meta, predicted, visible, cols, by_product=False)
    assert (off.loc[new, "product_type_name"] == "guess").all()
    # no visible colour of a product: nothing to take, the predicted tag stays
    d2 = describe_items(ids, meta, predicted, visible & ~pd.Index(ids).str.startswith("1000000"), cols)
    assert d2.loc["1000000003", "product_type_name"] == "guess"
