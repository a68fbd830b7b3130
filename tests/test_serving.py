"""REST API against a real uvicorn server: happy paths, hostile input (never a 500), persistence of new arrivals."""

import io

import httpx
import pytest
from PIL import Image

from fashionrec.serving.app import create_app
from fashionrec.serving.build import build_state
from fashionrec.serving.middleware import MAX_UPLOAD_BYTES
from serving_helpers import AUTH, TOKEN, make_shop, running_server


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop") / "hm")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def server(shop, workspace):
    root, ids, users = shop
    state = build_state(root, workspace=workspace, progress=False)
    with running_server(create_app(state, write_token=TOKEN)) as url:
        yield url, ids, users


def _jpeg(color=(210, 20, 30)) -> bytes:
    img = Image.new("RGB", (64, 96), (245, 245, 245))
    img.paste(Image.new("RGB", (40, 50), color), (12, 10))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def test_health_items_similar(server):
    url, ids, users = server
    h = httpx.get(f"{url}/health").json()
    assert h["status"] == "ok" and h["items"] == 30 and "hybrid" in h["models"]
    item = httpx.get(f"{url}/items/{ids[0]}").json()
    assert item["category"] == "Garment Upper body" and item["image_url"] == f"/images/{ids[0]}"
    sims = httpx.get(f"{url}/items/{ids[0]}/similar", params={"k": 5}).json()
    assert len(sims) == 5 and ids[0] not in [s["id"] for s in sims]
    assert all(s["category"] == "Garment Upper body" for s in sims)  # red tops look like red tops
    only_shoes = httpx.get(f"{url}/items/{ids[0]}/similar", params={"k": 5, "category": "Shoes"}).json()
    assert only_shoes and all(s["category"] == "Shoes" for s in only_shoes)
    img = httpx.get(f"{url}/images/{ids[0]}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"


def test_user_recommendations_with_explanations(server):
    url, ids, users = server
    r = httpx.get(f"{url}/users/{users[0]}/recommendations", params={"k": 6}).json()
    assert r["model"] == "hybrid" and len(r["items"]) == 6
    assert sum(it["category"] == "Garment Upper body" for it in r["items"]) >= 5
    hist = {h["id"] for h in httpx.get(f"{url}/users/{users[0]}").json()["history"]}
    explained = [it for it in r["items"] if it["because"]]
    assert explained and all(set(it["because"]) <= hist for it in explained)
    r2 = httpx.get(f"{url}/users/{users[1]}/recommendations", params={"k": 4, "model": "visual"}).json()
    assert r2["model"] == "visual" and all(it["category"] == "Shoes" for it in r2["items"])


def test_history_at_query_time(server):
    url, ids, _ = server
    r = httpx.post(f"{url}/recommendations", json={"history": [ids[20], ids[21]], "k": 5, "exclude_bought": True})
    assert r.status_code == 200
    assert sum(it["category"] == "Shoes" for it in r.json()["items"]) >= 4


def test_history_at_query_time_restricted_to_items(server):
    """`items` in the body: only those are ranked (every one of them, by the model), unknown ids are a 422."""
    url, ids, _ = server
    only = [ids[1], ids[2], ids[22], ids[23], ids[24]]
    r = httpx.post(f"{url}/recommendations", json={"history": [ids[20], ids[21]], "k": 10, "items": only})
    assert r.status_code == 200, r.text
    got = [it["id"] for it in r.json()["items"]]
    assert set(got) == set(only)  # k above the list: all of them, nothing else
    r = httpx.post(
        f"{url}/recommendations", json={"history": [ids[20], ids[21]], "k": 3, "items": only, "model": "visual"}
    )
    assert {it["id"] for it in r.json()["items"]} == {ids[22], ids[23], ids[24]}  # a shoe buyer: the shoes first
    bad = httpx.post(f"{url}/recommendations", json={"history": [ids[20]], "items": [ids[1], "nope"]})
    assert bad.status_code == 422 and "nope" in bad.text


def test_new_in_for_a_customer(server):
    """GET /users/{id}/new-in ranks only items nobody has bought, for that customer; unknown customers are a 404."""
    url, ids, users = server
    r = httpx.get(f"{url}/users/{users[0]}/new-in", params={"k": 12})
    assert r.status_code == 200, r.text
    bought = set()
    for u in users:
        bought |= {h["id"] for h in httpx.get(f"{url}/users/{u}", params={"limit": 500}).json()["history"]}
    got = [it["id"] for it in r.json()["items"]]
    assert set(got) <= set(ids) - bought
    assert len(got) == min(12, len(set(ids) - bought))
    assert httpx.get(f"{url}/users/nobody/new-in").status_code == 404


def test_image_search_tags_and_similar(server):
    url, _, _ = server
    r = httpx.post(f"{url}/search/image", files={"file": ("top.jpg", _jpeg(), "image/jpeg")}, params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"]["product_group_name"][0]["label"] == "Garment Upper body"
    assert sum(s["category"] == "Garment Upper body" for s in body["similar"]) >= 4


@pytest.mark.parametrize(
    "method,path,kw,status,match",
    [
        ("get", "/items/nope", {}, 404, "unknown item"),
        ("get", "/items/nope/similar", {}, 404, "unknown item"),
        ("get", "/users/nobody/recommendations", {}, 404, "unknown customer"),
        ("get", "/users/cust000/recommendations?k=0", {}, 422, ""),
        ("get", "/users/cust000/recommendations?k=abc", {}, 422, ""),
        ("get", "/users/cust000/recommendations?model=magic", {}, 422, "unknown model"),
        ("post", "/recommendations", {"json": {"history": []}}, 422, ""),
        ("post", "/recommendations", {"json": {"history": ["nope"]}}, 422, "unknown item"),
        (
            "post",
            "/recommendations",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "",
        ),
        ("get", "/images/nope", {}, 404, "no image"),
    ],
)
def test_bad_requests_are_answered(server, method, path, kw, status, match):
    url, _, _ = server
    r = getattr(httpx, method)(f"{url}{path}", **kw)
    assert r.status_code == status, r.text
    assert match in r.text


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG")  # 81 Mpx: small file, huge image
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,data,ctype,status,match",
    [
        ("notes.txt", b"hello, not an image", "text/plain", 415, "not an image"),
        ("fake.jpg", b"hello, not an image", "image/jpeg", 415, "not an image"),
        ("empty.jpg", b"", "image/jpeg", 422, "empty file"),
        ("cut.jpg", None, "image/jpeg", 422, "cannot decode"),
        ("bomb.png", None, "image/png", 413, "pixel"),
        ("huge.jpg", b"\xff" * (MAX_UPLOAD_BYTES + 10), "image/jpeg", 413, "limit"),
    ],
)
def test_hostile_uploads(server, name, data, ctype, status, match):
    url, _, _ = server
    if name == "cut.jpg":
        full = _jpeg()
        data = full[: len(full) // 2]
    if name == "bomb.png":
        data = _bomb()
    for path in ("/search/image", "/items"):
        extra = {"data": {"id": "x1"}, "headers": AUTH} if path == "/items" else {}
        r = httpx.post(f"{url}{path}", files={"file": (name, data, ctype)}, **extra, timeout=30)
        assert r.status_code == status, (path, r.text)
        assert match in r.json()["detail"]


def test_new_arrival_recommendable_at_once_and_after_restart(shop, workspace, server):
    url, ids, users = server
    r = httpx.post(
        f"{url}/items",
        files={"file": ("new.jpg", _jpeg((230, 10, 20)), "image/jpeg")},
        data={"id": "0999999001", "name": "new red top", "category": "Garment Upper body"},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    assert httpx.get(f"{url}/items/0999999001").json()["name"] == "new red top"
    sims = [s["id"] for s in httpx.get(f"{url}/items/{ids[0]}/similar", params={"k": 15}).json()]
    assert "0999999001" in sims
    recs = httpx.post(f"{url}/recommendations", json={"history": ids[:3], "k": 15, "model": "visual"}).json()
    assert "0999999001" in [i["id"] for i in recs["items"]]
    # nobody has bought it: it is "new in" for a customer of red tops, first among what nobody bought
    new_in = httpx.get(f"{url}/users/{users[0]}/new-in", params={"k": 3, "model": "visual"}).json()["items"]
    assert new_in and new_in[0]["id"] == "0999999001"
    assert (
        httpx.post(
            f"{url}/items", files={"file": ("new.jpg", _jpeg(), "image/jpeg")}, data={"id": "0999999001"}, headers=AUTH
        ).status_code
        == 409
    )
    # restart: a new state from the same workspace still knows the arrival
    state2 = build_state(shop[0], workspace=workspace, progress=False)
    with running_server(create_app(state2, write_token=TOKEN)) as url2:
        assert httpx.get(f"{url2}/items/0999999001").status_code == 200
        assert httpx.get(f"{url2}/images/0999999001").status_code == 200
        sims2 = [s["id"] for s in httpx.get(f"{url2}/items/{ids[0]}/similar", params={"k": 15}).json()]
        assert "0999999001" in sims2


def test_openapi_docs(server):
    url, _, _ = server
    spec = httpx.get(f"{url}/openapi.json").json()
    for p in [
        "/health",
        "/items/{item_id}",
        "/items/{item_id}/similar",
        "/users/{user_id}/recommendations",
        "/recommendations",
        "/search/image",
        "/items",
    ]:
        assert p in spec["paths"]


# ----------------------------------------------------------------------------- warm start, artifact formats
def test_warm_start_loads_without_refitting(shop, workspace, server, monkeypatch):
    """The module's server built the artifacts; a restart must only load them: every fitting step raises here."""
    from sklearn.linear_model import LogisticRegression

    import fashionrec.serving.build as st
    import fashionrec.tagging as tagging
    import fashionrec.workflows.shop as pipeline
    from fashionrec.serving.tables import Precomputed

    def refit(*a, **k):
        raise AssertionError("a warm start refitted something")

    for obj, name in [
        (st, "_build_artifacts"),
        (st, "_train_taggers"),
        (tagging, "fit_taggers"),
        (pipeline, "load_shop"),
        (pipeline, "fit_recommender"),
        (LogisticRegression, "fit"),
    ]:
        monkeypatch.setattr(obj, name, refit)
    monkeypatch.setattr(Precomputed, "build", classmethod(lambda cls, *a, **k: refit()))
    url, ids, users = server
    state = build_state(shop[0], workspace=workspace, progress=False)
    with running_server(create_app(state)) as url2:
        for path in [
            f"/users/{users[0]}/recommendations?k=10",
            f"/items/{ids[3]}/similar?k=8",
            f"/users/{users[1]}/recommendations?k=5&model=visual",
            f"/users/{users[2]}",
        ]:
            assert httpx.get(url2 + path).json() == httpx.get(url + path).json(), path
        r = httpx.post(f"{url2}/search/image", files={"file": ("top.jpg", _jpeg(), "image/jpeg")}, params={"k": 3})
        assert r.json()["tags"]["product_group_name"][0]["label"] == "Garment Upper body"


def test_tagger_coefficients_match_sklearn():
    """Taggers are kept as coefficients and applied in numpy: the same probabilities as the fitted pipeline."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fashionrec.tagging import Tagger

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    for n_classes in (2, 3):
        y = np.array(list("abc"[:n_classes]))[rng.integers(0, n_classes, 120)]
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(x, y)
        t = Tagger.from_pipeline("c", pipe)
        assert np.allclose(t.probabilities(x), pipe.predict_proba(x), atol=1e-9)
        assert t.predict(x[:1], top=1)[0]["label"] == pipe.predict(x[:1])[0]


def test_older_artifact_format_is_a_clear_error_then_rebuilt(tmp_path, monkeypatch):
    import json

    import fashionrec.serving.build as st
    from fashionrec.artifacts import ArtifactFormatError

    root, ids, users = make_shop(tmp_path / "hm", n_users=6)
    ws = tmp_path / "ws"
    first = build_state(root, workspace=ws, progress=False)
    art = ws / "serving" / first.fingerprint
    cfg = json.loads((art / "tables" / "config.json").read_text())
    cfg["format_version"] = 0  # what an older fashionrec wrote
    (art / "tables" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactFormatError, match="format version 0"):
        build_state(root, workspace=ws, progress=False, build=False)
    builds = []
    real = st._build_artifacts
    monkeypatch.setattr(st, "_build_artifacts", lambda *a, **k: (builds.append(1), real(*a, **k)))
    again = build_state(root, workspace=ws, progress=False)
    assert builds == [1] and again.precomputed["hybrid"].get(users[0], 5) == first.precomputed["hybrid"].get(
        users[0], 5
    )
    # a model file from before the data format (a pickle) is refused by the loader and rebuilt, never unpickled
    (art / "models" / "visual.npz").write_bytes(b"\x80\x05" + b"\x00" * 64)
    with pytest.raises(ArtifactFormatError, match="old format|pickle|unreadable"):
        build_state(root, workspace=ws, progress=False, build=False)
    build_state(root, workspace=ws, progress=False)
    assert builds == [1, 1]


def test_typed_errors_map_to_status_codes():
    """One exception handler: each ServingError class is answered with its own status, whatever its message."""
    from fastapi.testclient import TestClient

    from fashionrec.serving import errors as E

    app = create_app(None)
    cases = {
        E.InvalidInput: 422,
        E.NotFound: 404,
        E.Conflict: 409,
        E.LimitReached: 409,
        E.StorageFull: 413,
        E.PayloadTooLarge: 413,
        E.UnsupportedMediaType: 415,
        E.WritesRefused: 403,
    }
    for cls in cases:

        def boom(cls=cls):
            raise cls("storage pixel limit not an image")  # words the old substring matching keyed on

        app.add_api_route(f"/boom/{cls.__name__}", boom)
    with TestClient(app) as c:
        for cls, status in cases.items():
            r = c.get(f"/boom/{cls.__name__}")
            assert (r.status_code, r.json()["detail"]) == (status, "storage pixel limit not an image"), cls


def test_two_workers_answer_like_one(shop, workspace, server):
    """`fashionrec serve --workers 2` (uvicorn workers loading memory-mapped artifacts) answers every
    read exactly as the in-process single-worker server does, and refuses writes with a reason."""
    import subprocess
    import sys
    import time

    from serving_helpers import free_port

    url, ids, users = server
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fashionrec.cli",
            "-q",
            "--workspace",
            str(workspace),
            "serve",
            "--data",
            str(shop[0]),
            "--port",
            str(port),
            "--workers",
            "2",
        ]
    )
    url2 = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None and time.time() < deadline, "the 2-worker server did not start"
            try:
                if httpx.get(f"{url2}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        paths = [
            f"/users/{users[0]}/recommendations?k=10",
            f"/users/{users[3]}/recommendations?k=60",
            f"/items/{ids[3]}/similar?k=8",
            f"/items/{ids[3]}/similar?k=8&category=Shoes",
            f"/items/{ids[20]}",
            f"/users/{users[1]}",
            "/customers?limit=5",
            "/search/items?q=red",
        ]
        for path in paths * 3:  # new connections: both workers answer some
            assert httpx.get(url2 + path, timeout=60).json() == httpx.get(url + path, timeout=60).json(), path
        body = {"history": ids[:3], "k": 7}
        assert (
            httpx.post(f"{url2}/recommendations", json=body, timeout=60).json()
            == httpx.post(f"{url}/recommendations", json=body, timeout=60).json()
        )
        r = httpx.post(
            f"{url2}/items",
            files={"file": ("a.jpg", _jpeg(), "image/jpeg")},
            data={"id": "0111"},
            headers=AUTH,
            timeout=60,
        )
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_precomputed_neighbours_are_the_index_answers(shop, workspace, server):
    """GET /items/{id}/similar without a category is a table lookup: the scores of a live search, each id the item
    with that similarity (the toy photos have exact ties, whose order a k=50 and a k=8 search may break apart)."""
    import numpy as np

    state = build_state(shop[0], workspace=workspace, progress=False)
    snap = state.snapshot
    for item in shop[1]:
        v = snap.index.vector(item)
        live = snap.index.base.search(v[None], 8, exclude=[item])
        table = state.neighbours.get(item, 8)
        assert np.allclose([s for _, s in table], live[1][0], atol=1e-6), item
        assert all(i != item and abs(float(snap.index.vector(i) @ v) - s) < 1e-5 for i, s in table), item


def test_serve_device_reaches_the_upload_embedding(shop, workspace, monkeypatch):
    """`fashionrec serve --device cpu` hands the device to the server, which embeds uploads there; a device this
    machine lacks or a misspelt one is refused before anything loads."""
    import numpy as np
    import torch

    import fashionrec.features as features
    import fashionrec.serving.server as server
    from fashionrec.cli import main
    from fashionrec.errors import FashionrecError
    from fashionrec.serving.writes import embed_upload

    seen = {}
    monkeypatch.setattr(server, "run", lambda data, **k: seen.update(k))
    assert main(["-q", "serve", "--data", str(shop[0]), "--device", "cpu"]) == 0
    assert seen["device"] == "cpu"
    with pytest.raises(FashionrecError, match="expected one of auto, cpu, cuda"):
        server.check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(FashionrecError, match="no CUDA GPU"):
            server.check_device("cuda")
    state = build_state(shop[0], workspace=workspace, progress=False, device="cpu")
    devices, real = [], features.embed_pil
    monkeypatch.setattr(features, "embed_pil", lambda *a, **k: devices.append(k.get("device")) or real(*a, **k))
    raw, vec = embed_upload(state, _jpeg(), source="test")
    assert devices == [torch.device("cpu")] and state.torch_device == torch.device("cpu")
    assert np.allclose(raw, real(state.backbone(), [Image.open(io.BytesIO(_jpeg())).convert("RGB")])[0], atol=1e-5)
