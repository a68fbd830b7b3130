"""Artifacts are data, not pickles: round trips with known values, clear errors naming the file, complete keys."""

import json
import os
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fashionrec.artifacts import (
    ArtifactFormatError,
    StateEncodeError,
    artifact_key,
    decode_state,
    encode_state,
    load_artifact,
    save_artifact,
)
from fashionrec.artifacts.store import HEADER, VERSION
from fashionrec.errors import FashionrecError


def test_save_load_roundtrip_and_format(tmp_path):
    arrays = {
        "v": np.arange(6, dtype=np.float32).reshape(2, 3),
        "ids": np.array(["a", "bb"]),
        "t": np.array(["2020-01-01"], dtype="datetime64[ns]"),
    }
    path = save_artifact(tmp_path / "x.npz", {"k": 50, "nan": float("nan"), "names": ["a"]}, arrays, kind="test")
    with zipfile.ZipFile(path) as z:  # a plain npz: one .npy per array plus the JSON header
        assert sorted(z.namelist()) == sorted([f"{HEADER}.npy", "v.npy", "ids.npy", "t.npy"])
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z[HEADER][()]))
    assert header["format"] == "fashionrec-artifact" and header["version"] == VERSION and header["kind"] == "test"
    cfg, back, kind, version = load_artifact(path, kind="test")
    assert cfg["k"] == 50 and np.isnan(cfg["nan"]) and cfg["names"] == ["a"] and kind == "test"
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and np.array_equal(back[k], a)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # written under a temp name and renamed


def test_object_arrays_are_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="'bad' has dtype object"):
        save_artifact(tmp_path / "x.npz", {}, {"bad": np.array([{"a": 1}], dtype=object)})
    assert not (tmp_path / "x.npz").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "x.npz: artifact not found"),
        (pickle.dumps({"a": 1}, protocol=5), "x.npz: old format .*refit / rebuild"),
        (pickle.dumps({"a": 1}, protocol=2), "x.npz: old format"),
        (b"hello", "x.npz: not a fashionrec artifact"),
    ],
)
def test_unreadable_files_are_clear_errors_naming_the_file(tmp_path, content, message):
    p = tmp_path / "x.npz"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ArtifactFormatError, match=message):
        load_artifact(p)


def test_foreign_npz_other_version_and_kind(tmp_path):
    np.savez(tmp_path / "foreign.npz", a=np.zeros(2))
    with pytest.raises(FashionrecError, match="foreign.npz: not a fashionrec artifact"):
        load_artifact(tmp_path / "foreign.npz")
    header = {"format": "fashionrec-artifact", "version": 99, "kind": "x", "config": {}}
    np.savez(tmp_path / "new.npz", **{HEADER: np.array(json.dumps(header))})
    with pytest.raises(FashionrecError, match="new.npz: artifact format version 99"):
        load_artifact(tmp_path / "new.npz")
    save_artifact(tmp_path / "idx.npz", {}, {}, kind="vector-index")
    with pytest.raises(FashionrecError, match="idx.npz: holds a 'vector-index', not a 'recommender'"):
        load_artifact(tmp_path / "idx.npz", kind="recommender")


def test_npz_holding_a_pickled_object_array_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    header = {"format": "fashionrec-artifact", "version": VERSION, "kind": "x", "config": {}}
    np.savez(tmp_path / "evil.npz", **{HEADER: np.array(json.dumps(header))}, evil=np.array([Payload()], dtype=object))
    with pytest.raises(FashionrecError, match="evil.npz: unreadable artifact"):
        load_artifact(tmp_path / "evil.npz")
    assert not marker.exists()


class Holder:
    pass


