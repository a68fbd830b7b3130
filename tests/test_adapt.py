"""Fashion-adapted models (`fashionrec adapt`): tiny synthetic catalogs with known answers, tiny backbone."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from fashionrec.artifacts.registry import measured_better, register_adapted, registered_adapted, resolve_backbone
from fashionrec.backbones import create_backbone
from fashionrec.cli import main
from fashionrec.config import DEFAULT_BACKBONE
from fashionrec.data.products import pool_by_product, product_level_columns, tag_by_product
from fashionrec.errors import FashionrecError
from fashionrec.evaluation.adapt import retrieval_by_views
from fashionrec.evaluation.calibration import apply_temperature
from fashionrec.evaluation.retrieval import classification_report, nearest_neighbours, retrieval_metrics
from fashionrec.features import FeatureCache, Preprocess, auto_input_size, embed_image_files
from fashionrec.training.adapt import (
    AdaptConfig,
    AdaptedModel,
    adapt_catalog,
    catalog_for_training,
    format_adapt_metrics,
    head_probs,
    load_adapted,
    load_heldout,
    product_groups,
    refit_heads,
    split_products,
)

COLOURS = {"1": ((220, 30, 30), "Red"), "2": ((30, 30, 220), "Blue"), "3": ((30, 170, 30), "Green")}
SHAPES = ["rect", "ellipse", "tri", "cross", "hbar", "vbar"]


def _draw(shape: str, colour, jitter: int) -> Image.Image:
    im = Image.new("RGB", (24, 36), (255, 255, 255))
    d = ImageDraw.Draw(im)
    o = jitter
    if shape == "rect":
        d.rectangle([5 + o, 6, 19 - o, 30], fill=colour)
    elif shape == "ellipse":
        d.ellipse([3, 6 + o, 21, 30], fill=colour)
    elif shape == "tri":
        d.polygon([(12, 4 + o), (3, 32), (21, 32)], fill=colour)
    elif shape == "cross":
        d.rectangle([10, 4, 14, 32], fill=colour)
        d.rectangle([3, 14 + o, 21, 18 + o], fill=colour)
    elif shape == "hbar":
        d.rectangle([1, 15 - o, 23, 21], fill=colour)
    else:
        d.rectangle([9 + o, 2, 15, 34], fill=colour)
    return im


@pytest.fixture
def shapes_shop(tmp_path):
    """18 products (6 shapes x 3) in 3 colours each; rows for most; product = first 7 digits of the id."""
    d = tmp_path / "shop"
    (d / "images").mkdir(parents=True)
    rows = ["article_id,product_group_name,colour_group_name,product_type_name"]
    for p in range(18):
        shape = SHAPES[p % 6]
        for c, (rgb, cname) in COLOURS.items():
            aid = f"0{p:06d}00{c}"
            _draw(shape, rgb, (p // 6 + int(c)) % 3).save(d / "images" / f"{aid}.jpg")
            if p < 15 or c == "1":
                group = "Upper" if shape in ("rect", "tri", "cross") else "Lower"
                rows.append(f"{aid},{group},{cname},{shape}")
    (d / "articles.csv").write_text("\n".join(rows) + "\n")
    return d


def cat_paths(shop):
    return sorted((shop / "images").glob("*.jpg"))


def test_flip_averaging_is_the_mean_of_both_views():
    """Test-time augmentation: the photo and its mirror image, one batch, averaged; another cache identity."""
    bb = create_backbone("tiny_cnn", input_size=32).eval()
    plain_key = bb.feature_key()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        a, b = bb(x), bb(x.flip(-1))
        bb.flip_tta = True
        both = bb(x)
        sym = torch.cat([x[..., :16], x[..., :16].flip(-1)], -1)  # a mirror-symmetric image: both views agree
        assert torch.allclose(bb(sym), bb.forward_views(sym), atol=1e-6)
    assert torch.allclose(both, (a + b) / 2, atol=1e-6)
    assert (both - a).abs().max() > 1e-2 * a.abs().max()  # the mirror image does change the features
    assert bb.feature_key() == plain_key + "+flip"


def test_gray_views_are_colour_blind_and_averaged():
    """The greyscale view: the same image for any colouring with the same luma; averaged with the other views."""
    bb = create_backbone("tiny_cnn", input_size=32).eval()
    mean = torch.tensor(bb.data_config.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.data_config.std).view(1, 3, 1, 1)
    norm = lambda rgb: (rgb - mean) / std  # noqa: E731
    grey = torch.rand(2, 1, 32, 32).repeat(1, 3, 1, 1)
    assert torch.allclose(bb.to_gray(norm(grey)), norm(grey), atol=1e-5)  # a grey photo stays itself
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    green = torch.zeros(1, 3, 8, 8)
    green[:, 1] = 0.299 / 0.587  # the same luma as pure red
    assert torch.allclose(bb.to_gray(norm(red)), bb.to_gray(norm(green)), atol=1e-5)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        views = [x, bb.to_gray(x), x.flip(-1), bb.to_gray(x).flip(-1)]
        expected = torch.stack([bb.forward_views(v) for v in views]).mean(0)
        bb.flip_tta = bb.gray_tta = True
        assert torch.allclose(bb(x), expected, atol=1e-5)
    assert bb.feature_key().endswith("+flip+gray")


def test_refit_heads_known_answer():
    """Heads refit by logistic regression on standardised inputs, the scaling folded into the layer: a separable
    3-class head, a binary head (sklearn's one-row form), a head with one class, and a class nobody has."""
    from fashionrec.backbones.adapted import AdaptedBackbone

    bb = AdaptedBackbone(create_backbone("tiny_cnn", pretrained=False), 8, weights_id="t")
    heads = {"three": ["a", "b", "c"], "two": ["x", "y"], "one": ["only", "never"]}
    model = AdaptedModel(bb, heads)
    rng = np.random.default_rng(0)
    n, d = 600, bb.prelogits_dim
    x = rng.normal(size=(n, d)).astype(np.float32) * 5 + 100  # far from standardised: the folding must be right
    three = np.argmax(x[:, :3], 1)
    two = (x[:, 5] > 100).astype(int)
    labels = {"three": three, "two": two, "one": np.where(np.arange(n) % 3 == 0, 0, -1)}
    train = np.arange(n) < 500
    rows = refit_heads(model, [x, x + rng.normal(size=x.shape).astype(np.float32) * 0.1], labels, train, c=1.0)
    assert rows == {"three": 500, "two": 500, "one": 167}
    p = head_probs(model, x[~train])
    assert (p["three"].argmax(1) == three[~train]).mean() > 0.85  # wrong folding of the scaling: chance, 1/3
    assert (p["two"].argmax(1) == two[~train]).mean() > 0.9
    assert (p["one"].argmax(1) == 0).all() and p["one"][:, 1].max() < 1e-6
    assert all(np.allclose(v.sum(1), 1, atol=1e-5) for v in p.values())


def test_refit_colour_heads_read_the_colour_features():
    """When the network's inputs carry no colour (noise here), a colour head refit with the garment's colour features
    tags it from them; other heads keep their inputs; a model whose colour heads read them refuses to run without."""
    from fashionrec.backbones.adapted import AdaptedBackbone
    from fashionrec.training.colour import COLOUR_FEATURES_DIM, colour_features

    bb = AdaptedBackbone(create_backbone("tiny_cnn", pretrained=False), 8, weights_id="t")
    model = AdaptedModel(bb, {"colour_group_name": ["Blue", "Green", "Red"], "kind": ["a", "b"]})
    rng = np.random.default_rng(0)
    n, d = 300, bb.prelogits_dim
    y = rng.integers(0, 3, n)
    base = np.array([(30, 30, 200), (30, 160, 40), (200, 30, 30)])
    images = np.full((n, 24, 24, 3), 250, np.uint8)
    for i in range(n):  # a garment of the class's colour, its shade and size jittered
        o = int(rng.integers(0, 5))
        images[i, 4 + o : 20, 6 : 18 - o] = np.clip(base[y[i]] + rng.integers(-25, 26, 3), 0, 255)
    kind = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 4 * kind
    train = np.arange(n) < 200
    col = colour_features(images)
    refit_heads(model, [x], {"colour_group_name": y, "kind": kind}, train, c=1.0, colour=col)
    assert model.colour_heads == ("colour_group_name",)
    assert model.heads[0].weight.shape == (3, d + COLOUR_FEATURES_DIM) and model.heads[1].weight.shape == (2, d)
    p = head_probs(model, x[~train], col[~train])
    assert (p["colour_group_name"].argmax(1) == y[~train]).mean() > 0.95  # from noise alone: chance, 1/3
    assert (p["kind"].argmax(1) == kind[~train]).mean() > 0.9
    with pytest.raises(ValueError, match="colour"):
        head_probs(model, x[~train])
    refit_heads(model, [x], {"colour_group_name": y, "kind": kind}, train, c=1.0)  # without: network inputs only
    assert model.colour_heads == () and model.heads[0].weight.shape == (3, d)
    assert (head_probs(model, x[~train])["colour_group_name"].argmax(1) == y[~train]).mean() < 0.6


def test_retrieval_metrics_known_answer():
    f = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], dtype=np.float32)
    groups = np.array(["a", "a", "b", "c", "c"])
    nn = nearest_neighbours(f, np.arange(5), k=2)
    assert nn[0, 0] == 1 and nn[2, 0] == 3
    m = retrieval_metrics(
        f, groups, np.array([0, 2, 3]), types=np.array(["t", "t", "u", "u", ""], dtype=object), ks=(1, 2)
    )
    # query 0 -> 1 (same product); query 2 -> 3 (other product), then 4 (same as 3) -> no hit; query 3 -> 2, 4 (hit at 2)
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@2"] == pytest.approx(2 / 3)
    r = classification_report(["x", "x", "y"], ["x", "y", "y"], ["x", "y"])
    assert r["accuracy"] == pytest.approx(2 / 3) and r["macro_f1"] == pytest.approx(2 / 3)


