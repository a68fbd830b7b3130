from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HM_DIR = Path(os.environ.get("FASHIONREC_HM_DIR", ROOT.parent / "shared" / "data" / "hm"))
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path, monkeypatch):
    # Never touch the user's cache from tests.
    monkeypatch.setenv("FASHIONREC_HOME", str(tmp_path / "ws"))


@pytest.fixture
def hm_dir() -> Path:
    if not (HM_DIR / "transactions.csv").exists():
        pytest.skip(f"H&M sample not found at {HM_DIR} (set FASHIONREC_HM_DIR); it lives in ../shared/data/hm")
    return HM_DIR


@pytest.fixture
def fmnist_dir() -> Path:
    if not (FMNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists() and not (FMNIST_DIR / "t10k-labels-idx1-ubyte").exists():
        pytest.skip(f"Fashion-MNIST not found in {FMNIST_DIR}: apt-get install dataset-fashion-mnist")
    return FMNIST_DIR


def make_image(path: Path, color=(200, 30, 30), size=(24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def tiny_hm(tmp_path) -> Path:
    """A 10-line H&M-layout folder with known answers: two colour families, one corrupt image, Kaggle subfolders."""
    d = tmp_path / "hm"
    colors = {
        "0100000001": (220, 20, 20),
        "0100000002": (200, 40, 30),
        "0100000003": (230, 10, 40),
        "0200000001": (20, 20, 220),
        "0200000002": (30, 40, 200),
        "0200000003": (10, 30, 230),
        "0300000001": (215, 25, 25),
        "0400000001": (25, 25, 215),
    }
    for aid, c in colors.items():
        make_image(d / "images" / aid[:3] / f"{aid}.jpg", c)
    (d / "images" / "050" / "0500000001.jpg").parent.mkdir(parents=True)
    (d / "images" / "050" / "0500000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (d / "articles.csv").write_text(
        "article_id,product_group_name,colour_group_name,prod_name\n"
        "0100000001,Garment Upper body,Red,red top\n0100000002,Garment Upper body,Red,red shirt\n"
        "0100000003,Garment Upper body,Red,red blouse\n0200000001,Shoes,Blue,blue shoe\n"
        "0200000002,Shoes,Blue,blue sneaker\n0200000003,Shoes,Blue,blue boot\n"
    )
    (d / "customers.csv").write_text("customer_id,age\nu1,30\nu2,40\nu3,25\n")
    (d / "transactions.csv").write_text(
        "t_dat,customer_id,article_id,price,sales_channel_id\n"
        "2020-01-01,u1,0100000001,0.01,2\n2020-01-02,u1,0100000002,0.01,2\n2020-01-02,u1,0100000002,0.01,2\n"
        "2020-01-01,u2,0200000001,0.02,1\n2020-01-03,u2,0200000002,0.02,1\n2020-01-05,u1,0100000003,0.01,2\n"
    )
    return d
