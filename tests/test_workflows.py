"""The workflows the CLI, the server and the Python API share, on tiny data with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashionrec.errors import FashionrecError
from fashionrec.workflows import classify

SHAPES = ("tall", "wide", "square")


def make_shape_catalog(root: Path, per_class: int = 15, seed: int = 0) -> Path:
    """An H&M-layout folder whose label is the photo's SHAPE, never its colour: each photo is one flat random
    colour, tall (1:3), wide (3:1) or square. Padded to a white square (what training does), tall is a vertical
    bar, wide a horizontal bar, square fills the frame; stretched, all three are the same flat square, so a
    classifier or a predict path that stretches is at chance (1/3)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, shape in enumerate(SHAPES):
        for i in range(per_class):
            aid = f"0{c + 1}{i:08d}"
            long_side, short_side = int(rng.integers(60, 90)), int(rng.integers(18, 26))
            size = {"tall": (short_side, long_side), "wide": (long_side, short_side), "square": (long_side, long_side)}[
                shape
            ]
            colour = tuple(int(v) for v in rng.integers(0, 140, size=3))  # dark enough to stand out on white
            path = root / "images" / aid[:3] / f"{aid}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, colour).save(path)
            rows.append((aid, shape))
    (root / "articles.csv").write_text("article_id,product_group_name\n" + "".join(f"{a},{s}\n" for a, s in rows))
    return root


def shape_photo(path: Path, shape: str, colour=(90, 20, 120)) -> Path:
    size = {"tall": (22, 80), "wide": (80, 22), "square": (70, 70)}[shape]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_held_out_split_is_a_seeded_partition():
    tr, te = classify.held_out_split(23, 7)
    assert len(te) == 23 // 5 and sorted(np.concatenate([tr, te]).tolist()) == list(range(23))
    tr2, te2 = classify.held_out_split(23, np.random.default_rng(7))
    assert te.tolist() == te2.tolist() and tr.tolist() == tr2.tolist()  # a seed or a Generator seeded with it
    assert classify.held_out_split(23, 8)[1].tolist() != te.tolist()  # the seed matters
    # 0.2 * n is not exact in floating point: the held-out count is still n // 5 for every n
    assert all(len(classify.held_out_split(n, 0)[1]) == n // 5 for n in range(200))


def test_held_out_split_with_labels_holds_out_every_class_in_proportion():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    tr, te = classify.held_out_split(100, 0, y=y)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(100))
    assert np.bincount(y[te]).tolist() == [10, 6, 4]  # a fifth of each class
    assert classify.held_out_split(100, 0, y=y)[1].tolist() == te.tolist()  # seeded
    assert classify.held_out_split(100, 1, y=y)[1].tolist() != te.tolist()
    # a class with a single article cannot be split in proportion: the plain random split
    y1 = np.array([0] * 99 + [1])
    assert len(classify.held_out_split(100, 0, y=y1)[1]) == 20


def test_train_and_experiment_hold_out_the_same_articles(tmp_path, monkeypatch):
    """One split, with the run's seed: the label-efficiency experiment tests on exactly train's test images."""
    from fashionrec.evaluation import label_efficiency
    from fashionrec.training.tasks import ClassifierConfig
    from fashionrec.workflows.experiment import label_efficiency as run_experiment

    data = make_shape_catalog(tmp_path / "shapes", per_class=10)
    cfg = ClassifierConfig(input_size=32, seed=3)
    ts = classify.training_set(str(data), cfg=cfg, label_column="product_group_name", progress=False)
    seen = {}
    monkeypatch.setattr(
        label_efficiency,
        "run_label_efficiency",
        lambda x_pool, y_pool, x_te, y_te, classes, **kw: seen.update(x_te=x_te, classes=classes),
    )
    run_experiment(
        str(data),
        cfg=cfg,
        out=tmp_path / "le",
        ks=[1],
        seeds=[0],
        methods=["pixels"],
        label_column="product_group_name",
        progress=False,
    )
    assert len(ts.x_test) == 6 and seen["classes"] == ts.classes
    assert np.array_equal(seen["x_te"], ts.x_test)


