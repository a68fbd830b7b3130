"""Recommenders behind one base class, registered by name: `create_recommender("hybrid")`.

popularity (time-decayed), repurchase, itemknn, als, bpr (implicit), content (catalog metadata),
visual (image embeddings), hybrid (a ranker learned on purchases over all of the above).

`base` holds the contract, the table and the factory and imports no plug-in; importing this package imports the
built-in plug-ins, whose `@register_recommender` fills the table (timm's shape).
"""

from fashionrec.recommend import baselines, content, hybrid, peers, taste  # noqa: F401,E402  (plug-ins register themselves)
from fashionrec.recommend.base import (
    Rec,
    RecData,
    Recommender,
    create_recommender,
    list_recommenders,
    load_recommender,
    register_recommender,
)

__all__ = [
    "Rec",
    "RecData",
    "Recommender",
    "create_recommender",
    "list_recommenders",
    "load_recommender",
    "register_recommender",
]
