"""A synthetic shop in the H&M layout, built offline from Fashion-MNIST garments: the default data of `fashionrec demo`.

`make_shop(out_dir)` writes `images/<article_id>.jpg`, `articles.csv`, `customers.csv`, `transactions.csv` and a
README.txt saying the folder is synthetic. Every product is one Fashion-MNIST garment, enlarged onto a light backdrop
and sold in several palette colours (article_id = 7-digit product code + 3-digit colour code); about a quarter of the
photos have no catalog row (new arrivals, never sold). Each customer prefers 1-2 garment classes and 1-2 colours,
buys mostly those, sometimes buys an item again, and buys items released recently: the taste the recommenders and
the evaluation are meant to find. Deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fashionrec.data.fashion_mnist import CLASSES, load_fashion_mnist
from fashionrec.errors import DataError

#: colour_group_name -> RGB of the dye; all darker than the backdrop so the garment stays visible.
PALETTE = {
    "Black": (35, 35, 38),
    "Red": (190, 35, 45),
    "Dark Blue": (35, 55, 125),
    "Light Blue": (110, 160, 215),
    "Dark Green": (40, 110, 60),
    "Yellow": (225, 185, 40),
    "Pink": (225, 120, 165),
    "Beige": (185, 155, 115),
}
COLOUR_CODES = {name: f"{10 * (i + 1):03d}" for i, name in enumerate(PALETTE)}
BACKDROP = (238, 236, 232)
IMAGE_SIZE = (128, 192)  # width, height: the H&M sample's photo size
#: Fashion-MNIST class -> (product_group_name, garment_group_name)
GROUPS = {
    "T-shirt/top": ("Garment Upper body", "Jersey Basic"),
    "Trouser": ("Garment Lower body", "Trousers"),
    "Pullover": ("Garment Upper body", "Knitwear"),
    "Dress": ("Garment Full body", "Dresses Ladies"),
    "Coat": ("Garment Upper body", "Outdoor"),
    "Sandal": ("Shoes", "Shoes"),
    "Shirt": ("Garment Upper body", "Blouses"),
    "Sneaker": ("Shoes", "Shoes"),
    "Bag": ("Accessories", "Accessories"),
    "Ankle boot": ("Shoes", "Shoes"),
}
INDEX_GROUPS = ["Ladieswear", "Menswear", "Divided"]
STYLES = ["Luna", "Nova", "Ivy", "Milo", "Ada", "Otis", "Wren", "Juno", "Remy", "Cleo", "Finn", "Nell"]
ARTICLE_COLUMNS = [
    "article_id",
    "product_code",
    "prod_name",
    "product_type_name",
    "product_group_name",
    "colour_group_name",
    "index_group_name",
    "garment_group_name",
]
START = pd.Timestamp("2020-03-02")
DAYS = 182  # about six months of transactions
README = """SYNTHETIC SHOP - not real data.

