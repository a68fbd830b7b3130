"""`--device` (embed, train, tag) and the device paths of feature extraction, fine-tuning and ALS, on the CPU."""

import json

import numpy as np
import pytest
import torch

import fashionrec.features as FT
from fashionrec.backbones import create_backbone
from fashionrec.cli import main
from fashionrec.cli.main import build_parser
from fashionrec.data.catalog import load_catalog
from fashionrec.features import InferencePath, Preprocess, embed_arrays, embed_image_files
from test_workflows import make_shape_catalog

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
IMAGE_MODEL_COMMANDS = ["embed", "train", "tag"]


def _subparser(name):
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return sub.choices[name]


@pytest.mark.parametrize("name", IMAGE_MODEL_COMMANDS)
def test_every_image_model_command_has_device_in_its_help(name):
    text = _subparser(name).format_help()
    assert "--device" in text and "auto" in text and "cuda" in text


def test_embed_device_cpu_end_to_end_gives_the_cpu_features(tmp_path):
    data = make_shape_catalog(tmp_path / "shop", per_class=2)
    out = tmp_path / "f.npz"
    argv = ["--workspace", str(tmp_path / "ws"), "-q", "embed", "--data", str(data), "--out", str(out)]
    argv += ["--backbone", "tiny_cnn", "--input-size", "32", "--inference", "fp32", "--device", "cpu"]
    assert main(argv) == 0
    bb = create_backbone("tiny_cnn", input_size=32)
    items = load_catalog(data).image_paths
    ref = embed_image_files(bb, items, progress=False, num_workers=0)  # no cache: computed here, on the CPU
    with np.load(out) as z:
        got = dict(zip(z["ids"].tolist(), z["features"]))
    assert sorted(got) == sorted(ref.ids) and len(got) == 6
    for i, row in zip(ref.ids, ref.features):
        np.testing.assert_allclose(got[i], row, atol=1e-5)


def test_train_device_cpu_end_to_end_finetunes(tmp_path):
    """`train --device cpu --method finetune` runs the fine-tuning loop on the device and writes a model that
    predicts (the shapes are learnable: the head starts from the linear probe)."""
    data = make_shape_catalog(tmp_path / "shapes", per_class=6)
    out = tmp_path / "run"
    argv = ["-q", "--workspace", str(tmp_path / "ws"), "train", "--data", str(data), "--label-column"]
    argv += ["product_group_name", "--out", str(out), "--input-size", "32", "--backbone", "tiny_cnn"]
    argv += ["--method", "finetune", "--stages", "head=1,all=1", "--device", "cpu"]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["finetune_history"] and m["n_test"] > 0 and 0.0 <= m["test_accuracy"] <= 1.0
    assert json.loads((out / "args.json").read_text())["device"] == "cpu"


