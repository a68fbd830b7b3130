"""`fashionrec demo`'s recipe: build the synthetic shop, then tag, "more like this", recommend and evaluate on it
through the public workflows, and write a report folder. No argparse; results are returned, progress is printed
only through `say`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fashionrec.config import DEFAULT_BACKBONE, DEFAULT_MODEL
from fashionrec.errors import FashionrecError

SHOP_DIR = "shop"  # the synthetic shop's folder inside the report folder
DEMO_MODELS = ("popularity", "repurchase", "visual", "taste", "hybrid")
DEMO_INPUT_SIZE = 64
DEMO_TAG_COLUMNS = ("product_type_name", "colour_group_name")


@dataclass
class ShopDemo:
    out: Path
    shop: Path
    n_items: int
    n_customers: int
    n_transactions: int
    tag_accuracy: dict = field(default_factory=dict)  # column -> accuracy on the row-less photos (known answers)
    n_tagged: int = 0
    from_siblings: dict = field(default_factory=dict)  # column -> photos tagged from their product's labelled photos
    n_recommended: int = 0
    model: str = DEFAULT_MODEL
    comparison: pd.DataFrame | None = None
    seconds: dict = field(default_factory=dict)  # step -> seconds


def is_synthetic_shop(folder: str | Path) -> bool:
    readme = Path(folder) / "README.txt"
    return readme.is_file() and readme.read_text(errors="replace").startswith("SYNTHETIC SHOP")


def ensure_shop(
    folder: str | Path, *, n_items: int, n_customers: int, seed: int, fmnist_dir=None, rebuild: bool = True
):
    """Build the synthetic shop in `folder` (`rebuild` False: keep one already there). A folder that holds
    something else is never written into."""
    from fashionrec.data.synthetic import make_shop

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not is_synthetic_shop(folder):
        raise FashionrecError(f"{folder}: exists and is not a synthetic shop (no README.txt); choose another --out")
    if not rebuild and is_synthetic_shop(folder):
        return None
    return make_shop(folder, n_items=n_items, n_customers=n_customers, seed=seed, fmnist_dir=fmnist_dir)


def _photo(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _label(meta: pd.DataFrame, item: str, tags: pd.DataFrame | None = None) -> str:
    if item in meta.index:
        return f"{meta.at[item, 'product_type_name']}\n{meta.at[item, 'colour_group_name']}"
    if tags is not None and item in tags.index:
        return f"new: {tags.at[item, 'product_type_name']}\n{tags.at[item, 'colour_group_name']} (tag)"
    return f"new\n{item}"


def run_shop_demo(
    out: str | Path,
    *,
    n_items: int = 600,
    n_customers: int = 300,
    seed: int = 0,
    models: tuple[str, ...] | list[str] = DEMO_MODELS,
    windows: int = 2,
    backbone: str = DEFAULT_BACKBONE,
    input_size: int = DEMO_INPUT_SIZE,
    workspace=None,
    progress: bool = True,
    fmnist_dir=None,
    say: Callable[[str], None] = lambda s: None,
) -> ShopDemo:
    """Synthetic shop -> tags for the row-less photos (linear probe) -> similar items -> recommendations for every
    customer -> leak-free evaluation of `models` on `windows` 28-day windows -> report.md and figures in `out`."""
    from fashionrec.evaluation.plots import image_grid
    from fashionrec.features import FeatureCache
    from fashionrec.io import default_workspace, write_csv, write_text
    from fashionrec.training.tasks import ClassifierConfig
    from fashionrec.workflows.classify import tag_with_probe
    from fashionrec.workflows.recommend import evaluate_recommenders, recommend_all, similar_items, write_comparison

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workspace = Path(workspace) if workspace else default_workspace()
    shop_dir = out / SHOP_DIR
    seconds: dict[str, float] = {}
    t = time.time()
    syn = ensure_shop(shop_dir, n_items=n_items, n_customers=n_customers, seed=seed, fmnist_dir=fmnist_dir)
    seconds["build the shop"] = time.time() - t
    arts, tx = syn.articles, syn.transactions
    meta = arts[arts["has_row"]].set_index("article_id")
    truth = syn.new_arrivals.set_index("article_id")
    say(
        f"synthetic shop: {len(arts)} photos of {arts['product_code'].nunique()} products ({len(truth)} without a "
        f"catalog row), {len(syn.customers)} customers, {len(tx)} purchases -> {shop_dir}/"
    )
    res = ShopDemo(out, shop_dir, len(arts), len(syn.customers), len(tx), seconds=seconds)

    # ---- 1. tags for the photos without a catalog row
    t = time.time()
    cfg = ClassifierConfig(method="linear-probe", backbone=backbone, input_size=input_size, seed=seed)
    tags = tag_with_probe(shop_dir, list(DEMO_TAG_COLUMNS), cfg, cache=FeatureCache(workspace), progress=progress)
    write_csv(tags.table, out / "tags.csv")
    tagged = tags.table.set_index("article_id")
    res.n_tagged, res.from_siblings = len(tagged), dict(tags.from_siblings)
    for c in DEMO_TAG_COLUMNS:
        common = tagged.index.intersection(truth.index)
        res.tag_accuracy[c] = float((tagged.loc[common, c] == truth.loc[common, c]).mean()) if len(common) else 0.0
    seconds["tag new arrivals"] = time.time() - t
    say(
        f"tagged {res.n_tagged} new arrivals: "
        + ", ".join(f"{c} {a:.0%} correct" for c, a in res.tag_accuracy.items())
        + " (known answers)"
    )

    kw = dict(backbone=backbone, input_size=input_size, workspace=workspace, progress=progress)
    # ---- 2. more like this, for a new arrival and two catalog items
    t = time.time()
    queries = [truth.index[0], *meta.index[[0, len(meta) // 2]]]
    imgs, caps, sim_rows = [], [], []
    for q in queries:
        sims = similar_items(shop_dir, q, model="visual", k=6, **kw)
        imgs.append(_photo(shop_dir / "images" / f"{q}.jpg"))
        caps.append("query: " + _label(meta, q, tagged))
        for s in sims:
            imgs.append(_photo(shop_dir / "images" / f"{s.item}.jpg"))
            caps.append(f"{_label(meta, s.item, tagged)}\n{s.score:.2f}")
            sim_rows.append({"query": q, "item": s.item, "score": round(s.score, 4)})
    write_csv(pd.DataFrame(sim_rows), out / "similar.csv")
    image_grid(imgs, caps, out / "similar.png", cols=7, title="synthetic shop: more like this (visual)")
    seconds["similar items"] = time.time() - t

    # ---- 3. recommendations for every customer
    t = time.time()
    sub = recommend_all(shop_dir, out / "recommendations.csv", model=DEFAULT_MODEL, **kw)
    res.n_recommended, res.model = sub.n_rows, sub.model
    seconds["recommend for everyone"] = time.time() - t
    say(f"recommendations ({sub.model}) for {sub.n_rows} customers -> {sub.path}")
    recs = pd.read_csv(sub.path, dtype=str).set_index("customer_id")["prediction"]
    who = tx["customer_id"].value_counts().index[0]
    bought = list(dict.fromkeys(tx.loc[tx["customer_id"] == who, "article_id"].tolist()[::-1]))[:8]
    rec_ids = recs.get(who, "").split()[:8]
    prefs = syn.customers.set_index("customer_id").loc[who]
    liked = set(prefs["classes"])
    imgs, caps, colors = [], [], []
    for row in (bought, rec_ids):
        for j in range(8):
            if j < len(row):
                imgs.append(_photo(shop_dir / "images" / f"{row[j]}.jpg"))
                caps.append(_label(meta, row[j], tagged))
                kind = meta.at[row[j], "product_type_name"] if row[j] in meta.index else None
                colors.append("green" if kind in liked else "black")
            else:
                imgs.append(np.full((192, 128, 3), 255, np.uint8))
                caps.append("")
                colors.append("black")
    image_grid(
        imgs,
        caps,
        out / "customer.png",
        cols=8,
        colors=colors,
        title=f"synthetic shop: customer {who[:8]} prefers {' + '.join(prefs['classes'])} in "
        f"{' + '.join(prefs['colours'])}\ntop row: their latest purchases; bottom row: their recommendations "
        "(green: a preferred class)",
    )

    # ---- 4. leak-free evaluation
    t = time.time()
    c = evaluate_recommenders(shop_dir, list(models), windows=windows, **kw)
    write_comparison(c, out / "evaluation", {"models": list(models), "windows": windows, **kw, "workspace": None})
    res.comparison = c.table
    seconds["evaluate"] = time.time() - t
    say(c.markdown)

    write_text(out / "report.md", _report(res, c.markdown, queries, who, prefs, windows))
    return res


def _report(res: ShopDemo, comparison_md: str, queries, who: str, prefs, windows: int) -> str:
    secs = "\n".join(f"| {k} | {v:.1f} |" for k, v in res.seconds.items())
    acc = "\n".join(f"| {c} | {a:.1%} |" for c, a in res.tag_accuracy.items())
    sib = (
        "\nColumns that describe a product rather than a photo take the tag of the product's labelled photos where "
        "it has some: " + ", ".join(f"{c} for {n} photos" for c, n in res.from_siblings.items()) + ".\n"
        if res.from_siblings
        else ""
    )
    return f"""# fashionrec demo: synthetic shop