Written by fashionrec.data.synthetic.make_shop(n_items={n_items}, n_customers={n_customers}, seed={seed}) for
`fashionrec demo`. The photos are Fashion-MNIST garments (Zalando, MIT licence) enlarged to 128x192 on a light
backdrop and dyed with palette colours; names, customers and purchases are generated. Layout: the H&M Kaggle one
(images/<article_id>.jpg, articles.csv, customers.csv, transactions.csv). {n_new} of the {n_items} photos have no
row in articles.csv (new arrivals, never sold). Each customer prefers 1-2 garment classes and 1-2 colours.
"""


@dataclass
class SyntheticShop:
    """What `make_shop` wrote, plus the answers the files do not state (for checks and the demo's report)."""

    path: Path
    articles: pd.DataFrame  # every article, with or without a catalog row: ARTICLE_COLUMNS + has_row, release
    customers: pd.DataFrame  # customer_id, age, classes, colours (the preferences purchases are drawn from)
    transactions: pd.DataFrame

    @property
    def new_arrivals(self) -> pd.DataFrame:
        """The articles whose photo has no catalog row, with their true attributes."""
        return self.articles[~self.articles["has_row"]]


def _render(garment: np.ndarray, dye: tuple[int, int, int], shade: float) -> Image.Image:
    """A 28x28 light-on-black garment as a 128x192 photo: enlarged, dyed, on the light backdrop."""
    w, h = IMAGE_SIZE
    side = w - 12
    m = np.asarray(Image.fromarray(garment).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    alpha = np.clip(m * 1.6, 0.0, 1.0)[..., None]
    texture = (0.7 + 0.3 * m)[..., None] * shade  # keeps the garment's folds and prints visible
    dyed = np.asarray(dye, np.float32) * texture
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = BACKDROP
    top, left = (h - side) // 2, (w - side) // 2
    canvas[top : top + side, left : left + side] = canvas[top : top + side, left : left + side] * (1 - alpha) + (
        dyed * alpha
    )
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def _customer_id(seed: int, i: int) -> str:
    return hashlib.sha256(f"fashionrec-synthetic-{seed}-{i}".encode()).hexdigest()


def _products(rng: np.random.Generator, fm, n_items: int, images: Path) -> pd.DataFrame:
    """Products of 2-4 palette colours each until there are `n_items` articles; writes each article's photo."""
    colours = list(PALETTE)
    rows, n_products = [], 0
    while len(rows) < n_items:
        cls = int(rng.integers(len(CLASSES)))
        pool = np.flatnonzero(fm.y_train == cls)
        garment = fm.x_train[int(rng.choice(pool))]
        code = f"{108000 + 7 * n_products + int(rng.integers(7)):07d}"
        n_products += 1
        name = CLASSES[cls]
        group, garment_group = GROUPS[name]
        index_group = "Ladieswear" if name == "Dress" else INDEX_GROUPS[int(rng.integers(len(INDEX_GROUPS)))]
        prod_name = f"{STYLES[int(rng.integers(len(STYLES)))]} {name.split('/')[0].lower()}"
        release = int(rng.integers(-60, DAYS - 10))  # day the product is released (before the log: back catalogue)
        price = round(float(rng.uniform(0.008, 0.06)), 6)
        popularity = float(rng.lognormal(0.0, 0.6))
        for c in rng.choice(len(colours), size=min(int(rng.integers(2, 5)), n_items - len(rows)), replace=False):
            colour = colours[int(c)]
            aid = code + COLOUR_CODES[colour]
            _render(garment, PALETTE[colour], float(rng.uniform(0.9, 1.1))).save(images / f"{aid}.jpg", quality=90)
            rows.append(
                {
                    "article_id": aid,
                    "product_code": code,
                    "prod_name": prod_name,
                    "product_type_name": name,
                    "product_group_name": group,
                    "colour_group_name": colour,
                    "index_group_name": index_group,
                    "garment_group_name": garment_group,
                    "release": release,
                    "price": price,
                    "popularity": popularity,
                }
            )
    return pd.DataFrame(rows)


def _customers(rng: np.random.Generator, seed: int, n_customers: int) -> tuple[pd.DataFrame, list, list]:
    """Customers with an age and their taste, 1-2 garment classes and 1-2 colours: (table with the names, class
    indices, colour indices)."""
    colours = list(PALETTE)
    ids = [_customer_id(seed, i) for i in range(n_customers)]
    ages = rng.integers(18, 71, size=n_customers)
    prefs_cls = [sorted(rng.choice(len(CLASSES), size=int(rng.integers(1, 3)), replace=False).tolist()) for _ in ids]
    prefs_col = [sorted(rng.choice(len(colours), size=int(rng.integers(1, 3)), replace=False).tolist()) for _ in ids]
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "age": ages,
            "classes": [[CLASSES[c] for c in p] for p in prefs_cls],
            "colours": [[colours[c] for c in p] for p in prefs_col],
        }
    )
    return customers, prefs_cls, prefs_col