def test_retrieval_by_views_known_answer():
    # photo view: products a, b apart; grey view (3x larger) groups photo 0 with 2 and 1 with 3: across products
    e = np.eye(4, dtype=np.float32)
    photo = np.stack([e[0], e[0], e[1], e[1]])
    gray = 3 * np.stack([e[2], e[3], e[2], e[3]])
    groups, held = np.array(["a", "a", "b", "b"]), np.ones(4, dtype=bool)
    names = ("photo", "gray", "photo_flip", "gray_flip")
    r = retrieval_by_views([photo, gray, photo, gray], names, groups, held, None)
    assert list(r) == ["none", "gray", "flip", "flip+gray"]
    assert r["none"]["recall@1"] == 1.0 and r["flip"]["recall@1"] == 1.0
    assert r["gray"]["recall@1"] == 0.0 and r["flip+gray"]["recall@1"] == 0.0
    two = retrieval_by_views([photo, photo], ("photo", "photo_flip"), groups, held, None)
    assert list(two) == ["none", "flip"]
    m = {"retrieval_heldout": {"adapted": r["flip+gray"]}, "tagging_heldout": {}, "retrieval_heldout_views": r}
    assert "| none | 1.000 | 1.000 |" in format_adapt_metrics(m)


def test_split_forward_matches_full_model():
    x = torch.randn(2, 3, 48, 48)
    for name, k in [("tiny_cnn", 1), ("efficientnet_lite0", 4)]:
        bb = create_backbone(name, input_size=48)
        assert bb.supports_split()
        with torch.no_grad():
            assert torch.allclose(bb.forward_upper(bb.forward_lower(x, k), k), bb(x), atol=1e-5)


