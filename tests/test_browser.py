"""The web page, end to end, in a real headless Chromium (Debian's) driven by Playwright.

On a slice of the real H&M sample when ../shared/data/hm is there (so the screenshot shows real product photos),
else on a synthetic shop. The screenshot is saved as test-artifacts/page.png.
"""

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ARTIFACTS, HM_DIR
from fashionrec.serving.app import create_app
from fashionrec.serving.build import build_state
from serving_helpers import make_shop, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser


def hm_slice(dst: Path, n_customers: int = 30, n_extra_items: int = 100) -> Path:
    """A small real H&M-layout folder: the most active customers, their purchases, some other articles (copies:
    the server serves only image files that lie inside the data folder, and a symlink's target lies outside)."""
    tx = pd.read_csv(HM_DIR / "transactions.csv", dtype={"article_id": str})
    top = tx["customer_id"].value_counts().index[:n_customers]
    tx = tx[tx["customer_id"].isin(top)]
    arts = pd.read_csv(HM_DIR / "articles.csv", dtype={"article_id": str})
    extra = arts["article_id"].iloc[:n_extra_items]
    ids = set(tx["article_id"]) | set(extra)
    (dst / "images").mkdir(parents=True)
    for i in ids:
        src = HM_DIR / "images" / f"{i}.jpg"
        if src.exists():
            shutil.copyfile(src, dst / "images" / f"{i}.jpg")
    tx.to_csv(dst / "transactions.csv", index=False)
    arts[arts["article_id"].isin(ids)].to_csv(dst / "articles.csv", index=False)
    pd.DataFrame({"customer_id": top}).to_csv(dst / "customers.csv", index=False)
    return dst


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    if (HM_DIR / "transactions.csv").exists():
        data, real = hm_slice(root / "hm"), True
    else:
        data, real = make_shop(root / "hm")[0], False
    state = build_state(data, workspace=root / "ws", progress=False)
    with running_server(create_app(state)) as url:
        yield url, real, data


def test_page_shows_item_customer_and_upload(page_server):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, real, data = page_server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # the Content-Security-Policy forbids inline script and style: anything it blocks shows up here
        page.on(
            "console",
            lambda m: errors.append(m.text) if m.type == "error" or "Content Security Policy" in m.text else None,
        )
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        resp = page.goto(url + "/")
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        page.wait_for_selector("body[data-ready='1']", timeout=20000)
        # the page opens on a customer: their purchases and recommendations, before anything is clicked
        page.wait_for_selector("#recs .card img", timeout=20000)
        assert page.locator("#history .card").count() >= 1
        # a customer: history and recommendations with "because you bought"
        page.click("#user-go")
        page.wait_for_selector("#recs .card img", timeout=20000)
        assert page.locator("#recs .card").count() == 12
        assert page.locator("#history .card").count() >= 1
        assert page.locator("#recs .because").first.inner_text().startswith(("because you bought", "popular now"))
        assert "because you bought" in page.locator("#recs").inner_text()
        if real:  # the slice holds catalog articles nobody bought: "new in for you" shows them
            page.wait_for_selector("#new-in .card img", timeout=20000)
            assert 1 <= page.locator("#new-in .card").count() <= 12
        # an item: its image and a grid of similar items
        first_id = page.locator("#history .card").first.get_attribute("data-id")
        page.fill("#item-q", first_id)
        page.click("#item-search")
        page.wait_for_selector("#similar .card img", timeout=20000)
        assert page.locator("#similar .card").count() == 12
        # upload a photo: tags and similar items
        photo = next((data / "images").iterdir())
        page.set_input_files("#upload-file", str(photo))
        page.click("#upload-go")
        page.wait_for_selector("#upload-similar .card img", timeout=30000)
        assert page.locator("#tags div").count() >= 1
        # every image on the page really loaded (naturalWidth > 0): real photos, not broken links
        # Poll from Python: wait_for_function compiles its predicate with eval inside the page, which the page's
        # CSP (no 'unsafe-eval') rightly refuses whenever the first check is not already true.
        deadline = time.time() + 20
        while not page.evaluate("() => Array.from(document.images).every(i => i.complete)"):
            assert time.time() < deadline, "images did not finish loading in 20 s"
            page.wait_for_timeout(100)
        broken = page.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
        assert not broken, broken
        widths = page.evaluate("Array.from(document.querySelectorAll('#recs img')).map(i => i.naturalWidth)")
        if real:
            assert min(widths) >= 100  # H&M sample photos are 128x192
        page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
        assert not errors, errors
        browser.close()
    assert (ARTIFACTS / "page.png").stat().st_size > 50_000
