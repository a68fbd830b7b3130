import gzip
import struct

import numpy as np
import pytest

from conftest import make_image
from fashionrec.data.catalog import load_catalog, load_image_folder
from fashionrec.data.fashion_mnist import load_fashion_mnist, read_idx, sample_per_class
from fashionrec.data.images import ImageDecodeError, decode_image, load_image
from fashionrec.data.interactions import load_hm_transactions, load_transactions
from fashionrec.errors import DataError


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(DataError, match=r"short.gz.*10 bytes"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_folder(tmp_path, fmnist_dir):
    d = load_fashion_mnist(fmnist_dir)
    assert d.x_train.shape == (60000, 28, 28) and d.x_test.shape == (10000, 28, 28)
    assert np.bincount(d.y_test).tolist() == [1000] * 10
    with pytest.raises(DataError, match="missing train-images"):
        load_fashion_mnist(tmp_path)


def test_sample_per_class_is_balanced_and_seeded():
    y = np.repeat(np.arange(3), 20)
    a = sample_per_class(y, 5, seed=1)
    assert np.bincount(y[a]).tolist() == [5, 5, 5]
    assert np.array_equal(a, sample_per_class(y, 5, seed=1))
    assert not np.array_equal(a, sample_per_class(y, 5, seed=2))


def test_bad_images_are_named(tmp_path):
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"", source="x.jpg")
    good = make_image(tmp_path / "ok.jpg")
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_image(b"this is text", source="t.png")
    assert load_image(good).size == (24, 32)


def test_decompression_bomb_refused(tmp_path):
    from PIL import Image

    big = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(big)  # 81 Mpx of zeros: tiny file, huge image
    with pytest.raises(ImageDecodeError, match="pixel"):
        load_image(big)


def test_hm_catalog_kaggle_subfolders(tiny_hm):
    cat = load_catalog(tiny_hm)
    assert "0100000001" in cat.item_ids  # leading zero kept, found in 3-digit subfolder
    assert cat.metadata.loc["0200000001", "product_group_name"] == "Shoes"
    assert "0300000001" in cat.item_ids and "0300000001" not in cat.metadata.index  # image without a row
    with pytest.raises(DataError, match="no column 'nope'"):
        cat.label_column("nope")


def test_image_folder_with_labels(tmp_path):
    make_image(tmp_path / "imgs" / "a.png")
    make_image(tmp_path / "imgs" / "b.png")
    (tmp_path / "labels.csv").write_text("filename,category\na.png,top\nb.png,shoe\n")
    cat = load_image_folder(tmp_path / "imgs", tmp_path / "labels.csv")
    assert cat.item_ids == ["a", "b"] and cat.metadata.loc["b", "category"] == "shoe"
    (tmp_path / "nolabel.csv").write_text("what,category\na,top\n")
    with pytest.raises(DataError, match="no id column"):
        load_image_folder(tmp_path / "imgs", tmp_path / "nolabel.csv")


def test_transactions_quantity_and_ids(tiny_hm):
    inter = load_hm_transactions(tiny_hm)
    assert inter.events["item"].iloc[0].startswith("0")
    m = inter.to_matrix(["u1", "u2"], ["0100000001", "0100000002", "0200000001"])
    assert m[0, 1] == 2.0  # bought twice = quantity 2
    assert m[1, 2] == 1.0