def test_shape_classifier_pads_never_stretches(tmp_path):
    """Known answer: the label is the aspect ratio, so only a pad-to-square path gets every held-out photo and a
    new photo right (stretching makes the classes identical)."""
    from fashionrec.features import FeatureCache
    from fashionrec.training.tasks import ClassifierConfig

    data = make_shape_catalog(tmp_path / "shapes")
    cfg = ClassifierConfig(input_size=64, seed=0)
    ts = classify.training_set(str(data), cfg=cfg, label_column="product_group_name", progress=False)
    assert len(ts.y_test) == 9 and len(set(ts.y_test.tolist())) == 3
    m = classify.train_and_evaluate(ts, cfg, tmp_path / "run", cache=FeatureCache(tmp_path / "ws"), progress=False)
    assert m["test_accuracy"] >= 8 / 9 and m["n_test"] == 9  # stretched: chance (1/3)
    for s in SHAPES:
        shape_photo(tmp_path / "new" / f"{s}.png", s)
    skipped = []
    (tmp_path / "new" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    pred = classify.predict_images(tmp_path / "run" / "model.pt", [tmp_path / "new"], top_k=1, on_skip=skipped.append)
    assert pred.header == ("image", "rank", "label", "probability")
    assert {Path(r[0]).stem: r[2] for r in pred.rows} == {s: s for s in SHAPES}
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]


def test_small_argument_checks():
    assert classify.tag_columns(" a, b ,") == ["a", "b"]
    with pytest.raises(FashionrecError, match="twice"):
        classify.tag_columns("a,b,a")
    assert classify.parse_labels_per_class("all") is None and classify.parse_labels_per_class("5") == 5
    with pytest.raises(FashionrecError, match="labels-per-class"):
        classify.parse_labels_per_class("0")
    assert classify.resolve_input_size(40, None, "tiny_cnn") == 40
    from fashionrec.config import DEFAULT_INPUT_SIZE

    assert classify.resolve_input_size(None, None, "tiny_cnn") == DEFAULT_INPUT_SIZE


def _short_list_shop(root: Path) -> Path:
    """6 items with a photo (X Y Z W A B) and 2 with only a catalog row (P Q). On the log's only day: P bought 6
    times, X 5, Y 4, Z 3, Q 2, W 1 (by `c1`), so what sells now is P X Y Z Q W, then the unsold A and B. `visual`
    lists the 6 photos for `c1` and nothing for a customer without history: every row it gives at k=8 is short."""
    ids = {n: f"07000{j:02d}001" for j, n in enumerate("XYZWABPQ")}
    for j, n in enumerate("XYZWAB"):
        shape_photo(root / "images" / f"{ids[n]}.jpg", SHAPES[j % 3], (40 * j, 90, 60))
    (root / "articles.csv").write_text("article_id,prod_name\n" + "".join(f"{i},{n}\n" for n, i in ids.items()))
    rows, c = [], 0
    for n, times in (("P", 6), ("X", 5), ("Y", 4), ("Z", 3), ("Q", 2)):
        for _ in range(times):
            rows.append(f"2020-09-20,b{c},{ids[n]},0.03,2")
            c += 1
    rows.append(f"2020-09-20,c1,{ids['W']},0.03,2")
    (root / "transactions.csv").write_text("t_dat,customer_id,article_id,price,sales_channel_id\n" + "\n".join(rows))
    (root / "customers.csv").write_text("customer_id\nc1\nnobody\n")
    return root


