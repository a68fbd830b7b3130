"""Settings of `fashionrec adapt` (`AdaptConfig`), the model folder's format names, and the callbacks the recipe
reports through (`AdaptCallbacks`: the training code prints nothing itself)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fashionrec.config import ADAPTED_MODEL_JSON, DEFAULT_BACKBONE, TAG_COLUMNS

FORMAT = "fashionrec-adapted-model"
FORMAT_VERSION = 1
CONFIG_FILE = ADAPTED_MODEL_JSON
WEIGHTS_FILE = "weights.safetensors"
DEFAULT_LABEL_COLUMNS = TAG_COLUMNS  # "auto": the H&M columns present, else every column of labels.csv


@dataclass
class AdaptCallbacks:
    """How a run reports. `log(message)`: one line per event (stage done, figures); `progress(stage, done, total,
    info)`: called often (every training step, every cached batch), the receiver decides what to show and when.
    Both default to doing nothing; `console_callbacks()` prints."""

    log: Callable[[str], None] = lambda message: None
    progress: Callable[[str, int, int, dict], None] = lambda stage, done, total, info: None


@dataclass(frozen=True)
class AdaptConfig:
    backbone: str = DEFAULT_BACKBONE
    # a local weights file for `backbone` (any timm name: state_dict as .pth/.safetensors); None: its packaged or
    # timm pretrained weights
    weights: str | None = None
    input_size: int | None = None  # None: the photos' padded side (`auto_input_size`), at most ADAPT_MAX_INPUT_SIZE
    # DEFAULT_LABEL_COLUMNS means auto: the H&M attribute columns present, else every column of labels.csv but the
    # id and the group column
    label_columns: tuple[str, ...] = DEFAULT_LABEL_COLUMNS
    # same value = same product (positives). auto: the first 7 digits of H&M ids, else a product_code column, else
    # none: every photo is its own product and two views of it (mirror image, greyscale) are the positives
    group_column: str = "auto"
    holdout: float = 0.15
    embed_dim: int = 256
    train_blocks: int = 3  # blocks trained from the top (+ the final conv); the rest stays ImageNet, cached
    max_minutes: float = 58.0  # whole run: caching + training + evaluation (the README's run: 56.4 min on 2 cores)
    # each training stage ends after this many passes over the training photos if its time share is not used up
    # first (H&M: 10 head-stage and 26 trunk-stage passes in the hour; a 3,191-photo folder finishes early)
    max_epochs: float | None = 40.0
    head_fraction: float = 0.1  # share of the training time with the trunk frozen (stage 1: heads + embedding)
    lr: float = 2e-3  # heads and embedding layer
    trunk_lr: float = 6e-4  # top block; each block below gets lr_decay times the one above
    lr_decay: float = 0.7
    weight_decay: float = 1e-4
    products_per_batch: int = 32  # x 2 photos each, plus as many labelled photos
    labelled_per_batch: int = 32
    temperature: float = 0.1
    metric_weight: float = 1.0
    # cross-batch memory (XBM, Wang et al. 2020): the metric loss also compares each batch with this many embeddings
    # of earlier steps (pytorch-metric-learning's CrossBatchMemory): 4,096 negatives instead of 95; 0 = in-batch only
    memory_size: int = 4096
    # upper stage: BatchNorm keeps its ImageNet statistics (scale and shift still train): no loss jump at the stage
    # switch, and trunk steps 1.28x faster on CPU (161 vs 126 photos/s)
    freeze_bn: bool = True
    label_smoothing: float = 0.1
    min_class_count: int = 2
    flips: bool = True
    gray: bool = True  # greyscale views: cached, trained on (metric loss; colour heads skip them) and averaged in
    # the views the folder's embedding averages (its `embedding_tta`): none, flip, gray or flip+gray; None: every view
    # the run caches (flips, gray). Fewer views embed faster (one view: 4x fewer passes than flip+gray)
    embedding_tta: str | None = None
    refit_heads: bool = True  # after training: heads refit on pooled taps + pre-logits (`refit_heads`)
    # the refit colour heads also read a colour histogram of the garment (`training/colour.py`): +3.4 points
    colour_features: bool = True
    # ... and a LightGBM model of that histogram alone multiplies in (`training/colour.py`; needs colour_features)
    colour_booster: bool = True
    head_c: float = 0.05  # inverse L2 strength of the refit heads (measured 0.02-0.2: within 0.5 points)
    # inference passes (caching the lower part, ImageNet and adapted features for evaluation) through ONNX Runtime
    # where it matches torch (`features.onnx_function`): caching 3.1x faster on 2 cores, the time goes to training
    onnx: bool = True
    max_steps: int | None = None  # tests: stop after this many steps
    init_from: str | None = None  # continue from a model folder of an earlier run (same data, split and heads)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (`fashionrec.device`): CUDA with mixed precision; the CPU in float32

    def __post_init__(self):
        if not 0 < self.holdout < 1:
            raise ValueError("holdout must be in (0, 1)")
        if self.max_minutes <= 0:
            raise ValueError("max_minutes must be positive")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError("max_epochs must be positive (or None: no limit but the time)")
        if self.embedding_tta is not None:
            if self.embedding_tta not in ("none", "flip", "gray", "flip+gray"):
                raise ValueError(f"embedding views must be none, flip, gray or flip+gray; got {self.embedding_tta!r}")
            if ("flip" in self.embedding_tta and not self.flips) or ("gray" in self.embedding_tta and not self.gray):
                raise ValueError(
                    f"embedding views {self.embedding_tta} need those views cached: drop --no-flips/--no-gray"
                )
        batch = 2 * self.products_per_batch + self.labelled_per_batch
        if self.memory_size and not batch <= self.memory_size:
            raise ValueError(
                f"memory_size must be 0 (off) or at least the batch size ({batch}); got {self.memory_size}"
            )