def test_groups_and_split_by_product():
    ids = [f"0{p:06d}00{c}" for p in range(40) for c in "12"]
    g = product_groups(ids, pd.DataFrame())
    assert g[0] == g[1] == "0000000" and len(set(g)) == 40
    held = split_products(g, 0.25, seed=0)
    assert held.sum() == 20  # 10 products x 2 photos
    for p in set(g):
        assert len(set(held[g == p])) == 1  # never split inside a product
    assert list(product_groups(["a", "b"], pd.DataFrame())) == ["a", "b"]  # no rule: every photo its own product


def test_product_level_columns_and_pooling_known_answer():
    """Type is shared by a product's colours, colour is not; pooling is the renormalised geometric mean."""
    ids = [f"{p:07d}{c:03d}" for p in range(12) for c in range(3)]
    meta = pd.DataFrame(
        {
            "product_type_name": [f"type{p % 4}" for p in range(12) for _ in range(3)],
            "colour_group_name": [["Red", "Blue", "Green"][c] for _ in range(12) for c in range(3)],
        },
        index=ids,
    )
    meta.loc["0000000001", "product_type_name"] = "type9"  # one product in 12 disagrees: agreement 11/12
    groups = product_groups(ids, meta)
    cols = ["product_type_name", "colour_group_name"]
    assert product_level_columns(ids, meta, groups, cols, min_agreement=0.9) == {"product_type_name": round(11 / 12, 4)}
    assert product_level_columns(ids, meta, groups, cols) == {}  # the default asks for 0.95
    assert product_level_columns(ids[3:], meta, groups[3:], cols) == {"product_type_name": 1.0}
    assert product_level_columns(ids[:27], meta, groups[:27], cols, 0.9) == {}  # 9 products: too few to tell

    p = {"t": np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]]), "c": np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])}
    out = pool_by_product(p, np.array(["A", "A", "B"]), ["t"])
    g = np.sqrt([0.6 * 0.3, 0.4 * 0.7])
    assert np.allclose(out["t"][:2], g / g.sum()) and np.allclose(out["t"][2], [0.9, 0.1])
    assert out["c"] is p["c"]  # not a product-level column: untouched


def test_tag_by_product_takes_labelled_siblings_first():
    """A row-less photo whose product has labelled photos gets their label (confidence = the measured agreement);
    row-less photos of a product without any row share their pooled prediction."""
    meta = pd.DataFrame({"product_type_name": ["Skirt", "Skirt"]}, index=["0000001001", "0000001002"])
    catalog = ["0000001001", "0000001002", "0000001003", "0000002001", "0000002002"]
    classes = {"product_type_name": ["Dress", "Skirt"]}
    probs = {"product_type_name": np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])}  # the model thinks Dress for 1003
    out, n = tag_by_product(
        ["0000001003", "0000002001", "0000002002"],
        probs,
        classes,
        meta,
        catalog,
        agreement={"product_type_name": 0.97},
    )
    p = out["product_type_name"]
    assert np.allclose(p[0], 0.97 * np.array([0, 1]) + 0.03 * np.array([0.9, 0.1]))
    assert np.allclose(p[1], p[2]) and n == {"product_type_name": 1}
    g = np.sqrt([0.7 * 0.2, 0.3 * 0.8])
    assert np.allclose(p[1], g / g.sum())
    # too few products to measure agreement and no fallback: every photo keeps its own prediction
    same, n0 = tag_by_product(
        ["0000001003"], {"product_type_name": probs["product_type_name"][:1]}, classes, meta, catalog
    )
    assert np.allclose(same["product_type_name"], probs["product_type_name"][:1]) and n0 == {}


def test_auto_input_size(tmp_path):
    small = [tmp_path / f"s{i}.jpg" for i in range(3)]
    for p in small:
        Image.new("RGB", (128, 192), "white").save(p)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (800, 1200), "white").save(big)
    assert auto_input_size(small, native=224) == 192  # H&M sample: the photos' own size, no upsampling
    assert auto_input_size([big], native=224) == 224  # large photos: the backbone's native size
    assert auto_input_size([big], native=260) == 260
    assert auto_input_size([tmp_path / "x.jpg"], native=224) == 224


# the tiny backbone on the shapes shop: 60 steps, seconds
TINY = dict(
    backbone="tiny_cnn",
    input_size=32,
    holdout=0.34,
    train_blocks=2,
    max_steps=60,
    lr=3e-3,
    trunk_lr=3e-3,
    products_per_batch=8,
    labelled_per_batch=16,
    embed_dim=32,
    seed=0,
)


