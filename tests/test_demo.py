"""`fashionrec demo`: the synthetic shop generator and the shop demo end to end."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from fashionrec.data.fashion_mnist import CLASSES
from fashionrec.data.synthetic import ARTICLE_COLUMNS, make_shop


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def shop(tmp_path, fmnist_dir):
    return make_shop(tmp_path / "shop", n_items=200, n_customers=100, seed=1, fmnist_dir=fmnist_dir)


def test_same_seed_same_files_other_seed_other_files(tmp_path, fmnist_dir, shop):
    again = make_shop(tmp_path / "again", n_items=200, n_customers=100, seed=1, fmnist_dir=fmnist_dir)
    other = make_shop(tmp_path / "other", n_items=200, n_customers=100, seed=2, fmnist_dir=fmnist_dir)
    assert _digest(shop.path) == _digest(again.path)
    assert _digest(shop.path) != _digest(other.path)


def test_layout_columns_and_ids(shop):
    d = shop.path
    assert "synthetic" in (d / "README.txt").read_text().lower()
    arts = pd.read_csv(d / "articles.csv", dtype=str)
    assert list(arts.columns) == ARTICLE_COLUMNS
    assert list(pd.read_csv(d / "customers.csv", nrows=1).columns) == ["customer_id", "age"]
    tx = pd.read_csv(d / "transactions.csv", dtype=str)
    assert list(tx.columns) == ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
    photos = {p.stem for p in (d / "images").glob("*.jpg")}
    assert len(photos) == 200
    assert all(len(i) == 10 and i.isdigit() for i in photos)
    assert (arts["article_id"].str[:7] == arts["product_code"]).all()
    assert arts["article_id"].str.startswith("0").all()  # leading zeros kept as strings
    assert set(arts["product_type_name"]) <= set(CLASSES)
    assert arts.groupby("product_code").size().max() > 1  # several colours of one product
    # about a quarter of the photos have no row (new arrivals) and are never sold
    assert 0.2 <= 1 - len(arts) / len(photos) <= 0.3
    assert set(arts["article_id"]) <= photos and set(tx["article_id"]) <= set(arts["article_id"])
    days = pd.to_datetime(tx["t_dat"])
    assert 150 <= (days.max() - days.min()).days <= 190  # about six months


def test_purchases_follow_the_customers_taste(shop):
    """Known answer: customers buy their preferred classes and colours far more often than the catalog's mix."""
    arts = shop.articles[shop.articles["has_row"]].set_index("article_id")
    prefs = shop.customers.set_index("customer_id")
    tx = shop.transactions
    kinds = arts.loc[tx["article_id"], "product_type_name"].to_numpy()
    colours = arts.loc[tx["article_id"], "colour_group_name"].to_numpy()
    liked_kind = np.mean([k in prefs.at[u, "classes"] for u, k in zip(tx["customer_id"], kinds)])
    liked_colour = np.mean([c in prefs.at[u, "colours"] for u, c in zip(tx["customer_id"], colours)])
    share = arts["product_type_name"].value_counts(normalize=True)
    chance_kind = np.mean([share.reindex(p).fillna(0).sum() for p in prefs.loc[tx["customer_id"], "classes"]])
    assert liked_kind > 0.75 and liked_kind > 3 * chance_kind
    assert liked_colour > 0.6
    # repurchases happen, and later purchases are of newer items on average
    assert tx.duplicated(["customer_id", "article_id"]).mean() > 0.03
    rel = arts.loc[tx["article_id"], "release"].to_numpy()
    early = pd.to_datetime(tx["t_dat"]) < pd.to_datetime(tx["t_dat"]).median()
    assert rel[~early.to_numpy()].mean() > rel[early.to_numpy()].mean() + 30


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, fmnist_dir, capsys):
    from fashionrec.cli.main import main

    out = tmp_path / "demo"
    args = ["-q", "demo", "--out", str(out), "--items", "120", "--customers", "60", "--windows", "1"]
    assert main(args) == 0
    for f in [
        "report.md",
        "customer.png",
        "similar.png",
        "tags.csv",
        "evaluation/comparison.md",
        "evaluation/comparison.png",
        "evaluation/taste.png",
        "shop/README.txt",
    ]:
        assert (out / f).exists(), f
    report = (out / "report.md").read_text()
    assert "synthetic shop" in report.lower() and "MAP@12" in report
    recs = pd.read_csv(out / "recommendations.csv", dtype=str)
    customers = pd.read_csv(out / "shop" / "customers.csv", dtype=str)
    assert len(recs) == len(customers) and set(recs["customer_id"]) == set(customers["customer_id"])
    assert recs["prediction"].str.split().map(len).eq(12).all()
    tags = pd.read_csv(out / "tags.csv", dtype=str)
    assert len(tags) == 30  # the quarter of 120 photos without a catalog row


def test_demo_serve_builds_the_shop_once_and_serves_it(tmp_path, fmnist_dir, monkeypatch):
    import fashionrec.workflows.serve as serve
    from fashionrec.cli.main import main

    served = []
    monkeypatch.setattr(serve, "serve_shop", lambda data, **kw: served.append((data, kw)))
    out = tmp_path / "demo"
    assert (
        main(["-q", "demo", "--serve", "--out", str(out), "--items", "40", "--customers", "10", "--port", "8123"]) == 0
    )
    assert served[0][0] == out / "shop" and served[0][1]["port"] == 8123
    assert (out / "shop" / "README.txt").exists() and (out / "shop" / "articles.csv").exists()
    stamp = (out / "shop" / "transactions.csv").stat().st_mtime_ns
    assert main(["-q", "demo", "--serve", "--out", str(out)]) == 0  # already built: kept
    assert (out / "shop" / "transactions.csv").stat().st_mtime_ns == stamp and len(served) == 2


def test_demo_never_writes_into_a_folder_that_is_not_its_shop(tmp_path, capsys):
    from fashionrec.cli.main import main

    shop = tmp_path / "demo" / "shop"
    shop.mkdir(parents=True)
    (shop / "articles.csv").write_text("article_id\n0100000001\n")
    assert main(["-q", "demo", "--serve", "--out", str(tmp_path / "demo")]) == 2
    assert "not a synthetic shop" in capsys.readouterr().err
    assert (shop / "articles.csv").read_text() == "article_id\n0100000001\n"
