"""Running a backbone over a batch of images on one inference path and device (`run_backbone`), and the key of
the numbers it computes (`model_key`, part of every feature-cache key)."""

from __future__ import annotations

import hashlib

import torch

from fashionrec.backbones.base import Backbone
from fashionrec.device import autocast
from fashionrec.features.onnx import module_device, onnx_session
from fashionrec.features.paths import InferencePath
from fashionrec.features.preprocess import Preprocess


def to_device(device=None) -> torch.device:
    """None -> the CPU (the library's default: results as they always were); a name or torch.device as given
    (`fashionrec.device.resolve_device` resolves 'auto' and checks that CUDA is there)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str):
        from fashionrec.device import resolve_device

        return resolve_device(device)
    return torch.device(device)


def run_backbone(
    backbone: Backbone, x: torch.Tensor, path: InferencePath = InferencePath(), device=None
) -> torch.Tensor:
    """The backbone's features of one batch of normalised inputs `x` ((B, 3, S, S), `Preprocess.arrays_to_tensor`)
    on `path`, as float32 on the CPU. `device`: where it runs (default: where the backbone's weights are; the
    backbone should have been through `prepare_for_path`). On CUDA the torch paths run under mixed precision
    (`fashionrec.device.autocast`); the ONNX paths on the CUDAExecutionProvider where onnxruntime has it."""
    if path.is_auto:
        raise ValueError("InferencePath.auto() must be resolved before the forward pass (features.resolve_path)")
    device = module_device(backbone) if device is None else torch.device(device)
    if path.engine == "onnx":
        sess = onnx_session(backbone, x, path, device=device)
        return torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]).float()
    x = x.to(device, non_blocking=True)
    if path.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if device.type == "cuda":
            with autocast(device):
                out = backbone(x)
        elif path.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = backbone(x)
        else:
            out = backbone(x)
    return out.float().cpu()


def prepare_for_path(backbone: Backbone, path: InferencePath, device=None) -> Backbone:
    """The backbone in eval mode, in `path`'s memory format, its weights on `device` (None: where they are; the
    ONNX paths export from the CPU, so their weights stay there)."""
    backbone.eval()
    if device is not None and path.engine == "torch":
        backbone.to(torch.device(device))
    if path.channels_last and path.engine == "torch":
        backbone.to(memory_format=torch.channels_last)
    return backbone


def model_key(backbone: Backbone, pre: Preprocess, path: InferencePath, device=None) -> str:
    """What the features of (backbone, preprocessing, path) are cached under. Features computed on CUDA (mixed
    precision, other kernels) are not the CPU's numbers: they get their own key; the CPU's keys are unchanged."""
    parts = [backbone.name, backbone.feature_key(), pre.key(), path.numerics_key()]
    if device is not None and torch.device(device).type == "cuda":
        parts.append(f"cuda-{path.engine}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