def test_adapt_model_folder_end_to_end(shapes_shop, tmp_path, capsys):
    out = tmp_path / "model"
    ws = tmp_path / "ws"
    cfg = AdaptConfig(**TINY)
    adapt_catalog(shapes_shop, out, cfg, workspace=ws, progress=False)
    conf = json.loads((out / "fashionrec_model.json").read_text())
    assert (out / "weights.safetensors").exists() and conf["format_version"] == 1
    assert conf["heads"]["colour_group_name"] == ["Blue", "Green", "Red"]
    assert conf["preprocess"]["pad_square"] is True and conf["preprocess"]["input_size"] == 32
    assert conf["embedding_tta"] == "flip+gray"  # evaluated, cached and embedded as photo + mirror image + greys
    assert conf["head_taps"] == [0, 1] and conf["heads_on"] == "pooled taps + pre-logits"  # refit on both blocks
    assert conf["colour_heads"] == ["colour_group_name"]  # the colour head also reads the garment's colour histogram
    # ... and a LightGBM model of that histogram multiplies in, saved as text beside the weights
    assert list(conf["colour_boosters"]) == ["colour_group_name"]
    assert (out / conf["colour_boosters"]["colour_group_name"]["file"]).is_file()
    assert set(load_adapted(out).colour_boosters) == {"colour_group_name"}
    # confidences calibrated on the held-out products: a temperature per head (and the colour head's without its
    # booster), saved and loaded; the reported figures calibrated across halves of the held-out products
    assert set(conf["temperatures"]) == set(conf["heads"]) and list(conf["temperatures_no_booster"]) == [
        "colour_group_name"
    ]
    assert load_adapted(out).temperatures == pytest.approx(conf["temperatures"])
    held = set(conf["heldout_products"])
    assert len(held) == 6
    # the folder beside its catalog, split as it was (what the benchmarks score it on)
    split = load_heldout(out, shapes_shop)
    assert split.held == held and set(split.groups[split.is_held]) == held and int(split.is_held.sum()) == 18
    h_ids, h_groups, h_probs, unreadable = split.predict_heldout(progress=False)
    assert len(h_ids) == 18 and set(h_groups) == held and not unreadable
    assert all(h_probs[c].shape == (18, len(conf["heads"][c])) for c in conf["heads"])
    assert split.product_level(conf["heads"]) == conf["product_level_columns"]  # as adapt measured it
    every = tmp_path / "trained_on_every_product"
    shutil.copytree(out, every)
    (every / "fashionrec_model.json").write_text(json.dumps({**conf, "heldout_products": []}))
    with pytest.raises(FashionrecError, match="trained_on_every_product: the folder lists no held-out products"):
        load_heldout(every, shapes_shop)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_heldout_photos"] == 18 and m["retrieval_heldout"]["adapted"]["n_queries"] == 18
    # the same queries with each setting of the views; all four is the folder's embedding
    assert list(m["retrieval_heldout_views"]) == ["none", "gray", "flip", "flip+gray"]
    assert m["retrieval_heldout_views"]["flip+gray"] == m["retrieval_heldout"]["adapted"]
    # colour is a solid fill: the colour head gets it right on products it never saw
    assert m["tagging_heldout"]["colour_group_name"]["accuracy"] >= 0.9
    cal = m["calibration_heldout"]["colour_group_name"]
    assert cal["after"]["n"] == 18 and len(cal["fold_temperatures"]) == 2
    assert cal["temperature"] == pytest.approx(conf["temperatures"]["colour_group_name"], abs=1e-3)
    assert "confidence calibration" in format_adapt_metrics(m) and "| colour_group_name | " in format_adapt_metrics(m)
    # what `tag` does (product-level columns pooled per product) and per photo; colour is not product-level
    assert set(m["tagging_heldout_per_photo"]) == set(m["tagging_heldout"])
    assert (
        "colour_group_name" not in m["product_level_columns"]
        and conf["product_level_columns"] == m["product_level_columns"]
    )

    # the folder is a backbone: by path, preprocessing from the folder, cache keyed by the weights' hash
    bb = create_backbone(str(out), input_size=96)
    assert bb.data_config.input_size == 32 and bb.weights_id.startswith("adapted:sha256:")
    assert bb.flip_tta and bb.gray_tta and bb.feature_key().endswith("+flip+gray")
    # the heads' model embeds exactly as the backbone does (both views averaged)
    arr = np.stack([load_adapted(out).preprocess.pil_to_array(Image.open(p)) for p in list(cat_paths(shapes_shop))[:4]])
    e_model, p_model = load_adapted(out).predict_arrays(arr)
    e_none, p_heads = load_adapted(out).predict_arrays(arr, embed=False)  # tagging: no grey views computed
    # the same probabilities up to float32 noise (another batch size: oneDNN picks other convolution kernels)
    assert e_none is None and all(np.allclose(p_heads[n], p_model[n], atol=1e-4) for n in p_model)
    with torch.no_grad():
        e_bb = bb.eval()(load_adapted(out).preprocess.arrays_to_tensor(arr)).numpy()
    assert np.allclose(e_model, e_bb, atol=1e-5)
    # the network through ONNX Runtime (what large tagging jobs take) gives what torch gives
    e_ort, p_ort = load_adapted(out).predict_arrays(arr, onnx=True)
    assert np.allclose(e_ort, e_model, atol=1e-4) and all(np.allclose(p_ort[n], p_model[n], atol=1e-4) for n in p_model)
    # the heads' probabilities are the uncalibrated ones with each head's temperature applied
    raw = copy.copy(load_adapted(out))
    raw.temperatures = {}
    _, p_raw = raw.predict_arrays(arr, embed=False)
    for n, t in conf["temperatures"].items():
        assert np.allclose(p_heads[n], apply_temperature(p_raw[n], t), atol=1e-5)
    assert any(not np.allclose(p_heads[n], p_raw[n], atol=1e-3) for n in p_raw)
    cat = catalog_for_training(shapes_shop)
    fresh = embed_image_files(bb, cat.image_paths, progress=False)
    cached = embed_image_files(bb, cat.image_paths, cache=FeatureCache(ws), progress=False)
    assert fresh.features.shape == (54, 32)
    assert np.allclose(np.linalg.norm(fresh.features, axis=1), 1, atol=1e-4)
    cos = (fresh.features * cached.features).sum(1)
    assert cos.min() > 0.999  # adapt stored what a fresh pass computes (from float16 lower maps)
    plain = create_backbone("tiny_cnn", input_size=32)
    assert plain.feature_key() != bb.feature_key()
    # backbones/ reads the folder's backbone itself: the same identity and embeddings as the full model's backbone
    full = load_adapted(out).backbone
    assert bb is not full and bb.weights_id == full.weights_id
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(bb(x), full.eval()(x), atol=1e-6)

    # embed CLI with the folder as --backbone
    f = tmp_path / "f.npz"
    assert (
        main(
            ["-q", "--workspace", str(ws), "embed", "--data", str(shapes_shop), "--backbone", str(out), "--out", str(f)]
        )
        == 0
    )
    z = np.load(f)
    assert z["features"].shape == (54, 32) and len(z["ids"]) == 54

    # tag with its heads: items without a row (products 15-17, colours 2 and 3)
    tags = tmp_path / "tags.csv"
    assert (
        main(
            [
                "-q",
                "tag",
                "--data",
                str(shapes_shop),
                "--model",
                str(out),
                "--label-column",
                "colour_group_name,product_group_name",
                "--out",
                str(tags),
            ]
        )
        == 0
    )
    df = pd.read_csv(tags, dtype=str).set_index("article_id")
    assert list(df.columns) == [
        "colour_group_name",
        "colour_group_name_confidence",
        "product_group_name",
        "product_group_name_confidence",
    ]
    assert len(df) == 6
    truth = {"2": "Blue", "3": "Green"}
    right = sum(df.loc[i, "colour_group_name"] == truth[i[-1]] for i in df.index)
    assert right >= 5
    # product group describes the product: the row-less colours take it from the product's labelled colour
    rows = pd.read_csv(shapes_shop / "articles.csv", dtype=str).set_index("article_id")
    assert all(df.loc[i, "product_group_name"] == rows.loc[i[:7] + "001", "product_group_name"] for i in df.index)
    assert (df["product_group_name_confidence"].astype(float) >= 0.99).all()
    assert "product_group_name (6 photos from labelled photos of the same product)" in capsys.readouterr().out
    assert (
        main(
            [
                "-q",
                "tag",
                "--data",
                str(shapes_shop),
                "--model",
                str(out),
                "--label-column",
                "colour_group_name",
                "--min-confidence",
                "1.01",
                "--out",
                str(tags),
            ]
        )
        == 0
    )
    assert set(pd.read_csv(tags, dtype=str)["colour_group_name"]) == {"unsure"}
    # --no-colour-booster: the colour head alone, other confidences; the cached folder keeps its booster
    args = ["-q", "tag", "--data", str(shapes_shop), "--model", str(out), "--label-column", "colour_group_name"]
    assert main(args + ["--no-colour-booster", "--out", str(tags)]) == 0
    alone = pd.read_csv(tags, dtype=str).set_index("article_id")["colour_group_name_confidence"].astype(float)
    assert not np.allclose(alone.loc[df.index], df["colour_group_name_confidence"].astype(float), atol=1e-3)
    assert load_adapted(out).colour_boosters
    assert (
        main(
            ["-q", "tag", "--data", str(shapes_shop), "--model", str(out), "--label-column", "nope", "--out", str(tags)]
        )
        == 2
    )

    # predict with the folder: per-attribute top-k, same preprocessing
    capsys.readouterr()
    img = shapes_shop / "images" / "0000015002.jpg"
    assert main(["predict", "--model", str(out), "--top-k", "1", str(img)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "image,attribute,rank,label,probability" and len(lines) == 1 + len(conf["heads"])

    # adapt registered the folder for this data in the workspace; `auto` follows what it measured
    entry = registered_adapted(ws, shapes_shop)
    assert entry["model"] == str(out.resolve()) and entry["better"] == measured_better(m)
    expected = str(out.resolve()) if entry["better"] else DEFAULT_BACKBONE
    assert resolve_backbone("auto", shapes_shop, ws)[0] == expected

    # a tampered booster file is refused too
    booster_file = out / conf["colour_boosters"]["colour_group_name"]["file"]
    booster_file.write_text(booster_file.read_text().replace("num_leaves", "num_leaves "))
    with pytest.raises(FashionrecError, match="SHA-256"):
        load_adapted(out)
    # a tampered weights file is refused, not half-loaded
    (out / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(FashionrecError, match="weights"):
        load_adapted(out)


def test_images_plus_labels_csv_folder_trains(tmp_path):
    d = tmp_path / "plain"
    (d / "images").mkdir(parents=True)
    rows = ["filename,label"]
    for i in range(12):
        c, name = ((220, 30, 30), "red") if i % 2 else ((30, 30, 220), "blue")
        Image.new("RGB", (40, 60), c).save(d / "images" / f"p{i}.png")
        rows.append(f"p{i}.png,{name}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    from fashionrec.data.catalog import load_catalog

    cat = load_catalog(d)  # what every command reads (embed, recommend, serve), not only training
    assert len(cat.item_ids) == 12 and cat.metadata.loc["p1", "label"] == "red"
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "--workspace",
                str(tmp_path / "ws"),
                "train",
                "--dataset",
                str(d),
                "--label-column",
                "label",
                "--backbone",
                "tiny_cnn",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_accuracy"] == 1.0
    assert json.loads((out / "config.json").read_text())["input_size"] == 64  # auto: 60 px photos -> 64


def test_predict_pads_like_training(tiny_hm, tmp_path, monkeypatch, capsys):
    from fashionrec.training.classifier import Classifier

    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train",
                "--dataset",
                str(tiny_hm),
                "--label-column",
                "colour_group_name",
                "--out",
                str(out),
                "--input-size",
                "32",
                "--backbone",
                "tiny_cnn",
            ]
        )
        == 0
    )
    seen = []
    orig = Classifier.predict_proba

    def spy(self, images, *a, **k):
        seen.append(images)
        return orig(self, images, *a, **k)

    monkeypatch.setattr(Classifier, "predict_proba", spy)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (60, 20), (200, 0, 0)).save(wide)
    assert main(["predict", "--model", str(out / "model.pt"), str(wide)]) == 0
    x = seen[0][0]
    assert x.shape == (32, 32, 3)
    assert (x[0] > 240).all() and (x[16] < 100).any()  # white padding above, the red photo in the middle
    assert np.array_equal(x, Preprocess(32, (0.5,) * 3, (0.5,) * 3).pil_to_array(Image.open(wide)))


