"""The Backbone contract, the registry and the factory; no plug-in is imported here.

Plug-ins register themselves when imported (timm's `register_model` shape) and `fashionrec.backbones` imports the
built-in ones: `@register_backbone("name")` for names (offline.py, tiny.py), `register_backbone_source(matches,
factory)` for things that are not names (a `fashionrec adapt` folder: adapted.py), and `set_fallback_factory` for
any other name (timm_backbone.py passes it to timm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fashionrec.artifacts.keys import file_fingerprint
from fashionrec.config import (
    ADAPTED_MODEL_JSON,
    DEFAULT_BACKBONE,  # noqa: F401  (re-exported; named once, in config)
)
from fashionrec.errors import FashionrecError

_REGISTRY: dict[str, Callable[..., Backbone]] = {}
_SOURCES: list[tuple[Callable[[object], bool], Callable[..., Backbone]]] = []
_FALLBACK: list[Callable[..., Backbone]] = []


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing a backbone expects, taken from the model (timm `resolve_model_data_config`), never hard-coded."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def as_dict(self) -> dict:
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


class Backbone(nn.Module):
    """An image model cut at its pre-logits: `forward(x)` gives `(B, embed_dim)` embeddings.

    Stages are named as in timm: `forward_features` (spatial map), `forward_head(pre_logits=True)` (pooled).
    `blocks` lists the trunk's stages in order, so fine-tuning can unfreeze "the last N blocks".
    `weights_id` says where the weights came from; it is part of every feature-cache key.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        embed_dim: int,
        data_config: DataConfig,
        weights_id: str,
        blocks: list[nn.Module] | None = None,
    ):
        super().__init__()
        self.name = name
        self.model = model
        self.embed_dim = embed_dim
        self.data_config = data_config
        self.weights_id = weights_id
        self._blocks = blocks
        self.taps: tuple = ("final",)
        self._split_ok: bool | None = None
        self.flip_tta = False  # embed each image and its mirror image, and average (test-time augmentation)
        self.gray_tta = False  # also embed its greyscale version (and that one's mirror image), and average

    def feature_key(self) -> str:
        """Identity of what `forward` computes: weights + which layers are pooled (+ flip averaging). Part of every
        cache key."""
        key = self.weights_id if self.taps == ("final",) else f"{self.weights_id}+taps:{','.join(map(str, self.taps))}"
        return key + ("+flip" if self.flip_tta else "") + ("+gray" if self.gray_tta else "")

    def set_taps(self, taps) -> Backbone:
        """Embed with globally pooled outputs of the given trunk blocks (ints) and/or 'final' (pre-logits), concatenated.

        Why: under a large domain shift (28 px greyscale vs ImageNet photos) mid-level features transfer better than
        the last, most ImageNet-specific ones (Yosinski et al. 2014). On Fashion-MNIST with EfficientNet-Lite0, blocks
        4+5 beat the pre-logits by about 7 points at 10 labels per class (see README).
        """
        taps = tuple(t if t == "final" else int(t) for t in (taps if isinstance(taps, (list, tuple)) else [taps]))
        n = len(self.blocks)
        for t in taps:
            if t != "final" and not -n <= t < n:
                raise ValueError(f"tap {t} out of range: {self.name} has {n} blocks")
        self.taps = taps
        with torch.no_grad():
            was_training = self.training
            self.eval()
            self.embed_dim = int(self(torch.zeros(1, 3, 64, 64)).shape[1])
            self.train(was_training)
        return self

    @property
    def blocks(self) -> list[nn.Module]:
        if self._blocks is not None:
            return self._blocks
        family = _family(self.model)
        if family is not None:
            return _FAMILIES[family][0](self.model)
        if hasattr(self.model, "blocks"):
            return list(self.model.blocks)
        return [m for m in self.model.children()]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return self.model.forward_head(feats, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta or self.gray_tta:  # one batch of every view; the mean of their outputs
            f = self.forward_views(self.views(x))
            n_views = (1 + self.flip_tta) * (1 + self.gray_tta)
            return self.average_views(*f.reshape(n_views, -1, f.shape[1]).unbind(0))  # static view count: ONNX-safe
        return self.forward_views(x)

    def views(self, x: torch.Tensor, gray: bool | None = None) -> torch.Tensor:
        """The test-time views of a normalised batch, stacked: the photo, [its greyscale version], then [the mirror
        image of each]. `gray=False`: the colour views only (what tagging heads read)."""
        vs = [x, self.to_gray(x)] if (self.gray_tta if gray is None else gray) else [x]
        if self.flip_tta:
            vs += [v.flip(-1) for v in vs]
        return torch.cat(vs) if len(vs) > 1 else x

    def to_gray(self, x: torch.Tensor) -> torch.Tensor:
        """Greyscale version of a normalised RGB batch (ITU-R 601 luma), normalised again: colour-blind input."""
        mean = torch.tensor(self.data_config.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.data_config.std, dtype=x.dtype).view(1, 3, 1, 1)
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        g = ((x * std + mean) * luma).sum(1, keepdim=True)
        return (g - mean) / std

    @staticmethod
    def average_views(*parts: torch.Tensor) -> torch.Tensor:
        return torch.stack(parts).mean(0)

    def forward_views(self, x: torch.Tensor) -> torch.Tensor:
        """One view's features (`forward` without the flip averaging)."""
        if self.taps == ("final",):
            return self.forward_head(self.forward_features(x))
        blocks = self.blocks
        captured: dict[int, torch.Tensor] = {}
        handles = [
            blocks[t].register_forward_hook(lambda m, i, o, t=t: captured.__setitem__(t, o))
            for t in set(self.taps)
            if t != "final"
        ]
        try:
            final = self.forward_head(self.forward_features(x)) if "final" in self.taps else None
            if final is None:
                self.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        parts = [final if t == "final" else captured[t].mean((2, 3)) for t in self.taps]
        return torch.cat(parts, 1)

    # ---- split forward: a frozen lower part (computed once and cached) and a trainable upper part
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """What runs before `blocks[0]`, in the timm family's own `forward_features` order (`_FAMILIES`)."""
        family = _family(self.model)
        return _FAMILIES[family][1](self.model, x) if family is not None else x

    def forward_tail(self, x: torch.Tensor) -> torch.Tensor:
        """What runs after the last block, before `forward_head` (EfficientNet: conv_head + bn2; ConvNeXt: norm_pre;
        ViT: norm; ResNet and the others: nothing)."""
        family = _family(self.model)
        return _FAMILIES[family][2](self.model, x) if family is not None else x

    def supports_split(self) -> bool:
        """True when forward_upper(forward_lower(x, k), k) is the model's own pre-logits: checked once on a small
        random batch (eval mode, k = half the blocks), so a family the split does not know is refused rather than
        trained wrongly."""
        if self.taps != ("final",) or len(self.blocks) < 2:
            return False
        if self._split_ok is None:
            self._split_ok = _split_matches(self)
        return self._split_ok

    @property
    def fixed_input_size(self) -> bool:
        """A model whose input size is part of its weights (timm ViT: position embeddings per patch)."""
        pe = getattr(self.model, "patch_embed", None)
        return pe is not None and not getattr(pe, "dynamic_img_size", False)

    def forward_lower(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Stem + blocks[:k]: the spatial map the upper part starts from."""
        h = self.forward_stem(x)
        for b in self.blocks[:k]:
            h = b(h)
        return h

    def forward_upper(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """blocks[k:] + tail + pooled pre-logits."""
        for b in self.blocks[k:]:
            h = b(h)
        return self.forward_head(self.forward_tail(h))

    def with_input_size(self, size: int) -> Backbone:
        """Same model, smaller/larger inputs (CNNs are size-agnostic); 96 px is ~8x cheaper than 224."""
        self.data_config = DataConfig(size, self.data_config.mean, self.data_config.std, self.data_config.interpolation)
        return self


# timm families the split knows: (blocks, stem, tail), each in the order of the family's `forward_features`
_FAMILIES: dict[str, tuple[Callable, Callable, Callable]] = {
    # EfficientNet, MobileNetV3, MixNet...: conv_stem + bn1, blocks, [conv_head + bn2]
    "efficientnet": (
        lambda m: list(m.blocks),
        lambda m, x: m.bn1(m.conv_stem(x)),
        lambda m, x: m.bn2(m.conv_head(x)) if hasattr(m, "conv_head") and hasattr(m, "bn2") else x,
    ),
    # ResNet, ResNeXt, SE-ResNet...: conv1 + bn1 + act1 + maxpool, layer1..4
    "resnet": (
        lambda m: [m.layer1, m.layer2, m.layer3, m.layer4],
        lambda m, x: m.maxpool(m.act1(m.bn1(m.conv1(x)))),
        lambda m, x: x,
    ),
    # ConvNeXt: stem, stages, norm_pre
    "convnext": (lambda m: list(m.stages), lambda m, x: m.stem(x), lambda m, x: m.norm_pre(x)),
    # ViT, DeiT: patch_embed + position embedding + norm_pre, blocks (tokens, not maps), norm
    "vit": (
        lambda m: list(m.blocks),
        lambda m, x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))),
        lambda m, x: m.norm(x),
    ),
}


def _family(model: nn.Module) -> str | None:
    """Which `_FAMILIES` entry runs `model` in parts, read from its structure (timm's attribute names)."""
    has = lambda *names: all(hasattr(model, n) for n in names)  # noqa: E731
    if has("conv_stem", "bn1", "blocks"):
        return "efficientnet"
    if has("conv1", "bn1", "act1", "maxpool", "layer4"):
        return "resnet"
    if has("stem", "stages", "norm_pre"):
        return "convnext"
    if has("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm"):
        return "vit"
    return None


@torch.no_grad()
def _split_matches(bb: Backbone) -> bool:
    was_training = bb.training
    bb.eval()
    try:
        size = bb.data_config.input_size if bb.fixed_input_size else min(bb.data_config.input_size, 64)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        x = x.to(next(bb.parameters()).device)
        k = len(bb.blocks) // 2
        full = bb.forward_head(bb.forward_features(x))
        return bool(torch.allclose(bb.forward_upper(bb.forward_lower(x, k), k), full, atol=1e-4, rtol=1e-3))
    except (RuntimeError, ValueError, AttributeError, TypeError, AssertionError):
        return False
    finally:
        bb.train(was_training)


def weights_file_id(path: str | Path) -> str:
    """Identity of a weights file for cache keys: its path and its content (size + sha256, hashed once per
    (path, size, mtime)), so a replaced file changes every key built on it."""
    return f"file:{Path(path).resolve()}:{file_fingerprint(path)}"


def register_backbone(name: str) -> Callable:
    def wrap(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def register_backbone_source(matches: Callable[[object], bool], factory: Callable[..., Backbone]) -> None:
    """Backbones named by something other than a registered name (e.g. a model folder): tried first, in order.
    `factory(name)` builds it; its preprocessing is its own (input_size is not applied)."""
    _SOURCES.append((matches, factory))


def set_fallback_factory(factory: Callable[..., Backbone]) -> None:
    """What builds a name that is not registered (timm_backbone: any timm model name)."""
    _FALLBACK[:] = [factory]


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def is_adapted_model_dir(name) -> bool:
    """A folder written by `fashionrec adapt` (weights + fashionrec_model.json)."""
    try:
        return Path(str(name)).is_dir() and (Path(str(name)) / ADAPTED_MODEL_JSON).is_file()
    except OSError:
        return False


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    input_size: int | None = None,
    taps=None,
    **kwargs,
) -> Backbone:
    """Build a backbone by registered name, or any timm model name.

    `pretrained=False` gives random init (ablations). `weights` loads a local state_dict file.
    `input_size` overrides the square input resolution (preprocessing otherwise comes from the model).
    """
    for matches, source in _SOURCES:
        if matches(name):
            bb = source(name)
            if taps is not None and tuple(taps) != ("final",):
                bb.set_taps(taps)
            return bb.eval()
    key = name.lower().replace("-", "_")
    factory = _REGISTRY.get(key)
    if factory is not None:
        bb = factory(pretrained=pretrained, weights=weights, **kwargs)
    elif _FALLBACK:
        bb = _FALLBACK[0](name, pretrained=pretrained, weights=weights, **kwargs)
    else:
        raise FashionrecError(f"unknown backbone '{name}'; registered: {list_backbones()}")
    if input_size is not None:
        bb.with_input_size(int(input_size))
    if taps is not None and tuple(taps) != ("final",):
        bb.set_taps(taps)
    return bb.eval()
