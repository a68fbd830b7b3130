"""Fashion-adapted backbones: fine-tune on a catalog's own labels plus a same-product metric loss.

One backbone, several classification heads (product type, group, colour, ...; missing labels masked) and a
supervised-contrastive objective (pytorch-metric-learning's `SupConLoss`) in which photos of the same product
(`product_code`, the first 7 digits of an H&M `article_id`) are positives. Products, never photos, are split
into training and held-out parts.

CPU budget: the backbone is split at block `k`. The lower part (stem + blocks[:k]) stays ImageNet and is
computed once per photo in four views (the photo, its greyscale version and their mirror images) and cached in
the workspace; only blocks[k:], the final conv, the embedding layer and the heads train, each photo in a random
view (colour heads skip the grey ones). Training is time-boxed (`max_minutes`): the learning rate follows the wall
clock (warm-up, cosine decay), so a busy machine trains fewer steps rather than overrunning. At the end the heads
are refit by logistic regression on the pooled outputs of blocks k-1..n-2 plus the pre-logits (`refit_heads`), the
colour heads also on a colour descriptor of the garment, times a LightGBM model of that descriptor alone
(`training/colour.py`), and the folder embeds every photo as the average of its four views (`embedding_tta`
"flip+gray"): grey views make another colour of the same product the nearest neighbour more often.

The result is a model folder:
- `weights.safetensors`: every tensor (no pickle: loading runs no code);
- `fashionrec_model.json`: format version, base backbone, input size and preprocessing, embedding size,
  heads and their class lists, the held-out products, training settings;
- `colour_booster.<head index>.txt`: the colour heads' LightGBM models (LightGBM's text format; SHA-256 in the JSON);
- `metrics.json`: held-out tagging accuracy / macro-F1 and same-product retrieval, ImageNet vs adapted.

`create_backbone(folder)` gives its embedding backbone (L2-normalised, used by embed/similar/recommenders);
`load_adapted(folder)` gives the backbone plus the heads (tagging, predict).

Any labelled folder works: `images/` + `labels.csv` with one or more label columns and optionally a group column
(same value = same product); without groups, two views of one photo (mirror image, greyscale) are the positives.
Each stage also ends after `max_epochs` passes over the training photos, so a small folder does not fill the hour.

Layout: `config` (settings, format names, callbacks), `labels` (what a folder's labels say), `data` (everything
training reads, prepared once), `lower_cache` (the frozen lower part, cached), `loop` (the two training stages),
`heads` (refit, colour boosters), `calibration`, `model` (`AdaptedModel`), `io` (the folder); the held-out figures
in `evaluation/adapt.py`, the recipe in `workflows/adapt.py`.
"""

from fashionrec.data.products import product_groups, split_products  # noqa: F401  (imported from here by users)
from fashionrec.evaluation.adapt import format_adapt_metrics, heldout_tagging
from fashionrec.training.adapt.calibration import calibrate_on_heldout
from fashionrec.training.adapt.config import (
    CONFIG_FILE,
    DEFAULT_LABEL_COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    AdaptCallbacks,
    AdaptConfig,
)
from fashionrec.training.adapt.heads import head_features, head_probs, head_taps_for, refit_heads, upper_pass
from fashionrec.training.adapt.io import HeldOut, load_adapted, load_heldout, save_adapted
from fashionrec.training.adapt.labels import catalog_for_training, encode_labels
from fashionrec.training.adapt.loop import _set_train_mode  # noqa: F401  (tests)
from fashionrec.training.adapt.lower_cache import lower_maps, trunk_prelogits, view_names
from fashionrec.training.adapt.model import AdaptedModel, colour_views, is_colour_column, tta_name

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LABEL_COLUMNS",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "AdaptCallbacks",
    "AdaptConfig",
    "AdaptResult",
    "AdaptedModel",
    "HeldOut",
    "adapt_catalog",
    "calibrate_on_heldout",
    "catalog_for_training",
    "colour_views",
    "encode_labels",
    "format_adapt_metrics",
    "head_features",
    "head_probs",
    "head_taps_for",
    "heldout_tagging",
    "is_colour_column",
    "load_adapted",
    "load_heldout",
    "lower_maps",
    "product_groups",
    "refit_heads",
    "save_adapted",
    "split_products",
    "trunk_prelogits",
    "tta_name",
    "upper_pass",
    "view_names",
]


def __getattr__(name: str):
    """`adapt_catalog` and `AdaptResult` live in `workflows/adapt.py` (the recipe sits above training); they are
    re-exported here for user code, lazily, so that training does not import workflows."""
    if name in ("adapt_catalog", "AdaptResult"):
        from fashionrec.workflows import adapt as recipe

        return getattr(recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