def _metrics(imagenet_r10: float, adapted_r10: float) -> dict:
    return {
        "retrieval_heldout": {
            "imagenet": {"recall@1": 0.1, "recall@10": imagenet_r10},
            "adapted": {"recall@1": 0.2, "recall@10": adapted_r10},
        }
    }


def test_auto_backbone_follows_the_registry(tiny_hm, tmp_path, capsys):
    """`--backbone auto` (the recommenders' and the server's default) takes the data's adapted folder only when it
    retrieved better than ImageNet and still holds the weights that were measured; explicit names win."""
    from fashionrec.workflows.shop import load_shop

    ws = tmp_path / "ws"
    model = tmp_path / "model"
    model.mkdir()
    (model / "fashionrec_model.json").write_text(json.dumps({"weights_sha256": "aaa"}))
    assert resolve_backbone("auto", tiny_hm, ws)[0] == DEFAULT_BACKBONE  # nothing registered
    register_adapted(ws, tiny_hm, model, _metrics(0.30, 0.25))
    assert resolve_backbone("auto", tiny_hm, ws)[0] == DEFAULT_BACKBONE  # measured worse
    register_adapted(ws, tiny_hm, model, _metrics(0.30, 0.45))
    assert resolve_backbone("auto", tiny_hm, ws)[0] == str(model.resolve())
    assert resolve_backbone(None, tiny_hm, ws)[0] == str(model.resolve())
    assert resolve_backbone("mobilenetv2", tiny_hm, ws)[0] == "mobilenetv2"
    assert resolve_backbone("auto", tmp_path / "other_shop", ws)[0] == DEFAULT_BACKBONE  # another data folder
    shop = load_shop(tiny_hm, with_images=False, workspace=ws)
    assert shop.backbone_name == str(model.resolve())
    assert "fashionrec adapt" in capsys.readouterr().err
    from fashionrec.serving.build import _locate

    assert _locate(tiny_hm, ws, None, None)[5] == str(model.resolve())  # the server's default too
    fp = shop.fingerprint()
    (model / "fashionrec_model.json").write_text(json.dumps({"weights_sha256": "bbb"}))  # retrained elsewhere
    assert resolve_backbone("auto", tiny_hm, ws)[0] == DEFAULT_BACKBONE
    same_path = load_shop(tiny_hm, with_images=False, workspace=ws, backbone=str(model.resolve()))
    assert same_path.fingerprint() != fp  # the same folder with other weights is another backbone