def test_recommend_all_fills_short_rows_from_popularity(tmp_path):
    """Rows the model leaves short are completed from what sells now, in that order, without repeating an item."""
    from fashionrec.workflows.recommend import recommend_all

    root = _short_list_shop(tmp_path / "shop")
    sub = recommend_all(
        root,
        tmp_path / "recs.csv",
        model="visual",
        k=8,
        users=["c1", "nobody"],
        backbone="tiny_cnn",
        input_size=32,
        workspace=tmp_path / "ws",
        progress=False,
    )
    name = dict(pd.read_csv(root / "articles.csv", dtype=str)[["article_id", "prod_name"]].to_numpy())
    rows = pd.read_csv(sub.path, dtype=str).set_index("customer_id")["prediction"].str.split()
    c1, nobody = ([name[i] for i in rows[u]] for u in ("c1", "nobody"))
    assert c1[0] == "W" and sorted(c1[:6]) == sorted("XYZWAB")  # the model's 6: its history's own photo first
    assert c1[6:] == ["P", "Q"]  # then the best sellers not listed yet, in sales order
    assert nobody[:6] == ["P", "X", "Y", "Z", "Q", "W"] and sorted(nobody[6:]) == ["A", "B"]  # all from the fill


def test_shop_open_reads_each_file_once(tmp_path, monkeypatch):
    from fashionrec.workflows.shop import Shop
    from serving_helpers import make_shop

    root, ids, users = make_shop(tmp_path / "shop")
    reads = []
    read_csv = pd.read_csv
    monkeypatch.setattr(
        pd, "read_csv", lambda path, *a, **kw: reads.append(Path(path).name) or read_csv(path, *a, **kw)
    )
    shop = Shop.open(root, with_images=False, workspace=tmp_path / "ws", progress=False)
    assert sorted(reads) == ["articles.csv", "customers.csv", "transactions.csv"]
    assert shop.customers == users + ["newcust"] and shop.customer_table().index.tolist() == users + ["newcust"]
    shop.fingerprint()
    assert len(reads) == 3  # the fingerprint uses the file facts read at open


def test_warm_recommend_loads_the_cached_model_without_embedding(tmp_path, monkeypatch):
    """A second `recommend` with the same files finds the fitted model by the features' key noted by the first:
    no photo is embedded again, no model is fitted, and the file is the same."""
    import fashionrec.workflows.shop as shop_mod
    from fashionrec.workflows.recommend import recommend_all
    from serving_helpers import make_shop

    root, _, _ = make_shop(tmp_path / "shop")
    kw = dict(model="visual", k=5, backbone="tiny_cnn", input_size=32, workspace=tmp_path / "ws", progress=False)
    first = recommend_all(root, tmp_path / "a.csv", **kw)

    def refuse(*a, **k):
        raise AssertionError("embedded or fitted again")

    monkeypatch.setattr(shop_mod, "embed_catalog", refuse)
    monkeypatch.setattr(shop_mod, "rec_data", refuse)
    second = recommend_all(root, tmp_path / "b.csv", **kw)
    assert second.path.read_bytes() == first.path.read_bytes() and second.n_unreadable == first.n_unreadable == 0
    (root / "customers.csv").write_text((root / "customers.csv").read_text() + "another\n")  # other files
    with pytest.raises(AssertionError, match="embedded or fitted again"):
        recommend_all(root, tmp_path / "c.csv", **kw)


def test_the_cached_projection_gives_the_same_bits(tmp_path):
    from fashionrec.workflows.shop import fit_projection

    x = np.random.default_rng(0).normal(size=(600, 96)).astype(np.float32)
    fitted = fit_projection(x, 16, workspace=tmp_path)
    assert len(list((tmp_path / "projection").glob("*.npz"))) == 1
    again = fit_projection(x, 16, workspace=tmp_path)
    assert np.array_equal(fitted.transform(x), again.transform(x))
    assert np.array_equal(fitted.transform(x[:1]), again.transform(x[:1]))
    other = fit_projection(x[:-1], 16, workspace=tmp_path)  # other vectors: another PCA, fitted
    assert len(list((tmp_path / "projection").glob("*.npz"))) == 2 and other.n_samples_ == 599
