"""Recommenders behind one base class, registered by name: `create_recommender("hybrid")`.

popularity (time-decayed), repurchase, itemknn, als, bpr (implicit), content (catalog metadata),
visual (image embeddings), hybrid (a ranker learned on purchases over all of the above).

`base` holds the contract, the table and the factory and imports no plug-in; importing this package imports the
built-in plug-ins, whose `@register_recommender` fills the table (timm's shape). Capabilities are class
attributes (`needs_images`, `uses_image_tags`, `light`), read through `names(...)`, as timm keeps them on the model.
"""

# The plug-ins register themselves when imported, in this order: `names()` lists them so (cheap models first).
from fashionrec.recommend import baselines, content, peers, taste, hybrid  # noqa: F401,E402,I001
from fashionrec.recommend.base import (
    Rec,
    RecData,
    Recommender,
    create_recommender,
    list_recommenders,
    load_recommender,
    names,
    recommender_class,
    register_recommender,
)

__all__ = [
    "Rec",
    "RecData",
    "Recommender",
    "create_recommender",
    "list_recommenders",
    "load_recommender",
    "names",
    "recommender_class",
    "register_recommender",
]