def test_freeze_bn_keeps_imagenet_statistics_while_the_trunk_trains():
    """--freeze-bn: in the upper stage every BatchNorm runs on its stored statistics (eval mode), the trained blocks'
    included; without it the trained blocks' BatchNorm layers use batch statistics. The lower blocks never train."""
    from fashionrec.training.adapt import _set_train_mode

    bb = create_backbone("efficientnet_lite0", input_size=48)
    from fashionrec.backbones.adapted import AdaptedBackbone

    model = AdaptedModel(AdaptedBackbone(bb, 16, weights_id="t"), {"x": ["a", "b"]})
    k = len(bb.blocks) - 2
    bns = lambda part: [m for m in part.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    upper_bns = [m for b in bb.blocks[k:] for m in bns(b)]
    lower_bns = [m for b in bb.blocks[:k] for m in bns(b)]
    assert upper_bns and lower_bns
    _set_train_mode(model, k, "upper")
    assert all(m.training for m in upper_bns) and not any(m.training for m in lower_bns)
    _set_train_mode(model, k, "upper", freeze_bn=True)
    assert not any(m.training for m in upper_bns + lower_bns)
    before = [m.running_mean.clone() for m in upper_bns]
    model.upper(bb.forward_lower(torch.randn(4, 3, 48, 48), k).contiguous(), k)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, upper_bns))  # statistics untouched