@NO_GPU
@pytest.mark.parametrize("name", IMAGE_MODEL_COMMANDS)
def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys, name):
    data = make_shape_catalog(tmp_path / "shop", per_class=1)
    args = {
        "embed": ["--out", str(tmp_path / "f.npz")],
        "train": ["--label-column", "product_group_name", "--out", str(tmp_path / "run")],
        "tag": ["--label-column", "product_group_name", "--out", str(tmp_path / "t.csv")],
    }[name]
    assert main(["-q", name, "--data", str(data), *args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fashionrec: error: --device cuda") and "no CUDA GPU" in err
    assert not (tmp_path / "f.npz").exists() and not (tmp_path / "run").exists()


def test_library_device_cpu_is_the_default_and_cuda_features_get_their_own_cache_key():
    bb = create_backbone("tiny_cnn")
    x = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(embed_arrays(bb, x, progress=False), embed_arrays(bb, x, progress=False, device="cpu"))
    pre, path = Preprocess.for_backbone(bb), InferencePath()
    cpu = FT.model_key(bb, pre, path)
    assert FT.model_key(bb, pre, path, torch.device("cpu")) == cpu
    assert FT.model_key(bb, pre, path, torch.device("cuda")) != cpu  # mixed precision on CUDA: other numbers


def test_auto_path_on_cuda_is_eager_torch_without_probing(tmp_path):
    bb = create_backbone("tiny_cnn")

    def never():
        raise AssertionError("probed")

    got = FT.resolve_path("auto", bb, Preprocess.for_backbone(bb), 8, sample=never, workspace=tmp_path, device="cuda")
    assert got == InferencePath() and not (tmp_path / FT.PROBE_FILE).exists()


def test_onnx_on_cuda_without_the_cuda_provider_says_so_and_uses_the_cpu(caplog, monkeypatch):
    import logging

    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    FT.onnx._NO_CUDA_EP_WARNED.clear()
    assert FT.onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="fashionrec.features"):
        assert FT.onnx_providers(torch.device("cuda")) == ["CPUExecutionProvider"]
    assert any("CUDAExecutionProvider" in r.message for r in caplog.records)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert FT.onnx_providers(torch.device("cuda"))[0] == "CUDAExecutionProvider"


def test_one_onnx_exporter_serves_backbones_and_model_parts(tmp_path):
    """`export_onnx` writes a backbone that ONNX Runtime runs to torch's numbers; `onnx_function` (a part of a
    model, several outputs) goes through the same exporter."""
    bb = create_backbone("tiny_cnn").eval()
    x = torch.rand(3, 3, 28, 28)
    sess = FT.onnx.ort_session(FT.export_onnx(bb, x, tmp_path / "m.onnx"))
    with torch.no_grad():
        ref = bb(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], ref, atol=1e-4)
    run = FT.onnx_function(bb, lambda t: (bb(t), bb(t) * 2), x)
    a, b = run(x.numpy())
    np.testing.assert_allclose(a, ref, atol=1e-4) and np.testing.assert_allclose(b, 2 * ref, atol=1e-4)


def test_als_device_cpu_gives_the_cpu_factors_and_cuda_without_it_is_a_clear_error():
    import implicit.gpu

    from fashionrec.recommend.baselines import ALS, als_on_gpu

    assert als_on_gpu("cpu") is False
    assert als_on_gpu("auto") is bool(implicit.gpu.HAS_CUDA)
    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda"):
        ALS(device="tpu")
    if not implicit.gpu.HAS_CUDA:
        with pytest.raises(ValueError, match="implicit has no CUDA support"):
            ALS(device="cuda")


def test_als_fitted_on_the_gpu_comes_back_as_numpy(monkeypatch):
    """A GPU-fitted implicit model (it has `to_cpu`) is converted after fit: numpy factors, the same
    recommendations as the CPU fit."""
    from implicit.cpu.als import AlternatingLeastSquares

    from fashionrec.recommend.baselines import ALS
    from test_recommend import _world

    data = _world()
    cpu = ALS(factors=4, iterations=3, device="cpu").fit(data)

    class GpuLike:  # what implicit.gpu.als.AlternatingLeastSquares looks like to fashionrec
        def __init__(self, **params):
            self.inner = AlternatingLeastSquares(**params)

        def fit(self, x, show_progress=False):
            self.inner.fit(x, show_progress=show_progress)

        def to_cpu(self):
            return self.inner

    gpu = ALS(factors=4, iterations=3, device="cpu")
    monkeypatch.setattr(gpu, "_model", lambda: GpuLike(**gpu.params))
    gpu.fit(data)
    assert isinstance(gpu.model, AlternatingLeastSquares) and isinstance(gpu.model.item_factors, np.ndarray)
    np.testing.assert_allclose(gpu.model.item_factors, cpu.model.item_factors, rtol=1e-5)
    user = data.user_ids[0]
    assert [r.item for r in gpu.recommend(user, k=3)] == [r.item for r in cpu.recommend(user, k=3)]
