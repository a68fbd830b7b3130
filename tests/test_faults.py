"""Fault injection: damaged, truncated, moved, shared and read-only files, and servers killed (SIGKILL) at every write
step of POST /items. After each fault the server must start, answer every request with 2xx/4xx (never 5xx), and keep
every arrival it acknowledged (201)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fashionrec.serving.app import create_app
from fashionrec.serving.arrivals import FAULT_ENV, REGISTRY, UNCOMMITTED, path_key
from fashionrec.serving.build import build_state
from fashionrec.serving.writes import create_arrival
from serving_helpers import AUTH, TOKEN, free_port, make_shop

ARRIVALS = {"0999000001": (230, 10, 20), "0999000002": (20, 10, 230)}


def _jpeg(color) -> bytes:
    img = Image.new("RGB", (64, 96), (245, 245, 245))
    img.paste(Image.new("RGB", (40, 50), color), (12, 10))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The smallest shop, its artifacts built, and two committed arrivals (with names)."""
    d = tmp_path_factory.mktemp("faults")
    root, ids, users = make_shop(d / "hm", n_users=8)
    ws = d / "ws"
    state = build_state(root, workspace=ws, progress=False)
    for item_id, color in ARRIVALS.items():
        create_arrival(state, item_id, _jpeg(color), {"prod_name": f"new {item_id}"})
    return root, ws, ids, users


@pytest.fixture
def env(base, tmp_path):
    """A private copy of the workspace (the data folder is shared: only the workspace is damaged)."""
    root, ws, ids, users = base
    mine = tmp_path / "ws"
    shutil.copytree(ws, mine)
    return root, mine, ids, users


def _folder(ws: Path) -> Path:
    (reg,) = [p for p in (ws / "arrivals").glob(f"*/{REGISTRY}")]
    return reg.parent


def _tables(ws: Path) -> Path:
    (t,) = list((ws / "serving").glob("*/tables"))
    return t


def check(root, ws, ids, users, expect=tuple(ARRIVALS), post: str | None = "0999000077"):
    """Start a server on `ws`, probe every read endpoint (no 5xx), find every expected arrival; post one more."""
    state = build_state(root, workspace=ws, progress=False)
    with TestClient(create_app(state, write_token=TOKEN), raise_server_exceptions=False) as c:
        assert c.get("/health").status_code == 200
        probes = [
            f"/items/{ids[0]}/similar?k=5",
            f"/items/{ids[0]}/similar?k=5&category=Shoes",
            f"/items/{ids[20]}",
            f"/users/{users[0]}/recommendations?k=5",
            f"/users/{users[1]}/recommendations?k=80",
            f"/users/{users[1]}",
            "/customers?limit=3",
            "/search/items?q=red",
            f"/images/{ids[3]}",
        ]
        for item in ARRIVALS:
            probes += [f"/items/{item}", f"/items/{item}/similar?k=5", f"/images/{item}"]
        for path in probes:
            r = c.get(path)
            assert r.status_code < 500, (path, r.status_code, r.text)
        r = c.post("/recommendations", json={"history": ids[:2], "k": 5})
        assert r.status_code == 200, r.text
        for item in expect:
            r = c.get(f"/items/{item}")
            assert r.status_code == 200, f"arrival {item} lost: {r.text}"
            sims = c.get(f"/items/{ids[0]}/similar", params={"k": 40}).json()
            assert item in [s["id"] for s in sims]
        if post:
            r = c.post(
                "/items",
                files={"file": ("n.jpg", _jpeg((200, 200, 20)), "image/jpeg")},
                data={"id": post},
                headers=AUTH,
            )
            assert r.status_code in (201, 403, 409), r.text
            assert c.get(f"/items/{post}").status_code == (200 if r.status_code != 403 else 404)
    return state


