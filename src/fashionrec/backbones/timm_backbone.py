"""Any timm model as a Backbone: the factory for every name that is not registered."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from fashionrec.backbones.base import Backbone, DataConfig, set_fallback_factory, weights_file_id
from fashionrec.errors import FashionrecError


def data_config_from_timm(model) -> DataConfig:
    cfg = timm.data.resolve_model_data_config(model)
    return DataConfig(
        int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bilinear")
    )


def load_state_dict_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FashionrecError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def create_timm_backbone(
    name: str, *, pretrained: bool = True, weights: str | Path | None = None, **kwargs
) -> Backbone:
    if name not in timm.list_models() and not timm.is_model(name):
        raise FashionrecError(
            f"unknown backbone '{name}': not registered and not a timm model "
            "(see `fashionrec backbones` / timm.list_models())"
        )
    use_hub = pretrained and weights is None
    try:
        model = timm.create_model(name, pretrained=use_hub, num_classes=0, **kwargs)
    except Exception as e:  # no network, no such pretrained tag...
        if use_hub:
            raise FashionrecError(
                f"could not download pretrained weights for '{name}' ({type(e).__name__}: {e}). Offline, use a "
                "packaged backbone (efficientnet_lite0, mobilenetv2), --weights PATH, or pretrained=False"
            ) from None
        raise
    weights_id = "random"
    if weights is not None:
        sd = {
            k: v
            for k, v in load_state_dict_file(weights).items()
            if not k.startswith(("fc.", "classifier.", "head.fc."))
        }
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or missing:
            raise FashionrecError(f"{weights}: does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        weights_id = weights_file_id(weights)
    elif use_hub:
        weights_id = f"timm:{model.pretrained_cfg.get('tag') or 'default'}"
    return Backbone(name, model, model.num_features, data_config_from_timm(model), weights_id)


set_fallback_factory(create_timm_backbone)
