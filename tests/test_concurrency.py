"""Concurrent writes and reads against a real uvicorn server (issue 14, item 4), bounded in count and time.

Contract: the first POST of a new id wins (201); every concurrent or later POST of that id gets 409 and changes
nothing (no replace). Afterwards, and after a restart on the same workspace, the item's name, stored image, its
similar items and its recommendations all come from the winning upload.
"""

from __future__ import annotations

import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from fashionrec.serving.app import create_app
from fashionrec.serving.build import build_state
from serving_helpers import AUTH, TOKEN, make_shop, running_server

N_DUPLICATES = 4
N_ARRIVALS = 6
N_READS_PER_READER = 40
TIMEOUT = 120


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root, ids, users = make_shop(tmp_path_factory.mktemp("conc") / "hm")
    return root, ids, users, tmp_path_factory.mktemp("conc-ws")


def _photo(seed: int, big: bool = False) -> bytes:
    """Distinct photos: red-ish or blue-ish garments with noise; `big` ones are ~1-2 MB (a longer decode)."""
    rng = np.random.default_rng(seed)
    h, w = (1200, 800) if big else (96, 64)
    a = np.full((h, w, 3), 245, np.uint8)
    color = (220, 20 + 10 * seed, 30) if seed % 2 == 0 else (20, 30 + 10 * seed, 220)
    a[h // 10 : h // 2, w // 5 : 4 * w // 5] = color
    a = np.clip(a.astype(int) + rng.integers(-12, 12, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG" if big else "JPEG", quality=92)
    return buf.getvalue()


def _post(url, item_id, data, name):
    return httpx.post(
        f"{url}/items",
        files={"file": ("p.png", data, "image/png")},
        data={"id": item_id, "name": name, "category": "Garment Upper body"},
        headers=AUTH,
        timeout=TIMEOUT,
    )


def _consistent(url: str, item_id: str, data: bytes, name: str) -> list[str]:
    """Every view of `item_id` agrees with the upload `data` named `name`: a list of disagreements (empty if none)."""
    problems = []
    item = httpx.get(f"{url}/items/{item_id}", timeout=TIMEOUT)
    if item.status_code != 200 or item.json()["name"] != name:
        problems.append(f"name: {item.status_code} {item.text[:80]}")
    img = httpx.get(f"{url}/images/{item_id}", timeout=TIMEOUT)
    if img.status_code != 200 or img.content != data:
        problems.append(f"image: {img.status_code}, {len(img.content)} bytes vs {len(data)} uploaded")
    # the indexed vector is the upload's: its neighbours are the neighbours of the same photo searched afresh
    sims = [s["id"] for s in httpx.get(f"{url}/items/{item_id}/similar", params={"k": 5}, timeout=TIMEOUT).json()]
    fresh = httpx.post(
        f"{url}/search/image", files={"file": ("p.png", data, "image/png")}, params={"k": 6}, timeout=TIMEOUT
    ).json()["similar"]
    fresh_ids = [s["id"] for s in fresh if s["id"] != item_id][:5]
    if fresh[0]["id"] != item_id:  # the photo itself must be the nearest item to itself
        problems.append(f"search by its own photo finds {fresh[0]['id']} first")
    if sims != fresh_ids:
        problems.append(f"similar {sims} != neighbours of its photo {fresh_ids}")
    # the recommenders hold the same vector: a history of just this item recommends its neighbours
    recs = httpx.post(
        f"{url}/recommendations", json={"history": [item_id], "k": 6, "model": "visual"}, timeout=TIMEOUT
    ).json()
    rec_ids = [r["id"] for r in recs["items"] if r["id"] != item_id][:5]
    if set(rec_ids) != set(fresh_ids):
        problems.append(f"visual recommendations {rec_ids} != neighbours {fresh_ids}")
    return problems


def test_duplicate_posts_and_posts_during_reads(shop):
    root, ids, users, ws = shop
    state = build_state(root, workspace=ws, progress=False)
    winners: dict[str, tuple[bytes, str]] = {}
    with running_server(create_app(state, write_token=TOKEN)) as url:
        # 1. the same new id posted N times at once, each with a different photo and name
        uploads = [(_photo(i, big=True), f"variant {i}") for i in range(N_DUPLICATES)]
        barrier = threading.Barrier(N_DUPLICATES)
        results: list = [None] * N_DUPLICATES

        def post(i):
            barrier.wait(TIMEOUT)
            results[i] = _post(url, "0555000001", *uploads[i])

        threads = [threading.Thread(target=post, args=(i,)) for i in range(N_DUPLICATES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        codes = sorted(r.status_code for r in results)
        assert codes == [201] + [409] * (N_DUPLICATES - 1), [(r.status_code, r.text[:100]) for r in results]
        win = next(i for i, r in enumerate(results) if r.status_code == 201)
        assert results[win].json()["name"] == uploads[win][1]
        winners["0555000001"] = uploads[win]

        # 2. new arrivals posted while readers hammer the read endpoints
        errors: list[str] = []
        stop = threading.Event()

        def reader(k: int):
            paths = [
                f"/items/{ids[k]}/similar?k=10",
                f"/users/{users[k]}/recommendations?k=60",
                "/health",
                f"/items/{ids[k + 3]}",
                f"/items/{ids[k]}/similar?k=10&category=Shoes",
            ]
            with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
                for j in range(N_READS_PER_READER):
                    r = c.get(paths[j % len(paths)])
                    if r.status_code != 200:
                        errors.append(f"GET {paths[j % len(paths)]} -> {r.status_code} {r.text[:100]}")
                    hist = c.post("/recommendations", json={"history": ids[k : k + 2], "k": 8})
                    if hist.status_code != 200:
                        errors.append(f"POST /recommendations -> {hist.status_code} {hist.text[:100]}")
                    if stop.is_set() and j >= N_READS_PER_READER // 2:
                        break

        def writer():
            for n in range(N_ARRIVALS):
                data, name = _photo(10 + n), f"arrival {n}"
                r = _post(url, f"0555100{n:03d}", data, name)
                if r.status_code != 201:
                    errors.append(f"POST /items -> {r.status_code} {r.text[:100]}")
                else:
                    winners[f"0555100{n:03d}"] = (data, name)
            stop.set()

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a client did not finish in time"
        assert errors == []
        assert len(winners) == 1 + N_ARRIVALS

        inconsistent = {i: p for i, (data, name) in winners.items() if (p := _consistent(url, i, *winners[i]))}
        assert inconsistent == {}

    # 3. a restart on the same workspace replays exactly the winners
    state2 = build_state(root, workspace=ws, progress=False)
    assert set(state2.arrivals) == set(winners)
    with running_server(create_app(state2)) as url2:
        inconsistent = {i: p for i, (data, name) in winners.items() if (p := _consistent(url2, i, data, name))}
        assert inconsistent == {}


def _lengths(snap) -> dict:
    """Every per-item array a request may read from one snapshot, by name -> length."""
    out = {}
    for name, m in snap.models.items():
        d = m.data
        out[f"{name}.item_ids"], out[f"{name}.item_index"], out[f"{name}.matrix"] = (
            len(d.item_ids),
            len(d.item_index),
            d.matrix.shape[1],
        )
        for attr in ("V", "has", "has_vec", "codes"):
            if getattr(m, attr, None) is not None:
                out[f"{name}.{attr}"] = len(getattr(m, attr))
        if getattr(m, "state", None) is not None:
            for attr in ("sold", "pop_week", "trend", "code_ids"):
                out[f"{name}.state.{attr}"] = len(getattr(m.state, attr))
    out["arrivals"] = len(snap.arrivals) + len(snap.removed)
    return out


def test_readers_during_writes_see_whole_snapshots(shop, monkeypatch):
    """Writers swap copy-on-write snapshots: a reader's snapshot has equal lengths everywhere (every model knows
    the same items, the index the same arrivals), and a snapshot once taken never changes under its reader."""
    import fashionrec.serving.writes as st

    root, ids, users, _ = shop
    state = build_state(root, workspace=shop[3].parent / "conc-inproc", progress=False)
    n0 = _lengths(state.snapshot)["hybrid.item_ids"]
    rng = np.random.default_rng(0)
    dim = state.snapshot.index.vector(ids[0]).shape[0]
    monkeypatch.setattr(st, "embed_image", lambda s, img: (None, rng.normal(size=dim).astype(np.float32)))
    first = state.snapshot
    first_lengths = _lengths(first)
    n_writes, problems, done = 12, [], threading.Event()

    def reader():
        while not done.is_set():
            snap = state.snapshot  # once per "request"
            lengths = _lengths(snap)
            n = lengths.pop("arrivals")
            if set(lengths.values()) != {n0 + n}:
                problems.append(lengths)
            found = snap.index.search(snap.index.vector(ids[0]), 40)
            if any(i not in snap.models["hybrid"].data.item_index for i, _ in found):
                problems.append(f"index returned an item unknown to the snapshot's models: {found}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(n_writes):
            st.add_arrival(state, f"0666000{n:03d}", b"", {"prod_name": f"a{n}"}, persist=False, image=object())
            if n % 4 == 3:  # deletes swap snapshots too
                st.remove_arrival(state, f"0666000{n - 1:03d}")
    finally:
        done.set()
        for t in threads:
            t.join(TIMEOUT)
    assert problems == []
    assert _lengths(first) == first_lengths  # the old snapshot was never written into
    last = _lengths(state.snapshot)
    assert last.pop("arrivals") == n_writes and set(last.values()) == {n0 + n_writes}


def _arrays(obj, path: str, out: dict, seen: set) -> dict:
    """Every numpy array reachable from `obj` through fashionrec objects and containers, by path."""
    import scipy.sparse as sp

    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        out[path] = obj
    elif sp.issparse(obj):
        for part in ("data", "indices", "indptr"):
            if isinstance(getattr(obj, part, None), np.ndarray):
                out[f"{path}.{part}"] = getattr(obj, part)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _arrays(v, f"{path}[{k!r}]", out, seen)
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            _arrays(v, f"{path}[{k}]", out, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("fashionrec."):
        for k, v in vars(obj).items():
            _arrays(v, f"{path}.{k}", out, seen)
    return out


def test_snapshot_updates_never_write_into_an_older_snapshots_arrays(shop, monkeypatch):
    """The copy-on-write rule (serving.state.Snapshot): adding and deleting arrivals leaves every array of an older
    snapshot's models as it was; those arrays are read-only, so a writer that writes into one in place fails
    loudly instead of changing what the readers of the older snapshot see."""
    import fashionrec.serving.writes as st

    root, ids, users, _ = shop
    state = build_state(root, workspace=shop[3].parent / "conc-inproc", progress=False)
    dim = state.snapshot.index.vector(ids[0]).shape[0]
    rng = np.random.default_rng(1)
    monkeypatch.setattr(st, "embed_image", lambda s, img: (None, rng.normal(size=dim).astype(np.float32)))
    old = state.snapshot
    arrays = _arrays(dict(old.models), "models", {}, set())
    assert len(arrays) > 20 and {k.split("[")[1].split("]")[0] for k in arrays} >= {"'hybrid'", "'visual'"}
    before = {k: np.array(a, copy=True) for k, a in arrays.items()}
    for n in range(3):
        st.add_arrival(state, f"0777000{n:03d}", b"", {"prod_name": f"b{n}"}, persist=False, image=object())
    st.remove_arrival(state, "0777000001")
    assert state.snapshot.version == old.version + 4
    now = _arrays(dict(old.models), "models", {}, set())
    assert now.keys() == arrays.keys()
    changed = [
        k
        for k, a in now.items()
        if a is not arrays[k] or not np.array_equal(a, before[k], equal_nan=a.dtype.kind in "fc")
    ]
    assert changed == []
    # every array of both snapshots is read-only: an in-place write raises
    writable = [k for k, a in now.items() if a.flags.writeable]
    writable += [k for k, a in _arrays(dict(state.snapshot.models), "new", {}, set()).items() if a.flags.writeable]
    assert writable == []
    v = old.models["visual"].V if getattr(old.models["visual"], "V", None) is not None else arrays[next(iter(arrays))]
    with pytest.raises(ValueError, match="read-only"):
        v[0] = 0
    # a writer breaking the rule (writing into a shared array instead of replacing it) is stopped
    hybrid = type(state.snapshot.models["hybrid"])

    def add_in_place(self, item_ids, vectors=None, metadata=None):
        self.data.matrix.data[:] = 0

    monkeypatch.setattr(hybrid, "add_items", add_in_place)
    with pytest.raises(ValueError, match="read-only"):
        st.add_arrival(state, "0777000009", b"", {"prod_name": "x"}, persist=False, image=object())
    assert np.array_equal(old.models["hybrid"].data.matrix.data, before["models['hybrid'].data.matrix.data"])