def _purchases(rng: np.random.Generator, sold: pd.DataFrame, ids: list[str], prefs_cls, prefs_col) -> pd.DataFrame:
    """About 8 purchases per customer over `DAYS`: taste, repurchases, and newer items over time."""
    colours = list(PALETTE)
    cls_idx = sold["product_type_name"].map(CLASSES.index).to_numpy()
    col_idx = sold["colour_group_name"].map(colours.index).to_numpy()
    release = sold["release"].to_numpy()
    base = sold["popularity"].to_numpy()
    tx = []
    for u, uid in enumerate(ids):
        channel = int(rng.choice([1, 2], p=[0.3, 0.7]))
        days = np.sort(rng.integers(0, DAYS, size=1 + int(rng.poisson(7))))
        history: list[int] = []
        for day in days:
            if history and rng.random() < 0.15:  # buys an item again
                j = history[int(rng.integers(len(history)))]
            else:
                ok = release <= day
                like_cls = np.isin(cls_idx, prefs_cls[u]) if rng.random() < 0.85 else np.ones(len(sold), bool)
                like_col = np.isin(col_idx, prefs_col[u]) if rng.random() < 0.75 else np.ones(len(sold), bool)
                cand = ok & like_cls & like_col
                if not cand.any():
                    cand = ok & like_cls
                if not cand.any():
                    cand = ok
                age = np.maximum(day - release, 0)
                w = np.where(cand, base * (np.exp(-age / 30.0) + 0.05), 0.0)
                j = int(rng.choice(len(sold), p=w / w.sum()))
            history.append(j)
            tx.append(
                (
                    (START + pd.Timedelta(days=int(day))).strftime("%Y-%m-%d"),
                    uid,
                    sold.at[j, "article_id"],
                    sold.at[j, "price"],
                    channel,
                )
            )
    transactions = pd.DataFrame(tx, columns=["t_dat", "customer_id", "article_id", "price", "sales_channel_id"])
    return transactions.sort_values(["t_dat", "customer_id"], kind="stable").reset_index(drop=True)


def make_shop(
    out_dir: str | Path,
    *,
    n_items: int = 600,
    n_customers: int = 300,
    seed: int = 0,
    fmnist_dir: str | Path | None = None,
    new_fraction: float = 0.25,
) -> SyntheticShop:
    """Write a synthetic H&M-layout shop into `out_dir` (replacing the files it writes; other files are left).

    About `n_items` articles (products of 2-4 colours each), `n_customers` customers, about 8 purchases each over
    six months. The same seed writes the same files. Needs Fashion-MNIST (`fmnist_dir`, default Debian's
    /usr/share/datasets/fashion-mnist)."""
    if n_items < 20 or n_customers < 2:
        raise ValueError("make_shop needs n_items >= 20 and n_customers >= 2")
    rng = np.random.default_rng(seed)
    fm = load_fashion_mnist(fmnist_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", path=out)
    images = out / "images"
    if images.is_dir():
        shutil.rmtree(images)  # a previous shop's photos (another seed or size) must not stay behind
    images.mkdir(parents=True)

    art = _products(rng, fm, n_items, images)
    n_new = int(round(new_fraction * len(art)))
    new = np.zeros(len(art), bool)
    new[rng.choice(len(art), size=n_new, replace=False)] = True
    art["has_row"] = ~new
    art[art["has_row"]][ARTICLE_COLUMNS].to_csv(out / "articles.csv", index=False)

    customers, prefs_cls, prefs_col = _customers(rng, seed, n_customers)
    customers[["customer_id", "age"]].to_csv(out / "customers.csv", index=False)
    sold = art[art["has_row"]].reset_index(drop=True)
    transactions = _purchases(rng, sold, customers["customer_id"].tolist(), prefs_cls, prefs_col)
    transactions.to_csv(out / "transactions.csv", index=False)
    (out / "README.txt").write_text(README.format(n_items=len(art), n_customers=n_customers, seed=seed, n_new=n_new))
    return SyntheticShop(out, art.drop(columns=["popularity"]), customers, transactions)
