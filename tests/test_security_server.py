"""Hostile input against a real uvicorn server: one test per finding of a hostile-input audit.

Files that must never be served, the write-token contract, field/storage limits, DELETE for arrivals, security
headers, body caps enforced before the body is read, NaN/Infinity bodies, uploads off the event loop, and a new
customer seen by a server restarted on the same workspace.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fashionrec.serving.app import create_app
from fashionrec.serving.build import build_state
from fashionrec.serving.middleware import MAX_JSON_BYTES, MAX_UPLOAD_BYTES
from serving_helpers import AUTH, TOKEN, make_shop, running_server

HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A shop whose images/ folder holds what an attacker (or a careless copy) would leave there."""
    root, ids, users = make_shop(tmp_path_factory.mktemp("hostile") / "hm")
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    os.symlink(secret, root / "images" / "0999000001.jpg")  # symlink to a non-image outside
    (root / "images" / "0999000002.jpg").write_bytes(HTML)  # HTML named .jpg
    Image.new("RGB", (32, 48), (10, 200, 10)).save(outside / "elsewhere.jpg")
    os.symlink(outside / "elsewhere.jpg", root / "images" / "0999000003.jpg")  # a real photo, but outside
    Image.new("RGB", (32, 48), (10, 10, 200)).save(root / "images" / "0999000004.jpg", format="PNG")  # PNG as .jpg
    # an upright photo and the same photo turned on its side, as two catalog items (for the EXIF test)
    _portrait().save(root / "images" / "0999000005.jpg", quality=98)
    _portrait().transpose(Image.Transpose.ROTATE_270).save(root / "images" / "0999000006.jpg", quality=98)
    ws = tmp_path_factory.mktemp("ws")
    state = build_state(root, workspace=ws, progress=False)
    with running_server(create_app(state, write_token=TOKEN)) as url, running_server(create_app(state)) as ro_url:
        yield {"url": url, "ro_url": ro_url, "ids": ids, "users": users, "state": state, "root": root, "ws": ws}


def _portrait() -> Image.Image:
    img = Image.new("RGB", (80, 160), (250, 250, 250))
    img.paste(Image.new("RGB", (80, 40), (20, 20, 20)), (0, 0))  # dark band at the top
    img.paste(Image.new("RGB", (20, 100), (200, 150, 20)), (10, 50))  # an ochre stripe on the left
    return img


def _jpeg(color=(210, 20, 30), size=(64, 96)) -> bytes:
    img = Image.new("RGB", size, (245, 245, 245))
    img.paste(Image.new("RGB", (40, 50), color), (12, 10))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def _post_item(url, item_id, headers=AUTH, data=None, image=None, **fields):
    return httpx.post(
        f"{url}/items",
        files={"file": ("a.jpg", image or _jpeg(), "image/jpeg")},
        data={"id": item_id, **fields} if data is None else data,
        headers=headers,
        timeout=60,
    )


# ----------------------------------------------------------------------------- 1. GET /images/{id}
@pytest.mark.parametrize("item", ["0999000001", "0999000002", "0999000003"])
def test_images_outside_the_data_folder_or_not_images_are_not_served(hostile, item):
    r = httpx.get(f"{hostile['url']}/images/{item}")
    assert r.status_code == 404, (r.status_code, r.headers.get("content-type"), r.content[:60])
    assert b"root:x" not in r.content and b"<script>" not in r.content