def _no_leftovers(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert not [n for n in names if ".tmp" in n], names
    reg = json.loads((folder / REGISTRY).read_text())["arrivals"]
    stray = [n for n in names if (n.endswith(".img") or n.endswith(".meta.json")) and n.split(".")[0] not in reg]
    assert not stray, stray


# ------------------------------------------------------------------------------------ damaged arrival files
def _rows_as_strings(p: Path) -> None:
    obj = json.loads(p.read_text())
    obj["arrivals"] = {k: "x" for k in obj["arrivals"]}
    p.write_text(json.dumps(obj))


def _bad_fields(p: Path) -> None:
    obj = json.loads(p.read_text())
    obj["arrivals"] = {k: {"bytes": -5, "metadata": [1, 2]} for k in obj["arrivals"]}
    p.write_text(json.dumps(obj))


REGISTRY_FAULTS = {
    "registry-truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "registry-empty": lambda p: p.write_bytes(b""),
    "registry-json-list": lambda p: p.write_text("[1, 2, 3]"),
    "registry-binary": lambda p: p.write_bytes(b"\xff\xfe\x00garbage\x80" * 50),
    "registry-rows-wrong-type": _rows_as_strings,
    "registry-rows-bad-fields": _bad_fields,
    "registry-arrivals-not-object": lambda p: p.write_text(json.dumps({"format": 2, "arrivals": ["a"]})),
}


@pytest.mark.parametrize("fault", sorted(REGISTRY_FAULTS))
def test_damaged_registry(env, fault, caplog):
    root, ws, ids, users = env
    folder = _folder(ws)
    REGISTRY_FAULTS[fault](folder / REGISTRY)
    state = check(root, ws, ids, users)
    # the arrivals keep their names (from their .meta.json files)
    assert state.snapshot.arrivals["0999000001"]["metadata"]["prod_name"] == "new 0999000001"
    if fault not in ("registry-rows-wrong-type", "registry-rows-bad-fields"):
        (aside,) = folder.glob(f"{REGISTRY}.corrupt-*")  # set aside for inspection, named in the log
        assert str(aside.name[: len(REGISTRY)]) in caplog.text and "damaged" in caplog.text
    _no_leftovers(folder)


def test_damaged_registry_and_metadata_files(env):
    """With the registry and every .meta.json damaged, the image files alone still bring the arrivals back."""
    root, ws, ids, users = env
    folder = _folder(ws)
    (folder / REGISTRY).write_text("{")
    for p in folder.glob("*.meta.json"):
        p.write_text("not json")
    check(root, ws, ids, users)


VECTOR_FAULTS = {
    "vectors-truncated": ("vectors.npy", lambda p: p.write_bytes(p.read_bytes()[:100])),
    "vectors-ids-wrong-length": ("ids.npy", lambda p: np.save(p, np.array(["a"] * 7))),
    "vectors-nan": ("vectors.npy", lambda p: np.save(p, np.full(np.load(p).shape, np.nan, np.float32))),
    "vectors-config-garbage": ("config.json", lambda p: p.write_text("{{{")),
    "vectors-wrong-dimension": ("vectors.npy", lambda p: np.save(p, np.ones((2, 3), np.float32))),
}


@pytest.mark.parametrize("fault", sorted(VECTOR_FAULTS))
def test_damaged_arrival_vectors(env, fault):
    root, ws, ids, users = env
    name, damage = VECTOR_FAULTS[fault]
    damage(_folder(ws) / "vectors" / name)
    check(root, ws, ids, users)  # the images are embedded again


def test_truncated_arrival_image_keeps_the_arrival(env):
    root, ws, ids, users = env
    img = _folder(ws) / "0999000001.img"
    img.write_bytes(img.read_bytes()[:50])
    check(root, ws, ids, users)  # its saved vector still places it; its photo is not served (404)


def test_crash_leftovers_swept_and_counted(env):
    """Temporary files and an image + metadata never committed (writer killed) are swept at start-up: temporaries
    deleted, the uncommitted files moved aside and counted by the storage cap."""
    root, ws, ids, users = env
    folder = _folder(ws)
    (folder / ".0999000050.img.4242.tmp").write_bytes(b"partial")
    (folder / "0999000050.tmp.img").write_bytes(b"partial")  # an older writer's temporary name
    (folder / ".vectors.abcd1234.tmp").mkdir()
    (folder / "0999000051.img").write_bytes(_jpeg((1, 2, 3)))
    (folder / "0999000051.meta.json").write_text('{"metadata": {}}')
    state = check(root, ws, ids, users, post=None)
    _no_leftovers(folder)
    assert (folder / UNCOMMITTED / "0999000051.img").is_file()  # kept, never deleted
    assert state.leftover_bytes == sum(p.stat().st_size for p in (folder / UNCOMMITTED).iterdir())
    state.max_arrival_bytes = sum(a["bytes"] for a in state.snapshot.arrivals.values()) + state.leftover_bytes
    with TestClient(create_app(state, write_token=TOKEN)) as c:
        r = c.post("/items", files={"file": ("n.jpg", _jpeg((9, 9, 9)), "image/jpeg")}, data={"id": "0999000052"},
                   headers=AUTH)  # fmt: skip
        assert r.status_code == 413 and "uncommitted" in r.json()["detail"]


# ------------------------------------------------------------------------------------ damaged artifacts
def _set(path: Path, fn) -> None:
    np.save(path, fn(np.load(path)), allow_pickle=False)


def _swap_rows(a):
    a = a.copy()
    a[[0, 1]] = a[[1, 0]]
    return a


ARTIFACT_FAULTS = {
    "tables-config-truncated": ("config.json", lambda p: p.write_text(p.read_text()[:40])),
    "users-truncated": ("users.npy", lambda p: p.write_bytes(p.read_bytes()[:90])),
    "users-unsorted": ("users.npy", lambda p: _set(p, _swap_rows)),
    "neighbours-rows-dropped": ("nb.rows.npy", lambda p: _set(p, lambda a: a[:-3])),
    "neighbours-out-of-range": ("nb.rows.npy", lambda p: _set(p, lambda a: a + 1000)),
    "neighbours-float-rows": ("nb.rows.npy", lambda p: _set(p, lambda a: a.astype(np.float32))),
    "neighbour-ids-unsorted": ("nb.ids.npy", lambda p: _set(p, _swap_rows)),
    "precomputed-items-out-of-range": ("pre.hybrid.items.npy", lambda p: _set(p, lambda a: a + 10_000)),
    "precomputed-offsets-shuffled": ("pre.hybrid.offsets.npy", lambda p: _set(p, lambda a: a[::-1].copy())),
    "precomputed-because-out-of-range": ("pre.visual.because_items.npy", lambda p: _set(p, lambda a: a - 10_000)),
    "precomputed-scores-short": ("pre.popularity.scores.npy", lambda p: _set(p, lambda a: a[:-4])),
    "tagger-wrong-shape": ("tag.colour_group_name.coef.npy", lambda p: _set(p, lambda a: a[:, :3])),
    "index-truncated": ("../index.npz", lambda p: p.write_bytes(p.read_bytes()[:500])),
    "model-truncated": ("../models/hybrid.npz", lambda p: p.write_bytes(p.read_bytes()[:300])),
    "model-garbage": ("../models/visual.npz", lambda p: p.write_bytes(os.urandom(2000))),
}


@pytest.mark.parametrize("fault", sorted(ARTIFACT_FAULTS))
def test_damaged_artifact_rebuilt(env, fault, caplog):
    root, ws, ids, users = env
    name, damage = ARTIFACT_FAULTS[fault]
    path = (_tables(ws) / name).resolve()
    if not path.exists():
        pytest.skip(f"{name}: not in this shop's artifacts")
    damage(path)
    check(root, ws, ids, users)
    assert "rebuilding the serving artifacts" in caplog.text and path.name in caplog.text


# ------------------------------------------------------------------------------------ moved, upgraded, shared
def test_moved_data_folder_keeps_arrivals(env, tmp_path):
    root, ws, ids, users = env
    moved = tmp_path / "elsewhere" / "shop"
    shutil.copytree(root, moved)  # a private copy (the original stays for the other tests), then moved
    moved2 = tmp_path / "moved-again"
    moved.rename(moved2)
    check(moved2, ws, ids, users)


def test_copied_data_folder_keeps_arrivals(env, tmp_path):
    root, ws, ids, users = env
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    check(copy, ws, ids, users, post="0999000078")
    check(root, ws, ids, users, expect=(*ARRIVALS, "0999000078"))


def test_package_upgrade_keeps_arrivals(env, monkeypatch):
    root, ws, ids, users = env
    import fashionrec

    monkeypatch.setattr(fashionrec, "__version__", "9.9.9")
    check(root, ws, ids, users)
    assert json.loads((_folder(ws) / REGISTRY).read_text())["fashionrec"] == "9.9.9"
    monkeypatch.setattr(fashionrec, "__version__", "0.0.1")  # and a downgrade
    check(root, ws, ids, users, post=None, expect=(*ARRIVALS, "0999000077"))


def test_version_one_registry_keyed_by_path_is_migrated(env):
    """A registry of fashionrec 0.1 (a plain {id: row} object, in a folder named after the data folder's path,
    rows with absolute image paths) is migrated into the shop's folder; its files are kept where they were."""
    root, ws, ids, users = env
    folder = _folder(ws)
    old = ws / "arrivals" / path_key(root.resolve())
    rows = json.loads((folder / REGISTRY).read_text())["arrivals"]
    shutil.rmtree(folder / "vectors")
    folder.rename(old)
    (old / REGISTRY).write_text(
        json.dumps(
            {
                i: {"image": str(old / f"{i}.img"), "metadata": r["metadata"], "bytes": r["bytes"]}
                for i, r in rows.items()
            }
        )  # fmt: skip
    )
    state = check(root, ws, ids, users)
    assert state.arrivals_folder != old and (old / "0999000001.img").is_file()
    assert list(old.glob(f"{REGISTRY}.migrated-*"))


def test_read_only_workspace(env):
    root, ws, ids, users = env
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available")
    try:
        subprocess.run(["chattr", "-R", "+i", str(ws)], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot make the workspace immutable here: {e.stderr.decode().strip()}")
    try:
        probe = ws / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("the file system ignores the immutable flag")
        except OSError:
            pass
        state = check(root, ws, ids, users, post="0999000079")  # reads answered; the post refused (403)
        assert state.write_refusal and "not writable" in state.write_refusal
    finally:
        subprocess.run(["chattr", "-R", "-i", str(ws)], check=True)


# ------------------------------------------------------------------------------------ real servers, killed
def _serve(root, ws, port, fault=None):
    env = {**os.environ, "FASHIONREC_WRITE_TOKEN": TOKEN}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "fashionrec.cli", "-q", "--workspace", str(ws), "serve", "--data", str(root)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "server did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _post(url, item_id, color=(200, 20, 20)):
    return httpx.post(
        f"{url}/items",
        files={"file": ("a.jpg", _jpeg(color), "image/jpeg")},
        data={"id": item_id, "name": f"posted {item_id}"},
        headers=AUTH,
        timeout=60,
    )


KILL_STEPS = ["meta-tmp", "meta", "image-tmp", "image", "registry-tmp", "registry", "vectors", "commit"]
COMMITTED_FROM = KILL_STEPS.index("registry")  # killed from here on, the arrival was committed before the kill


@pytest.mark.parametrize("step", KILL_STEPS)
def test_server_killed_at_write_step(env, step):
    root, ws, ids, users = env
    port = free_port()
    proc = _serve(root, ws, port, fault=step)
    try:
        with pytest.raises(httpx.HTTPError):  # the server dies mid-request: no answer
            _post(f"http://127.0.0.1:{port}", "0999000060")
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        _stop(proc)
    committed = KILL_STEPS.index(step) >= COMMITTED_FROM
    state = check(root, ws, ids, users, expect=(*ARRIVALS, *(["0999000060"] if committed else [])), post=None)
    _no_leftovers(_folder(ws))
    assert ("0999000060" in state.snapshot.arrivals) == committed
    with TestClient(create_app(state, write_token=TOKEN)) as c:  # the id can be posted again unless it exists
        r = c.post("/items", files={"file": ("a.jpg", _jpeg((1, 2, 3)), "image/jpeg")}, data={"id": "0999000060"},
                   headers=AUTH)  # fmt: skip
        assert r.status_code == (409 if committed else 201), r.text


def test_two_servers_share_one_workspace(env):
    """Two server processes on one workspace post different arrivals at the same time: after a restart, every
    arrival either acknowledged is there (registry writes merge under a folder lock)."""
    root, ws, ids, users = env
    ports = [free_port(), free_port()]
    procs = [_serve(root, ws, p) for p in ports]
    posted = []
    try:
        import concurrent.futures as cf

        jobs = [(f"http://127.0.0.1:{ports[n % 2]}", f"09990001{n:02d}") for n in range(8)]
        with cf.ThreadPoolExecutor(4) as pool:
            for (_, item), r in zip(jobs, pool.map(lambda j: _post(*j), jobs)):
                assert r.status_code == 201, r.text
                posted.append(item)
    finally:
        for p in procs:
            _stop(p)
    check(root, ws, ids, users, expect=(*ARRIVALS, *posted))
    _no_leftovers(_folder(ws))


def test_two_worker_server_with_damaged_table_and_registry(env):
    """`serve --workers 2`: the parent rebuilds a damaged table before the workers load it; both workers recover
    the arrivals from a damaged registry in memory (neither renames it: they do not write)."""
    root, ws, ids, users = env
    _set(_tables(ws) / "nb.rows.npy", lambda a: a + 1000)
    folder = _folder(ws)
    (folder / REGISTRY).write_text("[]")
    port = free_port()
    env_ = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, "FASHIONREC_WRITE_TOKEN")}
    cmd = [sys.executable, "-m", "fashionrec.cli", "-q", "--workspace", str(ws), "serve", "--data", str(root)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--workers", "2"], env=env_, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for _ in range(6):  # new connections: both workers answer some
            for path in [f"/items/{ids[0]}/similar?k=40", *(f"/items/{a}" for a in ARRIVALS)]:
                r = httpx.get(url + path, timeout=30)
                assert r.status_code == 200, (path, r.text)
            assert set(ARRIVALS) <= {s["id"] for s in httpx.get(f"{url}/items/{ids[0]}/similar?k=40").json()}
    finally:
        _stop(proc)
    assert (folder / REGISTRY).read_text() == "[]" and not list(folder.glob(f"{REGISTRY}.corrupt-*"))
    check(root, ws, ids, users)  # a writing server then sets it aside and rewrites it
    assert list(folder.glob(f"{REGISTRY}.corrupt-*"))
