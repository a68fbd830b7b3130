"""The Python API, kept under its first name: everything here lives in `fashionrec.workflows.shop`.

from fashionrec.pipeline import load_shop, fit_recommender
shop = load_shop("path/to/hm")                  # catalog, log, image features (cached)
model = fit_recommender(shop, "hybrid")
model.recommend(customer_id, k=12)
"""

from fashionrec.config import DEFAULT_MODEL
from fashionrec.workflows.shop import (
    IMAGE_MODELS,
    MODEL_CACHE_VERSION,
    Shop,
    embed_catalog,
    fit_projection,
    fit_recommender,
    load_customer_table,
    load_shop,
    rec_data,
)

__all__ = [
    "DEFAULT_MODEL",
    "IMAGE_MODELS",
    "MODEL_CACHE_VERSION",
    "Shop",
    "embed_catalog",
    "fit_projection",
    "fit_recommender",
    "load_customer_table",
    "load_shop",
    "rec_data",
]
