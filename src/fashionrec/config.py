"""Run configuration: the project's defaults (named once, here), and the YAML/TOML/JSON file that sets option
defaults; the command line overrides it and the resolved result is saved beside each run.

No heavy imports here: the CLI parser, the server and every stage read these constants.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fashionrec.errors import FashionrecError

# ---------------------------------------------------------------- defaults
#: The image backbone used when none is named (offline weights ship with the package).
DEFAULT_BACKBONE = "efficientnet_lite0"
#: Square input side (px) for embedding shop photos and for 28 px Fashion-MNIST arrays: about 5x fewer pixels than
#: the 224 px ImageNet size. Classifier commands on photo folders resolve "auto" from the photos instead.
DEFAULT_INPUT_SIZE = 96
#: `fashionrec adapt` trains at the photos' own padded-square side (`auto_input_size`), at most this: its cost grows
#: with the square, its accuracy with detail. On the H&M sample (128x192 photos) 160 px beat 128 px in the same hour
#: on the same split: same-product R@1 0.339 vs 0.316, R@10 0.727 vs 0.671, held-out type 0.800 vs 0.797.
ADAPT_MAX_INPUT_SIZE = 160
#: Normalisation when no backbone supplies one: maps [0, 1] pixels to [-1, 1]. The from-scratch tiny CNN uses it;
#: where photos are only decoded to uint8 arrays it never reaches a model (the backbone's own mean/std apply when
#: the arrays become model input), but a Preprocess needs one.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
#: The JSON file that makes a folder a `fashionrec adapt` model (format, heads, weights SHA-256).
ADAPTED_MODEL_JSON = "fashionrec_model.json"

#: The catalog's own attribute columns (H&M articles.csv): what `adapt` learns a head for by default and what the
#: recommenders' photo taggers predict for items without a catalog row.
TAG_COLUMNS = (
    "product_type_name",
    "product_group_name",
    "colour_group_name",
    "graphical_appearance_name",
    "department_name",
    "index_group_name",
    "garment_group_name",
)
#: The columns the server tags an upload with (POST /search/image), of TAG_COLUMNS: the three an item's card
#: shows (category = product group, type, colour). The server fits one tagger per column at its cold build, from
#: the raw features of every labelled photo; the other four columns would add their fitting time and nothing the
#: page or the API's item fields show.
SERVED_TAG_COLUMNS = ("product_group_name", "product_type_name", "colour_group_name")
#: Inverse regularisation of the photo taggers (`fashionrec.tagging.Tagger`: standardised raw backbone features,
#: logistic regression), chosen on the H&M sample (docs/tagging.md#tags-for-the-recommenders-and-the-server).
TAGGER_C = 0.05
#: The recommender used by `recommend`, the server and `fit_recommender` when none is named.
DEFAULT_MODEL = "hybrid"
#: Share of the labelled articles held out for testing when a classifier is trained on a photo folder.
HELD_OUT_FRACTION = 0.2


def load_config_file(path: str | Path | None) -> dict:
    """A flat mapping of option name -> value (dashes or underscores), or {command: {...}} sections."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise FashionrecError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix in {".toml"}:
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:
        raise FashionrecError(f"{path}: cannot parse config: {e}") from None
    if not isinstance(data, dict):
        raise FashionrecError(f"{path}: config must be a mapping of option names to values")
    return data


def resolved_args(args) -> dict:
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    d["argv"] = sys.argv[1:]
    return d