def test_state_round_trip_of_every_supported_type():
    from sklearn.linear_model import LogisticRegression

    h = Holder()
    h.df = pd.DataFrame(
        {
            "user": pd.Series(["a", "b"], dtype="str"),
            "item": pd.Series(["x", None], dtype=object, index=["r1", "r2"]),
            "ts": pd.to_datetime(["2020-01-01", "2020-02-01"]),
            "w": [1.0, np.nan],
            "cat": pd.Categorical(["p", "q"]),
        },
        index=pd.Index(["r1", "r2"], name="id"),
    )
    h.same_df = h.df  # shared: comes back as the same object
    h.series = pd.Series([1, 2], index=pd.RangeIndex(5, 7), name="s")
    h.m = sp.csr_matrix(np.array([[0, 1.5], [2, 0]]))
    h.coo = sp.coo_matrix(np.eye(2))
    h.d = {("bucket", 1): 0.5, "_base": np.float64(0.1), 3: [1, (2, 3)], "s": {1, 2}}
    h.t, h.nat, h.td = pd.Timestamp("2020-01-01 12:00"), pd.NaT, pd.Timedelta(days=2)
    h.scalars = [np.int64(3), np.float32(0.5), np.datetime64("2020-01-01", "ns"), float("inf"), None, True]
    h.dtype, h.nptype = np.dtype("float32"), np.float64
    h.strs = np.array(["a", None, np.nan, "", "Ünïcödé 日本 \x00x"], dtype=object)
    rng = np.random.default_rng(0)
    x = rng.random((30, 3))
    h.lr = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    h.self_ref = h  # a cycle
    tree, arrays = encode_state(h, {"Holder": Holder})
    json.dumps(tree)  # the tree is plain JSON
    assert all(not a.dtype.hasobject for a in arrays.values())
    b = decode_state(tree, arrays, {"Holder": Holder})
    pd.testing.assert_frame_equal(b.df, h.df)
    assert b.df.index.name == "id" and b.df["item"].dtype == object and b.df["item"].iloc[1] is None
    assert b.same_df is b.df and b.self_ref is b
    pd.testing.assert_series_equal(b.series, h.series)
    assert type(b.m) is sp.csr_matrix and (b.m != h.m).nnz == 0 and type(b.coo) is sp.coo_matrix
    assert b.d == {("bucket", 1): 0.5, "_base": 0.1, 3: [1, (2, 3)], "s": {1, 2}} and type(b.d["_base"]) is np.float64
    assert (b.t, b.td) == (h.t, h.td) and b.nat is pd.NaT
    assert b.scalars[:3] == h.scalars[:3] and [type(v) for v in b.scalars] == [type(v) for v in h.scalars]
    assert b.scalars[3:] == [float("inf"), None, True]
    assert b.dtype == np.float32 and b.nptype is np.float64
    assert b.strs[0] == "a" and b.strs[1] is None and np.isnan(b.strs[2]) and list(b.strs[3:]) == list(h.strs[3:])
    np.testing.assert_array_equal(b.lr.predict_proba(x), h.lr.predict_proba(x))


def test_unknown_types_are_refused_naming_the_attribute_path():
    import threading

    h = Holder()
    h.inner = Holder()
    h.inner.lock = threading.Lock()
    with pytest.raises(StateEncodeError, match=r"model\.inner\.lock: cannot save a _thread\.lock"):
        encode_state(h, {"Holder": Holder}, root="model")
    h.inner.lock = None
    h.inner.fn = lambda: 1
    with pytest.raises(StateEncodeError, match=r"model\.inner\.fn: cannot save a builtins\.function"):
        encode_state(h, {"Holder": Holder}, root="model")
    with pytest.raises(StateEncodeError, match=r"model: cannot save a .*Holder"):
        encode_state(h, {}, root="model")  # a class not in the caller's table
    h.inner.fn = np.array([object()], dtype=object)
    with pytest.raises(StateEncodeError, match=r"model\.inner\.fn: object array holds a object"):
        encode_state(h, {"Holder": Holder}, root="model")


def test_classes_come_from_the_table_never_from_the_file():
    tree, arrays = encode_state(Holder(), {"Holder": Holder})
    tree["cls"] = "os.system"
    with pytest.raises(FashionrecError, match="class 'os.system', which this fashionrec does not know"):
        decode_state(tree, arrays, {"Holder": Holder})
    tree = {"$": "lib", "cls": "builtins.eval", "state": {}, "id": 0}
    with pytest.raises(FashionrecError, match="library class 'builtins.eval', which is not allowed"):
        decode_state(tree, {}, {})


def test_artifact_key_changes_with_every_part(tmp_path):
    f = tmp_path / "customers.csv"
    f.write_text("customer_id\nc1\n")
    base = dict(data=[f], settings={"k": 50}, backbone="pypi:x:sha256:1")
    k0 = artifact_key(**base)
    assert artifact_key(**base) == k0 and len(k0) == 32
    assert artifact_key(**{**base, "settings": {"k": 51}}) != k0
    assert artifact_key(**{**base, "backbone": "pypi:x:sha256:2"}) != k0
    assert artifact_key(**{**base, "images": np.zeros(3)}) != k0
    assert artifact_key(data=base["settings"], settings=base["data"], backbone=base["backbone"]) != k0  # named parts
    f.write_text("customer_id\nc1\nc2\n")  # a customer added: the key changes
    k1 = artifact_key(**base)
    assert k1 != k0
    st = f.stat()
    f.write_text("customer_id\nc9\nc2\n")  # same size, same mtime, other content: still a new key
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert artifact_key(**base) != k1
    with pytest.raises(TypeError, match="cannot key a object"):
        artifact_key(x=object())


def test_offline_backbone_weights_id_follows_the_file_content(tmp_path):
    import torch

    from fashionrec.backbones import create_backbone

    w = tmp_path / "w.pth"
    torch.save(create_backbone("tiny_cnn", seed=1).model.state_dict(), w)
    id1 = create_backbone("tiny_cnn", weights=w).weights_id
    torch.save(create_backbone("tiny_cnn", seed=2).model.state_dict(), w)  # the file is replaced
    id2 = create_backbone("tiny_cnn", weights=w).weights_id
    assert id1.startswith(f"file:{w.resolve()}:") and id1 != id2