def test_adapt_with_cross_batch_memory(shapes_shop, tmp_path):
    """--memory-size: the metric loss compares each batch with the embeddings of earlier steps too (XBM), from a
    memory emptied at each stage."""
    from pytorch_metric_learning.losses import CrossBatchMemory

    cfg = AdaptConfig(**{**TINY, "max_steps": 30, "memory_size": 64, "freeze_bn": True, "refit_heads": False})
    seen = []
    orig = CrossBatchMemory.forward

    def spy(self, emb, labels, *a, **kw):
        seen.append((self.memory_size, int(self.queue_idx), bool(self.has_been_filled)))
        return orig(self, emb, labels, *a, **kw)

    CrossBatchMemory.forward = spy
    try:
        res = adapt_catalog(shapes_shop, tmp_path / "m", cfg, workspace=tmp_path / "ws", progress=False)
    finally:
        CrossBatchMemory.forward = orig
    assert len(seen) == 30 and {s[0] for s in seen} == {64}
    assert any(s[2] for s in seen)  # the memory filled up: earlier steps' embeddings were compared with
    assert seen[0][1] == 0 and seen[3][1] == 0  # a fresh memory at the start of each stage (3 head steps here)
    assert res.metrics["history"][1]["loss"]["metric"] > 0
    with pytest.raises(ValueError, match="at least the batch size"):
        AdaptConfig(memory_size=50)  # smaller than one batch (96): a clear error, not pytorch-metric-learning's assert


