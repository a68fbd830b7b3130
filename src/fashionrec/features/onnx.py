"""ONNX export (one exporter for whole backbones and for parts of a model) and ONNX Runtime sessions, on the
CUDAExecutionProvider where the device is CUDA and onnxruntime has it, else on the CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashionrec.backbones.base import Backbone
from fashionrec.features.paths import InferencePath
from fashionrec.features.quantize import (
    INT8_RECIPE,
    calibration_hash,
    int8_calibration_of,
    quantize_int8,
    warn_int8_once,
)

log = logging.getLogger(__name__)


def export_onnx(
    model: nn.Module, example: torch.Tensor, out: str | Path, *, output_names: tuple[str, ...] = ("y",)
) -> Path:
    """Export `model` (eval mode, on the CPU) to ONNX with a dynamic batch axis: input "x", outputs `output_names`.
    The one exporter of fashionrec: whole backbones (`onnx_session`) and parts of a model (`onnx_function`)."""
    import warnings

    names = list(output_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example[:2].cpu(),),
            str(out),
            input_names=["x"],
            output_names=names,
            dynamic_axes={"x": {0: "b"}, **{n: {0: "b"} for n in names}},
            opset_version=17,
            dynamo=False,
        )
    return Path(out)


def onnx_providers(device=None) -> list[str]:
    """ONNX Runtime execution providers for `device`: CUDA first where the device is CUDA and onnxruntime has
    the CUDAExecutionProvider (else a warning, once, and the CPU), the CPU otherwise."""
    import onnxruntime as ort

    if device is None or torch.device(device).type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if not _NO_CUDA_EP_WARNED:
        _NO_CUDA_EP_WARNED.append(1)
        log.warning(
            "onnxruntime %s has no CUDAExecutionProvider (install onnxruntime-gpu): the ONNX path runs on the CPU",
            ort.__version__,
        )
    return ["CPUExecutionProvider"]


_NO_CUDA_EP_WARNED: list = []


def ort_session(model_path: str | Path, device=None):
    """An ONNX Runtime session of the model file on `device` (`onnx_providers`), with torch's CPU thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(model_path), opts, providers=onnx_providers(device))


class _Method(nn.Module):
    """`fn` (a method of `owner`, with its settings bound) as a module's forward, so `owner`'s weights are the
    exported graph's parameters."""

    def __init__(self, owner: nn.Module, fn: Callable):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def onnx_function(
    owner: nn.Module, fn: Callable, example: torch.Tensor, *, rtol: float = 1e-3
) -> Callable[[np.ndarray], list[np.ndarray]] | None:
    """`fn(x)` (a tensor or a tuple of tensors from `owner`'s weights, in eval mode) run by ONNX Runtime fp32:
    returns run(x: float32 array) -> [outputs as arrays]. The exported graph is checked against torch on `example`
    (largest difference <= rtol x the largest output); None where onnxruntime is missing, the export fails or the
    check does, and the caller runs torch. Measured on 2 cores, Lite0 at 160 px, real photos: the layers below block
    4, 143 -> 445 photos/s; blocks 4-6 + tail, 684 -> 671 (no gain); the whole network, 98 -> 269
    (`benchmarks/onnx_speed.py`, `docs/results/onnx_speed.txt`)."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return None
    owner.eval()
    mod = _Method(owner, fn).eval()
    try:
        with torch.no_grad():
            ref = fn(example)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        names = [f"y{i}" for i in range(len(refs))]
        with tempfile.TemporaryDirectory(prefix="fashionrec-onnx-") as tmp:
            sess = ort_session(export_onnx(mod, example, Path(tmp) / "fn.onnx", output_names=tuple(names)))
        got = sess.run(names, {"x": np.ascontiguousarray(example.float().numpy())})
        for r, g in zip(refs, got):
            r = r.float().numpy()
            if r.shape != g.shape or np.abs(r - g).max() > rtol * max(1.0, float(np.abs(r).max())):
                log.warning("ONNX Runtime output differs from torch (%s); running torch", r.shape)
                return None
    except Exception as e:  # an op the exporter or the runtime lacks: torch runs it
        log.warning("ONNX Runtime unavailable for this model (%s: %s); running torch", type(e).__name__, e)
        return None

    def run(x: np.ndarray) -> list[np.ndarray]:
        return sess.run(names, {"x": np.ascontiguousarray(x, dtype=np.float32)})

    return run


_ONNX_SESSIONS: dict = {}


def onnx_session(
    backbone: Backbone, x: torch.Tensor, path: InferencePath, calib: torch.Tensor | None = None, device=None
):
    """Export once per (model, input size, precision, device). int8 is calibrated on `calib` (else the inputs the
    embed function registered, else the first batch `x`) with INT8_RECIPE; it is an explicit opt-in only (warned
    once): its features are not fp32's."""
    import tempfile

    h = None
    if path.precision == "int8" and calib is None:
        h, calib = int8_calibration_of(backbone)
        if calib is None or tuple(calib.shape[1:]) != tuple(x.shape[1:]):
            calib, h = x, calibration_hash(x)
    elif calib is not None:
        h = calibration_hash(calib)
    dev = "cpu" if device is None else str(torch.device(device))
    int8 = h if path.precision == "int8" else None
    key = (id(backbone), backbone.feature_key(), tuple(x.shape[1:]), path.precision, int8, dev)
    sess = _ONNX_SESSIONS.get(key)
    if sess is not None:
        return sess
    # the session holds the model in memory: its files go once it is built
    with tempfile.TemporaryDirectory(prefix="fashionrec-onnx-") as tmp_dir:
        tmp = Path(tmp_dir)
        was = module_device(backbone)
        model_path = export_onnx(backbone.to("cpu"), x, tmp / "model.onnx")
        backbone.to(was)
        if path.precision == "int8":
            warn_int8_once(log)
            model_path = quantize_int8(model_path, tmp / "model.int8.onnx", calib[: INT8_RECIPE.calib_images].numpy())
        sess = ort_session(model_path, device)
    _ONNX_SESSIONS[key] = sess
    return sess


def module_device(module: nn.Module) -> torch.device:
    """Where the module's weights are (the CPU for a module without any)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