def test_images_are_served_with_their_real_type_and_nosniff(hostile):
    r = httpx.get(f"{hostile['url']}/images/{hostile['ids'][0]}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"
    png = httpx.get(f"{hostile['url']}/images/0999000004")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"  # by content, not by name
    assert Image.open(io.BytesIO(png.content)).size == (32, 48)


# ----------------------------------------------------------------------------- 3. security headers
@pytest.mark.parametrize("path", ["/", "/health", "/static/app.js", "/items/nope", "/openapi.json", "/images/nope"])
def test_security_headers_on_every_response(hostile, path):
    r = httpx.get(hostile["url"] + path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    if path in ("/", "/static/app.js"):
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in r.text  # the page has no inline script: the CSP can forbid them


# ----------------------------------------------------------------------------- 3. write token
def test_writes_disabled_without_a_configured_token(hostile):
    r = _post_item(hostile["ro_url"], "0888000001", headers={})
    assert r.status_code == 403 and "--write-token" in r.json()["detail"]
    r = _post_item(hostile["ro_url"], "0888000001")  # even with a token: none is configured
    assert r.status_code == 403
    assert httpx.delete(f"{hostile['ro_url']}/items/{hostile['ids'][0]}", headers=AUTH).status_code == 403
    assert httpx.get(f"{hostile['ro_url']}/items/0888000001").status_code == 404
    assert httpx.get(f"{hostile['ro_url']}/health").json()["writes_enabled"] is False


@pytest.mark.parametrize(
    "headers,status",
    [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 403),
    ],
)
def test_writes_need_the_right_bearer_token(hostile, headers, status):
    r = _post_item(hostile["url"], "0888000002", headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{hostile['url']}/items/0888000002").status_code == 404
    assert httpx.delete(f"{hostile['url']}/items/{hostile['ids'][0]}", headers=headers).status_code == status


def _raw(url: str, head: bytes, body_chunks=(), timeout: float = 20.0) -> tuple[int, bytes]:
    """Send a request by hand (declared lengths and chunked bodies httpx would not send); return status, body."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and stopped reading: fine, read its answer
        data = b""
        while b"\r\n\r\n" not in data:
            got = s.recv(65536)
            if not got:
                break
            data += got
        head_end = data.index(b"\r\n\r\n")
        status = int(data.split(b" ", 2)[1])
        length = next(
            (
                int(ln.split(b":")[1])
                for ln in data[:head_end].split(b"\r\n")
                if ln.lower().startswith(b"content-length:")
            ),
            0,
        )
        body = data[head_end + 4 :]
        while len(body) < length:
            got = s.recv(65536)
            if not got:
                break
            body += got
        return status, body


def test_unauthorised_write_is_refused_before_its_body_is_read(hostile):
    head = (
        b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 209715200\r\n\r\n"
    )  # 200 MiB declared, none sent
    status, body = _raw(hostile["url"], head)
    assert status == 401 and b"Bearer" in body


# ----------------------------------------------------------------------------- 5. body caps before reading
def test_declared_oversized_upload_is_refused_at_once(hostile):
    head = (
        b"POST /search/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 209715200\r\n\r\n"
    )
    status, body = _raw(hostile["url"], head)  # the old server waited for the 200 MiB that never came
    assert status == 413 and b"209,715,200 bytes" in body


def test_chunked_upload_is_cut_off_while_streaming(hostile):
    head = (
        b"POST /search/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    piece = b"\xff" * 65536

    def chunk(data):
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    n = (MAX_UPLOAD_BYTES + 2 * 65536) // len(piece) + 2
    # over the limit, and never finished (no terminating 0-chunk): only a server counting as it reads answers
    status, body = _raw(hostile["url"], head, [chunk(part)] + [chunk(piece)] * n)
    assert status == 413 and b"limit" in body


def test_json_body_cap(hostile):
    big = json.dumps({"history": ["x" * 100] * (MAX_JSON_BYTES // 100)})
    r = httpx.post(f"{hostile['url']}/recommendations", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_upload_pixel_cap_is_checked_from_the_header(hostile):
    buf = io.BytesIO()
    Image.new("L", (7000, 6500)).save(buf, "PNG")  # 45.5 Mpx in ~45 KB: under the old 64 Mpx cap
    r = httpx.post(
        f"{hostile['url']}/search/image", files={"file": ("big.png", buf.getvalue(), "image/png")}, timeout=60
    )
    assert r.status_code == 413 and "pixel limit" in r.json()["detail"]


# ----------------------------------------------------------------------------- 11. NaN / ids / fields
@pytest.mark.parametrize(
    "body",
    [
        '{"history": ["0100000000"], "k": NaN}',
        '{"history": ["0100000000"], "k": Infinity}',
        '{"history": [NaN]}',
        '{"history": ["0100000000"], "exclude_bought": -Infinity}',
        "NaN",
    ],
)
def test_nan_and_infinity_in_json_are_422_not_500(hostile, body):
    r = httpx.post(f"{hostile['url']}/recommendations", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


@pytest.mark.parametrize("item_id", ["x\n", ".", "..", "a/b", "-x", "_x", "x" * 65, "é", "a b", "x\r\n"])
def test_bad_ids_are_refused(hostile, item_id):
    r = _post_item(hostile["url"], item_id)
    assert r.status_code == 422, (item_id, r.status_code, r.text)
    assert item_id not in hostile["state"].arrivals and item_id.strip() not in hostile["state"].arrivals
    assert not any(p.name in ("..img", "...img", "x\n.img") for p in Path(hostile["ws"]).rglob("*.img"))


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"name": "n" * 300}, "name is 300 characters; at most 200"),
        ({"name": "n" * 5000}, ""),
        ({"category": "c" * 101}, "category is 101 characters; at most 100"),
        ({"colour": "red\x00"}, "colour contains control characters"),
        ({"name": "line\nbreak"}, "name contains control characters"),
        ({"name": "next\x85line"}, "name contains control characters (U+0085"),
        ({"name": "csi\x9b31m red"}, "name contains control characters (U+009B"),
        ({"name": "red top\x85"}, "name contains control characters (U+0085"),
        ({"name": "gpj.\u202eexe"}, "name contains control characters (U+202E RIGHT-TO-LEFT OVERRIDE"),
        ({"category": "Sho\u200bes"}, "category contains control characters (U+200B"),
        ({"colour": "\u2066Blue\u2069"}, "colour contains control characters (U+2066"),
    ],
)
def test_field_limits(hostile, fields, match):
    r = _post_item(hostile["url"], "0888000003", **fields)
    assert r.status_code == 422 and match in r.text
    assert httpx.get(f"{hostile['url']}/items/0888000003").status_code == 404


def test_storage_and_count_caps(hostile):
    state = hostile["state"]
    old = state.max_arrival_bytes, state.max_arrivals
    try:
        state.max_arrival_bytes = 1000  # smaller than one upload
        r = _post_item(hostile["url"], "0888000004")
        assert r.status_code == 413 and "storage" in r.json()["detail"]
        state.max_arrival_bytes, state.max_arrivals = old[0], len(state.arrivals)
        r = _post_item(hostile["url"], "0888000004")
        assert r.status_code == 409 and "limit" in r.json()["detail"]
    finally:
        state.max_arrival_bytes, state.max_arrivals = old
    assert httpx.get(f"{hostile['url']}/items/0888000004").status_code == 404


# ----------------------------------------------------------------------------- DELETE /items/{id}
def test_delete_an_arrival(hostile):
    url, ids = hostile["url"], hostile["ids"]
    assert (
        _post_item(
            url, "0888000005", name="to delete", category="Garment Upper body", image=_jpeg((231, 11, 21))
        ).status_code
        == 201
    )
    sims = [s["id"] for s in httpx.get(f"{url}/items/{ids[0]}/similar", params={"k": 20}).json()]
    assert "0888000005" in sims
    assert httpx.delete(f"{url}/items/0888000005", headers=AUTH).status_code == 204
    assert httpx.get(f"{url}/items/0888000005").status_code == 404
    assert httpx.get(f"{url}/images/0888000005").status_code == 404
    assert httpx.get(f"{url}/items/0888000005/similar").status_code == 404
    sims = [s["id"] for s in httpx.get(f"{url}/items/{ids[0]}/similar", params={"k": 40}).json()]
    recs = httpx.post(f"{url}/recommendations", json={"history": ids[:3], "k": 40, "model": "visual"}).json()
    assert "0888000005" not in sims and "0888000005" not in [i["id"] for i in recs["items"]]
    assert httpx.post(f"{url}/recommendations", json={"history": ["0888000005"]}).status_code == 422
    assert not (Path(hostile["state"].arrivals.get("0888000005", {}).get("image", "/nonexistent"))).exists()
    assert httpx.delete(f"{url}/items/0888000005", headers=AUTH).status_code == 404
    assert _post_item(url, "0888000005").status_code == 409  # id reusable after a restart only
    assert httpx.delete(f"{url}/items/{ids[0]}", headers=AUTH).status_code == 409  # catalog items are read-only
    assert httpx.get(f"{url}/items/{ids[0]}").status_code == 200
    # after a restart the arrival stays deleted
    state2 = build_state(hostile["root"], workspace=hostile["ws"], progress=False)
    assert "0888000005" not in state2.arrivals and not state2.known_item("0888000005")


# ----------------------------------------------------------------------------- 5. uploads off the event loop
def test_health_answers_while_an_upload_is_being_embedded(hostile, monkeypatch):
    import fashionrec.serving.routes as app_module

    release, entered = threading.Event(), threading.Event()
    real = app_module.embed_image

    def slow_embed(state, img):
        entered.set()
        release.wait(30)  # stands for seconds of decoding and embedding
        return real(state, img)

    monkeypatch.setattr(app_module, "embed_image", slow_embed)
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault(
            "r",
            httpx.post(f"{hostile['url']}/search/image", files={"file": ("a.jpg", _jpeg(), "image/jpeg")}, timeout=60),
        )
    )
    t.start()
    try:
        assert entered.wait(30)
        # on the event loop, the upload would hold every other request until it finished
        assert httpx.get(f"{hostile['url']}/health", timeout=10).status_code == 200
        assert httpx.get(f"{hostile['url']}/items/{hostile['ids'][0]}/similar", timeout=10).status_code == 200
    finally:
        release.set()
        t.join(60)
    assert result["r"].status_code == 200


# ----------------------------------------------------------------------------- 10. EXIF orientation, end to end
def test_rotated_copy_of_a_catalog_photo_finds_it(hostile):
    """A phone stores the sensor's pixels turned on their side plus EXIF orientation 8. Read upright it is the
    photo of 0999000005; read as stored (EXIF ignored) it is the sideways photo of 0999000006."""
    exif = Image.Exif()
    exif[0x0112] = 8  # 'rotate 90 CCW to view'
    buf = io.BytesIO()
    _portrait().transpose(Image.Transpose.ROTATE_270).save(buf, "JPEG", quality=98, exif=exif)
    r = httpx.post(
        f"{hostile['url']}/search/image",
        files={"file": ("phone.jpg", buf.getvalue(), "image/jpeg")},
        params={"k": 3},
        timeout=60,
    )
    top = r.json()["similar"][0]
    assert top["id"] == "0999000005", r.json()["similar"]


# ----------------------------------------------------------------------------- 7. a new customer after restart
def test_new_customer_and_arrivals_survive_a_restart_on_the_same_workspace(tmp_path):
    root, ids, users = make_shop(tmp_path / "hm", n_users=6)
    ws = tmp_path / "ws"
    state = build_state(root, workspace=ws, progress=False)
    with running_server(create_app(state, write_token=TOKEN)) as url:
        assert httpx.get(f"{url}/users/brand-new/recommendations").status_code == 404
        assert _post_item(url, "0777000001", name="kept").status_code == 201
    with open(root / "customers.csv", "a") as f:
        f.write("brand-new\n")
    state2 = build_state(root, workspace=ws, progress=False)
    with running_server(create_app(state2)) as url2:
        r = httpx.get(f"{url2}/users/brand-new/recommendations", params={"k": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        assert httpx.get(f"{url2}/items/0777000001").json()["name"] == "kept"
        assert httpx.get(f"{url2}/images/0777000001").status_code == 200


# ----------------------------------------------------------------------------- slow bodies, uploads per client
def _slow_upload(port: int, path: str = "/search/image", declared: int = 100_000) -> socket.socket:
    """A client that declares a body and sends only its first bytes (then nothing)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)  # bounds every read below
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    s.sendall(head.encode() + b"--b\r\n")
    return s


def _until_closed(s: socket.socket, first_chunk: threading.Event | None = None) -> bytes:
    """Everything the server sends until it closes. A reset after the reply counts as closed: a client that keeps
    writing to a closed connection gets a TCP reset, which is how the kernel answers bytes nobody will read."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if first_chunk is not None:
                first_chunk.set()
    except ConnectionResetError:
        if not chunks:
            raise
    s.close()
    return b"".join(chunks)


def test_slow_body_answered_408_and_connection_closed(hostile):
    """A client that keeps sending a byte now and then (so the server's keep-alive timer never fires) is answered
    408 once the body is late, and disconnected."""
    with running_server(create_app(hostile["state"], body_timeout=1.0)) as url:
        port = int(url.rsplit(":", 1)[1])
        s = _slow_upload(port)
        done = threading.Event()

        def drip():
            while not done.wait(0.2):
                try:
                    s.sendall(b"x")
                except OSError:
                    return

        t = threading.Thread(target=drip, daemon=True)
        t.start()
        try:
            reply = _until_closed(
                s, first_chunk=done
            )  # the drip stops at the first byte of the reply; returns once the server has closed the connection (socket timeout: 30 s)
        finally:
            done.set()
            t.join(10)
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 seconds" in reply
        assert b"connection: close" in reply.lower()
        assert httpx.get(f"{url}/health").status_code == 200


def test_uploads_in_flight_per_client_capped(hostile):
    with running_server(create_app(hostile["state"], body_timeout=5.0, max_uploads_per_client=2)) as url:
        port = int(url.rsplit(":", 1)[1])
        slow = [_slow_upload(port) for _ in range(2)]
        refused = None
        for _ in range(100):  # until the server has seen both slow uploads begin (bounded)
            r = httpx.post(f"{url}/search/image", files={"file": ("a.jpg", _jpeg(), "image/jpeg")}, timeout=60)
            if r.status_code == 429:
                refused = r
                break
            assert r.status_code == 200, r.text
        assert refused is not None and "2 uploads from this client" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        assert httpx.get(f"{url}/health").status_code == 200  # other requests are not limited
        for s in slow:
            assert _until_closed(s).startswith(b"HTTP/1.1 408")
        r = httpx.post(f"{url}/search/image", files={"file": ("a.jpg", _jpeg(), "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text  # their slots are free again


@pytest.mark.parametrize(
    "kw,match", [({"body_timeout": 0}, "--body-timeout"), ({"max_uploads_per_client": 0}, "--max")]
)
def test_request_limits_checked_before_start(tmp_path, kw, match):
    from fashionrec.errors import FashionrecError
    from fashionrec.serving.server import run

    with pytest.raises(FashionrecError, match=match):
        run(tmp_path / "no-data", **kw)  # refused before any data is read