def test_adapt_cli_names_a_setting_out_of_range(shapes_shop, tmp_path, capsys):
    for flag, value, said in [("--memory-size", "5", "memory_size"), ("--holdout", "1.5", "holdout")]:
        assert main(["adapt", "--data", str(shapes_shop), "--out", str(tmp_path / "m"), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fashionrec: error: adapt:") and said in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()  # nothing written


def test_adapt_input_size_fits_the_photos(shapes_shop, tmp_path, monkeypatch):
    """No --input-size: the photos' padded side (36 px -> the 64 px floor here), at most ADAPT_MAX_INPUT_SIZE; the
    folder records the size it trained at. Large photos are capped."""
    import fashionrec.training.adapt as adapt_mod
    from fashionrec.config import ADAPT_MAX_INPUT_SIZE

    out = tmp_path / "model"
    adapt_catalog(
        shapes_shop,
        out,
        AdaptConfig(**{**TINY, "input_size": None, "max_steps": 4}),
        workspace=tmp_path / "ws",
        progress=False,
    )
    conf = json.loads((out / "fashionrec_model.json").read_text())
    assert conf["preprocess"]["input_size"] == 64 and conf["adapt_config"]["input_size"] == 64
    # photos larger than the cap: the cap (auto_input_size itself is checked in test_auto_input_size)
    monkeypatch.setattr("fashionrec.features.auto_input_size", lambda paths, native: 192)
    out2 = tmp_path / "model2"
    adapt_mod.adapt_catalog(
        shapes_shop,
        out2,
        AdaptConfig(**{**TINY, "input_size": None, "max_steps": 4, "colour_features": False}),
        workspace=tmp_path / "ws",
        progress=False,
    )
    conf2 = json.loads((out2 / "fashionrec_model.json").read_text())
    assert conf2["preprocess"]["input_size"] == ADAPT_MAX_INPUT_SIZE
    assert conf2["colour_heads"] == [] and conf["colour_heads"] == ["colour_group_name"]  # --no-colour-features


def test_tag_with_probe_takes_product_columns_from_labelled_colours(shapes_shop, tmp_path, capsys):
    """Without a model folder (a probe per column), product-level columns follow the product's labelled colours too."""
    tags = tmp_path / "tags.csv"
    args = ["-q", "tag", "--data", str(shapes_shop), "--label-column", "product_group_name,colour_group_name"]
    args += ["--out", str(tags), "--input-size", "32", "--backbone", "tiny_cnn"]
    assert main(args) == 0
    df = pd.read_csv(tags, dtype=str).set_index("article_id")
    rows = pd.read_csv(shapes_shop / "articles.csv", dtype=str).set_index("article_id")
    assert len(df) == 6 and all(
        df.loc[i, "product_group_name"] == rows.loc[i[:7] + "001", "product_group_name"] for i in df.index
    )
    assert (df["product_group_name_confidence"].astype(float) >= 0.99).all()
    out = capsys.readouterr().out
    assert "product_group_name (6 photos from labelled photos of the same product)" in out
    line = next(x for x in out.splitlines() if x.startswith("product-level columns"))
    assert "colour_group_name" not in line  # colour is not a product's: tagged photo by photo
    # a colour column: the probe times the colour booster (known answer: the drawn colour, the id's last digit)
    drawn = {c: name for c, (_, name) in COLOURS.items()}
    assert all(df.loc[i, "colour_group_name"] == drawn[i[-1]] for i in df.index)
    tagged = {x.split(" (")[0].split()[-1]: x for x in out.splitlines() if x.startswith("tagged ")}
    assert "x the colour booster" in tagged["colour_group_name"]
    assert "x the colour booster" not in tagged["product_group_name"]
    # both columns' confidences calibrated on the labelled photos of the 4 products (of 18) held back from a refit
    calibrated = [x for x in out.splitlines() if "confidences calibrated on" in x]
    assert len(calibrated) == 2 and all("on 12 labelled photos" in x for x in calibrated)
    assert main(args[:-4] + ["--no-colour-booster"] + args[-4:]) == 0
    assert not any("colour booster" in x for x in capsys.readouterr().out.splitlines())


def test_continue_from_a_folder_whose_colour_heads_read_colour_features(shapes_shop, tmp_path):
    """--init-from a folder with colour heads: training starts from the network part of its heads (the colour
    features join again at the refit), and the same split is kept."""
    cfg = AdaptConfig(**{**TINY, "max_steps": 4})
    first = adapt_catalog(shapes_shop, tmp_path / "a", cfg, workspace=tmp_path / "ws", progress=False)
    assert first.model.colour_heads == ("colour_group_name",)
    j = first.model.head_names.index("colour_group_name")
    w_first = first.model.heads[j].weight.detach().clone()
    again = adapt_catalog(
        shapes_shop,
        tmp_path / "b",
        AdaptConfig(**{**TINY, "max_steps": 4, "init_from": str(tmp_path / "a")}),
        workspace=tmp_path / "ws",
        progress=False,
    )
    assert again.model.colour_heads == ("colour_group_name",)
    assert again.model.heads[j].weight.shape == w_first.shape
    assert again.metrics["continued_from"] == str(tmp_path / "a")


def test_onnx_function_matches_torch_and_refuses_a_graph_that_differs():
    """`onnx_function` runs a module method through ONNX Runtime, checked against torch; a function whose export
    does not reproduce it (fresh random numbers each call) is refused (None): the caller runs torch."""
    pytest.importorskip("onnxruntime")
    from fashionrec.features import onnx_function

    bb = create_backbone("efficientnet_lite0", input_size=64)
    x = torch.randn(5, 3, 64, 64)
    run = onnx_function(bb, lambda t: bb.forward_lower(t, 4), x)
    assert run is not None
    with torch.no_grad():
        ref = bb.forward_lower(x, 4).numpy()
    (got,) = run(x.numpy())
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    # two outputs, another batch size than the example's
    lin = torch.nn.Linear(4, 3)
    run2 = onnx_function(lin, lambda t: (lin(t), lin(t).sum(1)), torch.randn(2, 4))
    xs = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    a, b = run2(xs)
    with torch.no_grad():
        ra = lin(torch.from_numpy(xs)).numpy()
    assert a.shape == (7, 3) and np.allclose(a, ra, atol=1e-5) and np.allclose(b, ra.sum(1), atol=1e-5)
    assert onnx_function(lin, lambda t: lin(t) + torch.rand_like(t[:, :3]), torch.randn(2, 4)) is None


@pytest.mark.parametrize("onnx", [True, False])
def test_cached_lower_maps_and_upper_pass_agree_across_engines(shapes_shop, tmp_path, onnx):
    """The frozen lower part and the evaluation's upper pass give the same arrays through ONNX Runtime and torch
    (within float16 rounding), the cache keys differ by engine, and the model folder's features do not depend on
    it."""
    if onnx:
        pytest.importorskip("onnxruntime")
    from fashionrec.training.adapt import head_features, lower_maps, trunk_prelogits, view_names

    bb = create_backbone("efficientnet_lite0", input_size=64)
    pre = Preprocess.for_backbone(bb)
    paths = cat_paths(shapes_shop)[:10]
    views = view_names(True, True)
    got, ok = lower_maps(bb, paths, pre, 4, tmp_path / "ws", views=views, progress=False, onnx=onnx)
    ref, _ = lower_maps(bb, paths, pre, 4, tmp_path / "ws", views=views, progress=False, onnx=not onnx)
    assert ok.all() and len(list((tmp_path / "ws" / "adapt").glob("lower-*.npz"))) == 2  # one cache per engine
    for v in views:
        a, b = got[v].astype(np.float32), ref[v].astype(np.float32)
        assert np.abs(a - b).max() <= 2e-3 * np.abs(b).max()
    V = [got[v].astype(np.float32) for v in views]
    p1 = trunk_prelogits(bb, V, 4, batch_size=4, onnx=onnx)
    p2 = trunk_prelogits(bb, V, 4, batch_size=4, onnx=not onnx)
    assert all(np.allclose(a, b, atol=1e-3) for a, b in zip(p1, p2))
    from fashionrec.backbones.adapted import AdaptedBackbone

    model = AdaptedModel(AdaptedBackbone(bb, 8, weights_id="t"), {"c": ["a", "b"]}, head_taps=(3, 4, 5))
    f1 = head_features(model, V, 4, batch_size=3, onnx=onnx)
    f2 = head_features(model, V, 4, batch_size=3, onnx=not onnx)
    for (e1, x1), (e2, x2) in zip(f1, f2):
        assert e1.shape == (10, 8) and x1.shape[0] == 10
        assert np.allclose(e1, e2, atol=1e-4) and np.allclose(x1, x2, atol=1e-3 * np.abs(x2).max())


def test_embedding_views_option_sets_the_folder_embedding(shapes_shop, tmp_path, capsys):
    out = tmp_path / "one"
    cfg = AdaptConfig(**{**TINY, "embedding_tta": "none"})
    res = adapt_catalog(shapes_shop, out, cfg, workspace=tmp_path / "ws", progress=False)
    conf = json.loads((out / "fashionrec_model.json").read_text())
    assert conf["embedding_tta"] == "none"  # trained on all four cached views, embeds the photo alone
    bb = create_backbone(str(out))
    assert not bb.flip_tta and not bb.gray_tta
    m = res.metrics
    assert m["retrieval_heldout"]["adapted"] == m["retrieval_heldout_views"]["none"]
    assert "imagenet+none" not in m["retrieval_heldout"]  # the ImageNet baseline with the same (one) view
    # the cached features are the folder's one-view embedding
    paths = dict(zip([p.stem for p in cat_paths(shapes_shop)], cat_paths(shapes_shop)))
    cached = embed_image_files(bb, paths, cache=FeatureCache(tmp_path / "ws"), progress=False)
    fresh = embed_image_files(bb, paths, progress=False)
    assert np.allclose(cached.features, fresh.features, atol=1e-3)
    with pytest.raises(ValueError, match="drop --no-flips"):
        AdaptConfig(flips=False, embedding_tta="flip+gray")
    with pytest.raises(SystemExit):
        main(["adapt", "--data", str(shapes_shop), "--out", str(tmp_path / "m"), "--embedding-views", "x"])
    assert "invalid choice: 'x'" in capsys.readouterr().err
