"""Domain-shift handling.

1. Input mapping (features.Preprocess.invert): Fashion-MNIST garments are light on black; ImageNet shop photos
   are dark on light. Inverting puts the greyscale images on the backbone's side of the shift.
2. BatchNorm statistics re-estimation (AdaBN, Li et al. 2016): the backbone's BN layers keep ImageNet means and
   variances; re-estimating them on unlabelled target images aligns the activations with the target domain.
   It needs no labels, so it can use every target image (train and test inputs alike).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fashionrec.backbones.base import Backbone
from fashionrec.features import Preprocess


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's convolutions are stored NHWC (inputs must match, or each conv converts)."""
    w = next((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return (
        torch.channels_last
        if w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        else torch.contiguous_format
    )


def adapt_batchnorm(
    backbone: Backbone,
    images: np.ndarray,
    preprocess: Preprocess,
    *,
    batch_size: int = 256,
    max_images: int = 10_000,
    seed: int = 0,
    progress: bool = True,
    only: list | None = None,
) -> Backbone:
    """Reset every BN layer's running statistics and re-estimate them on `images` (uint8, unlabelled).

    Weights are untouched: only running_mean / running_var change. Returns the same backbone, in eval mode.
    """
    bns = (
        only if only is not None else [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    )
    if not bns:
        return backbone
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(images))[:max_images]
    was_training = backbone.training
    backbone.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
        m.train()
    fmt = memory_format_of(backbone)
    dev = next(backbone.parameters()).device  # batches go where the weights are (the CPU, or a fine-tuning GPU)
    with torch.no_grad():
        for s in tqdm(range(0, len(idx), batch_size), desc="re-estimate BN", unit="batch", disable=not progress):
            x = preprocess.arrays_to_tensor(images[np.sort(idx[s : s + batch_size])])
            backbone(x.to(dev).contiguous(memory_format=fmt))
    for m in bns:
        m.momentum = 0.1
        m.eval()
    return backbone.train(was_training)
