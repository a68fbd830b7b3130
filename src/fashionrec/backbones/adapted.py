"""A folder written by `fashionrec adapt` (weights.safetensors + fashionrec_model.json) used as a backbone.

The folder format and its model classes belong to training/adapt.py; this plug-in only recognises the folder.
training sits above backbones (it imports them), so its loader is imported when such a folder is actually asked
for: importing fashionrec.backbones never imports training.
"""

from __future__ import annotations

from fashionrec.backbones.base import Backbone, is_adapted_model_dir, register_backbone_source


def adapted_backbone(path) -> Backbone:
    # Its preprocessing is part of the model: an input_size different from the trained one is not applied
    # (predictions must see what training saw).
    from fashionrec.training.adapt import load_adapted

    return load_adapted(path).backbone


register_backbone_source(is_adapted_model_dir, adapted_backbone)