def test_transactions_bad_rows(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("t_dat,customer_id,article_id\n2020-01-01,u1,01\n2020-13-45,u2,02\n2020-01-03,u3,03\n")
    with pytest.raises(DataError, match=r"t.csv, row 3, field 'timestamp'"):
        load_transactions(p)
    inter = load_transactions(p, on_bad="skip")
    assert len(inter.events) == 2
    good_dates = tmp_path / "t2.csv"
    good_dates.write_text("t_dat,customer_id,article_id\n2020-01-01,u1,01\n2020-01-02,u2,02\n2020-01-03,u3,03\n")
    with pytest.raises(DataError, match=r"row 4, field 'item'"):
        load_transactions(good_dates, known_items={"01", "02"})
    q = tmp_path / "m.csv"
    q.write_text("date,user_id\n2020-01-01,u1\n")
    with pytest.raises(DataError, match="unrecognised event log"):
        load_transactions(q)


def test_generic_event_log_weights_and_parquet(tmp_path):
    import pandas as pd

    df = pd.DataFrame(
        {
            "user": ["a", "a", "b"],
            "item": ["x", "y", "x"],
            "timestamp": ["2021-01-01", "2021-01-02", "2021-01-03"],
            "event": ["view", "purchase", "cart"],
        }
    )
    df.to_parquet(tmp_path / "ev.parquet")
    inter = load_transactions(tmp_path / "ev.parquet")
    m = inter.to_matrix(["a", "b"], ["x", "y"])
    assert m[0, 0] == 1.0 and m[0, 1] == 5.0 and m[1, 0] == 3.0
    df.loc[1, "event"] = "teleport"
    df.to_csv(tmp_path / "ev.csv", index=False)
    with pytest.raises(DataError, match="row 3, field 'event'"):
        load_transactions(tmp_path / "ev.csv")


def _photo(w=60, h=90):
    """A non-symmetric test photo: a red block top-left on light grey (rotation is visible)."""
    from PIL import Image

    img = Image.new("RGB", (w, h), (240, 240, 240))
    img.paste(Image.new("RGB", (w // 3, h // 4), (220, 20, 20)), (2, 2))
    return img


def test_exif_orientation_is_applied():
    """A phone photo saved sideways with EXIF orientation 6 ('rotate 90 CW to view') decodes upright."""
    import io

    from PIL import Image

    upright = _photo()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    got = decode_image(buf.getvalue())
    assert got.size == upright.size
    diff = np.abs(np.asarray(got, dtype=int) - np.asarray(upright, dtype=int)).mean()
    assert diff < 5, diff


def test_16_bit_png_keeps_its_tones():
    import io

    from PIL import Image

    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)  # black -> white, 16 bits
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    got = np.asarray(decode_image(buf.getvalue()), dtype=float)
    assert got.shape == (32, 64, 3)
    expect = ramp.astype(float) / 257
    assert np.abs(got[..., 0] - expect).max() <= 1.0  # not a white image: the ramp survives
    assert got.mean() == pytest.approx(127.5, abs=2)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    import io

    from PIL import Image

    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent black background
    img.paste(Image.new("RGBA", (20, 20), (200, 30, 30, 255)), (10, 10))
    if mode == "LA":
        img = img.convert("LA")
    buf = io.BytesIO()
    if mode == "P":  # a palette image whose index 0 (black) is transparent: GIF-style
        pal = Image.new("P", (40, 40), 0)
        pal.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
        pal.paste(1, (10, 10, 30, 30))
        pal.save(buf, "PNG", transparency=0)
    else:
        img.save(buf, "PNG")
    got = np.asarray(decode_image(buf.getvalue()))
    assert got[0, 0].tolist() == [255, 255, 255]  # background: white, as shops shoot
    assert got[20, 20].tolist() != [255, 255, 255]  # the product stays
    if mode == "RGBA":
        assert got[20, 20].tolist() == [200, 30, 30]


def test_large_jpeg_decodes_at_draft_scale_and_pixel_cap_comes_first():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 200, 10)).save(buf, "JPEG")
    small = decode_image(buf.getvalue(), draft_size=256)
    assert 256 <= min(small.size) < 1500  # decoded by libjpeg at 1/8 scale, not 12 Mpx then resized
    with pytest.raises(ImageDecodeError, match="4000x3000 pixels, over the 1,000,000-pixel limit"):
        decode_image(buf.getvalue(), max_pixels=1_000_000)


def test_article_ids_without_leading_zero_are_restored_with_a_warning(tiny_hm, caplog):
    """A spreadsheet round-trip drops the leading zero: those rows used to vanish silently."""
    import logging

    tx = tiny_hm / "transactions.csv"
    lines = tx.read_text().splitlines()
    lines[1] = lines[1].replace(",0100000001,", ",100000001,")  # lost its zero
    lines[4] = lines[4].replace(",0200000001,", ",200000001.0,")  # and written as a float
    tx.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        inter = load_hm_transactions(tiny_hm)
    assert len(inter.events) == 6
    assert set(inter.events["item"]) <= {"0100000001", "0100000002", "0100000003", "0200000001", "0200000002"}
    msg = caplog.text
    assert "transactions.csv" in msg and "2 article_id values in 2 rows had lost their leading zeros" in msg


def test_articles_table_without_leading_zeros_matches_its_images(tiny_hm, caplog):
    import logging

    art = tiny_hm / "articles.csv"
    art.write_text(art.read_text().replace("\n0", "\n"))  # every id lost its zero
    with caplog.at_level(logging.WARNING):
        cat = load_catalog(tiny_hm)
    assert cat.metadata.loc["0200000001", "product_group_name"] == "Shoes"
    assert "6 article_id values in 6 rows had lost their leading zeros" in caplog.text


def test_unknown_article_ids_are_counted(tiny_hm, caplog):
    import logging

    tx = tiny_hm / "transactions.csv"
    tx.write_text(tx.read_text() + "2020-01-06,u3,0999999999,0.01,2\n2020-01-07,u3,0999999999,0.01,2\n")
    with caplog.at_level(logging.WARNING):
        inter = load_hm_transactions(tiny_hm)
    assert len(inter.events) == 8  # kept in the log, reported
    assert "2 rows (1 distinct item ids, e.g. '0999999999') name items that are not in the catalog" in caplog.text


@pytest.mark.parametrize(
    "body,match",
    [
        ("", r"transactions.csv: no rows \(only a header\)"),
        (
            "2020-13-01,u1,0100000001,0.01,2\nnot a date,u2,0200000001,0.01,2\n",
            r"transactions.csv: no valid rows left: all 2 rows were skipped \(2 with missing or unparseable date",
        ),
        (
            "2020-01-01,u1,0777777777,0.01,2\n2020-01-02,u2,abc,0.01,2\n",
            r"transactions.csv, field 'item': none of the 2 rows names an item of the catalog",
        ),
    ],
)
def test_nothing_valid_left_is_a_clear_error(tiny_hm, body, match):
    (tiny_hm / "transactions.csv").write_text("t_dat,customer_id,article_id,price,sales_channel_id\n" + body)
    with pytest.raises(DataError, match=match):
        load_hm_transactions(tiny_hm, on_bad="skip")


def test_batch_decoding_reads_large_jpegs_at_reduced_scale_and_small_ones_exactly(tmp_path, monkeypatch):
    """`Preprocess.load` (what embed, adapt, tag and predict decode with): a shop-size JPEG is decoded by libjpeg at
    a reduced scale that still covers the input size, close to the full decode; a photo near the input size decodes
    exactly as before; `decode_images_to_array` goes through it; the feature-cache key names the decoder."""
    from PIL import Image, ImageDraw

    import fashionrec.data.images as images_mod
    from fashionrec.features import DECODE_VERSION, Preprocess, decode_images_to_array

    big = Image.new("RGB", (1200, 1800), (235, 235, 235))
    ImageDraw.Draw(big).rectangle([300, 400, 900, 1500], fill=(40, 60, 160))
    big.save(tmp_path / "big.jpg", quality=92)
    big.resize((128, 192)).save(tmp_path / "small.jpg", quality=92)
    pre = Preprocess(160, (0.5,) * 3, (0.5,) * 3)
    sizes = []
    real = images_mod.decode_image

    def spy(data, **kw):
        img = real(data, **kw)
        sizes.append(img.size)
        return img

    monkeypatch.setattr(images_mod, "decode_image", spy)
    fast = pre.load(tmp_path / "big.jpg")
    assert 160 <= min(sizes[-1]) and max(sizes[-1]) <= 1800 // 4  # 1/4 scale: 300x450, not 1200x1800
    full = pre.pil_to_array(real((tmp_path / "big.jpg").read_bytes()))
    assert fast.shape == full.shape == (160, 160, 3)
    assert np.abs(fast.astype(int) - full).mean() < 2.0
    small = pre.load(tmp_path / "small.jpg")
    assert sizes[-1] == (128, 192)
    assert np.array_equal(small, pre.pil_to_array(real((tmp_path / "small.jpg").read_bytes())))
    ids, arr, failures = decode_images_to_array({"big": tmp_path / "big.jpg"}, pre, progress=False, num_workers=0)
    assert ids == ["big"] and not failures and np.array_equal(arr[0], fast)
    assert f'"decode": {DECODE_VERSION}' in pre.key()
