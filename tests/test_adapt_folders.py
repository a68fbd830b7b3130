"""`fashionrec adapt` on any labelled folder: images/ + labels.csv with label columns and an optional group column;
clear errors naming the file and the column or row; the epoch cap; --device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fashionrec.cli import main
from fashionrec.errors import DataError, FashionrecError
from fashionrec.training.adapt import AdaptConfig, adapt_catalog
from fashionrec.training.adapt.loop import _batches, draw_views

SHAPES = {
    "box": lambda d, o: d.rectangle([6 + o, 6, 26 - o, 40], fill=(0, 0, 0)),
    "disc": lambda d, o: d.ellipse([4, 8 + o, 28, 36], fill=(0, 0, 0)),
}
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}

TINY = dict(
    backbone="tiny_cnn",
    input_size=32,
    holdout=0.3,
    train_blocks=2,
    max_steps=8,
    products_per_batch=4,
    labelled_per_batch=8,
    memory_size=0,
    colour_booster=False,
    onnx=False,
)


def _folder(tmp_path, group: bool = True, extra_rows: str = ""):
    """12 photos: 2 shapes x 2 colours x 3 photos; labels shape + colour; group = shape+colour (a product)."""
    d = tmp_path / "folder"
    (d / "images").mkdir(parents=True)
    rows = ["item_id,shape,colour" + (",style" if group else "")]
    i = 0
    for s, draw in SHAPES.items():
        for c, rgb in COLOURS.items():
            for j in range(3):
                im = Image.new("RGB", (32, 48), rgb)
                draw(ImageDraw.Draw(im), j)
                im.save(d / "images" / f"p{i:02d}.jpg")
                rows.append(f"p{i:02d},{s},{c}" + (f",{s}-{c}" if group else ""))
                i += 1
    (d / "labels.csv").write_text("\n".join(rows) + "\n" + extra_rows)
    return d


def test_labelled_folder_with_a_group_column(tmp_path):
    d = _folder(tmp_path)
    cfg = AdaptConfig(**TINY, label_columns=("shape", "colour"), group_column="style")
    res = adapt_catalog(d, tmp_path / "m", cfg, workspace=tmp_path / "ws", progress=False)
    conf = json.loads((tmp_path / "m" / "fashionrec_model.json").read_text())
    assert conf["heads"] == {"shape": ["box", "disc"], "colour": ["blue", "red"]}
    assert res.metrics["positives"] == "products"
    held = conf["heldout_products"]
    assert held and all(h.startswith("g:") for h in held)  # whole products held out
    assert res.metrics["retrieval_heldout"]["adapted"]["recall@10"] is not None


def test_labelled_folder_without_groups_uses_two_views_of_a_photo(tmp_path):
    """No group column: every photo its own product; `auto` label columns are every column but the id; the metric
    loss pairs two different views of one photo; recall is not measured (no other photo of the same product)."""
    d = _folder(tmp_path, group=False)
    res = adapt_catalog(d, tmp_path / "m", AdaptConfig(**TINY), workspace=tmp_path / "ws", progress=False)
    assert set(res.model.head_names) == {"shape", "colour"}
    assert res.metrics["positives"] == "views"
    r = res.metrics["retrieval_heldout"]["adapted"]
    assert r["recall@10"] is None and r["type_precision@10"] is not None
    assert r["n_queries"] == res.metrics["n_heldout_photos"]
    assert res.metrics["history"][1]["loss"]["metric"] > 0


def test_pairs_of_one_photo_are_shown_in_two_views():
    rng = np.random.default_rng(0)
    multi = {str(i): np.array([i]) for i in range(10)}
    cfg = AdaptConfig(products_per_batch=5, labelled_per_batch=3, memory_size=0)
    rows = next(_batches(rng, multi, np.arange(10), cfg))
    assert len(rows) == 13 and all(rows[2 * j] == rows[2 * j + 1] for j in range(5))
    for _ in range(20):
        view = draw_views(rng, rows, 4, 5, "views")
        assert all(view[2 * j] != view[2 * j + 1] for j in range(5)) and view.max() < 4


@pytest.mark.parametrize(
    "change, match",
    [
        ({"label_columns": ("shape", "size")}, r"labels\.csv.*no label column 'size'"),
        ({"group_column": "sku"}, r"labels\.csv.*no group column 'sku'"),
    ],
)
def test_a_missing_column_is_named_with_its_file(tmp_path, change, match):
    d = _folder(tmp_path)
    with pytest.raises(DataError, match=match):
        adapt_catalog(d, tmp_path / "m", AdaptConfig(**{**TINY, **change}), workspace=tmp_path / "ws", progress=False)


def test_a_labelled_id_without_a_photo_is_named_with_its_row(tmp_path, capsys):
    d = _folder(tmp_path, extra_rows="p99,box,red,box-red\n")
    with pytest.raises(DataError, match=r"labels\.csv.*row 14.*'p99' has no image.*1 of 13"):
        adapt_catalog(d, tmp_path / "m", AdaptConfig(**TINY), workspace=tmp_path / "ws", progress=False)
    args = ["adapt", "--data", str(d), "--out", str(tmp_path / "m"), "--backbone", "tiny_cnn", "--input-size", "32"]
    assert main(args + ["--label-columns", "shape"]) == 2
    assert "p99" in capsys.readouterr().err


def test_no_groups_and_no_views_is_refused(tmp_path):
    d = _folder(tmp_path, group=False)
    cfg = AdaptConfig(**{**TINY, "flips": False, "gray": False})
    with pytest.raises(FashionrecError, match="two views of one photo"):
        adapt_catalog(d, tmp_path / "m", cfg, workspace=tmp_path / "ws", progress=False)


def test_max_epochs_ends_each_stage(tmp_path):
    """Without max_steps and with time to spare, each stage stops after max_epochs passes over the training photos
    (one batch past the cap at most)."""
    d = _folder(tmp_path)
    cfg = AdaptConfig(
        **{**TINY, "max_steps": None, "max_minutes": 30, "max_epochs": 3, "refit_heads": False}, group_column="style"
    )
    res = adapt_catalog(d, tmp_path / "m", cfg, workspace=tmp_path / "ws", progress=False)
    n_train = res.metrics["n_photos"] - res.metrics["n_heldout_photos"]
    batch = 2 * 3 + n_train  # 3 training products of 3 photos (x 2) + every labelled training photo
    for stage in res.metrics["history"]:
        assert 3 * n_train <= stage["photos"] < 3 * n_train + batch
    with pytest.raises(ValueError, match="max_epochs"):
        AdaptConfig(max_epochs=0)


def test_device_cpu_and_a_missing_gpu(tmp_path, capsys):
    d = _folder(tmp_path)
    cfg = AdaptConfig(**TINY, group_column="style", device="cpu")
    res = adapt_catalog(d, tmp_path / "m", cfg, workspace=tmp_path / "ws", progress=False)
    assert res.metrics["device"] == "cpu" and next(res.model.parameters()).device.type == "cpu"
    if torch.cuda.is_available():
        return
    with pytest.raises(FashionrecError, match="--device cuda"):
        adapt_catalog(d, tmp_path / "m2", AdaptConfig(**TINY, device="cuda"), workspace=tmp_path / "ws", progress=False)
    args = ["adapt", "--data", str(d), "--out", str(tmp_path / "m3"), "--device", "cuda"]
    assert main(args) == 2 and "--device cuda" in capsys.readouterr().err
