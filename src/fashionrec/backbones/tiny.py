"""A tiny CNN: fast tests, and the "small CNN from scratch" baseline of the label-efficiency experiment."""

from __future__ import annotations

import torch
from torch import nn

from fashionrec.backbones.base import Backbone, DataConfig, register_backbone, weights_file_id
from fashionrec.config import DEFAULT_MEAN, DEFAULT_STD


class TinyCNN(nn.Module):
    def __init__(self, width: int = 32, embed_dim: int = 64):
        super().__init__()

        def stage(i, o):
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
                nn.Conv2d(o, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.blocks = nn.Sequential(stage(3, width), stage(width, width * 2), stage(width * 2, embed_dim))
        self.num_features = embed_dim

    def forward_features(self, x):
        return self.blocks(x)

    def forward_head(self, x, pre_logits: bool = True):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


@register_backbone("tiny_cnn")
def tiny_cnn(
    pretrained: bool = False, weights=None, width: int = 32, embed_dim: int = 64, seed: int = 0, **_
) -> Backbone:
    # Always random init (seeded, so tests and cache keys are reproducible); `weights` loads a trained one.
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = TinyCNN(width, embed_dim)
    weights_id = f"random-seed{seed}-w{width}-d{embed_dim}"
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        weights_id = weights_file_id(weights)
    return Backbone(
        "tiny_cnn", model, embed_dim, DataConfig(28, DEFAULT_MEAN, DEFAULT_STD), weights_id, blocks=list(model.blocks)
    )
