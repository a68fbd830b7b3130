"""Inference passes that do not learn (caching, evaluation, tagging): ONNX Runtime on the CPU where it matches torch,
else torch on the model's device (mixed precision on CUDA, `fashionrec.device.autocast`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def model_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _fmt(model: nn.Module) -> torch.memory_format:
    from fashionrec.training.finetune import memory_format_of

    return memory_format_of(model)


def _runner(onnx: bool, owner: nn.Module, fn, shape: tuple[int, ...]):
    """`fn` (a tensor or a tuple of tensors from `owner`'s weights, in eval mode) as float32 array -> tuple of arrays:
    through ONNX Runtime when `onnx`, `owner` is on the CPU and `features.onnx_function` (checked on a fixed random
    batch of `shape`) gives it, else torch on `owner`'s device. The runner's `engine` says which ("onnx" or
    "torch")."""
    from fashionrec.device import autocast

    owner.eval()
    device = model_device(owner)
    if onnx and device.type == "cpu":
        from fashionrec.features import onnx_function

        g = torch.Generator().manual_seed(0)
        ort_run = onnx_function(owner, fn, torch.randn((8,) + tuple(shape), generator=g))
        if ort_run is not None:

            def onnx_pass(x: np.ndarray) -> tuple[np.ndarray, ...]:
                return tuple(ort_run(x))

            onnx_pass.engine = "onnx"
            return onnx_pass
    fmt = _fmt(owner) if len(shape) == 3 else torch.contiguous_format

    @torch.no_grad()
    def torch_pass(x: np.ndarray) -> tuple[np.ndarray, ...]:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device).contiguous(memory_format=fmt)
        with autocast(device):
            out = fn(t)
        return tuple(o.float().cpu().numpy() for o in ((out,) if isinstance(out, torch.Tensor) else out))

    torch_pass.engine = "torch"
    return torch_pass