Everything below ran offline on a **synthetic shop** (`{res.shop.name}/`, see its README.txt): Fashion-MNIST
garments enlarged and dyed in palette colours, sold as {res.n_items} articles to {res.n_customers} generated
customers in {res.n_transactions} purchases over six months. Each customer prefers 1-2 garment classes and 1-2
colours; the figures measure how much of that taste each step recovers. They are not results on real shop data.

## 1. Tags for new arrivals

{res.n_tagged} photos have no row in `articles.csv`. A linear probe on frozen backbone features, trained on the
photos that have one, tagged them (`tags.csv`); the generator knows their true attributes:

| column | correct |
|---|---|
{acc}
{sib}
## 2. More like this

`similar.png`, `similar.csv`: the 6 nearest items by the `visual` model for {", ".join(f"`{q}`" for q in queries)}
(the first has no catalog row).

![similar items](similar.png)

## 3. Recommendations for every customer

`recommendations.csv`: 12 items for each of the {res.n_recommended} customers by the default model
(`{res.model}`), in the H&M Kaggle submission format. `customer.png`: the most active customer's purchases (top
row) and recommendations (bottom row); this customer prefers {" + ".join(prefs["classes"])} in
{" + ".join(prefs["colours"])}.

![a customer's purchases and recommendations](customer.png)

## 4. Leak-free evaluation

Each model is fitted on the purchases before a 28-day window and scored on the window ({windows} consecutive
windows ending at the last date); `evaluation/comparison.md`, `comparison.png`, `taste.png`.

{comparison_md}

![comparison](evaluation/comparison.png)

![taste](evaluation/taste.png)

## Time

| step | seconds |
|---|---|
{secs}
"""
