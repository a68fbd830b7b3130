"""Recommenders behind one base class, registered by name: `create_recommender("hybrid")`.

popularity (time-decayed), repurchase, itemknn, als, bpr (implicit), content (catalog metadata),
visual (image embeddings), hybrid (a ranker learned on purchases over all of the above).
"""

from fashionrec.recommend.base import Rec, RecData, Recommender, create_recommender, list_recommenders, load_recommender

__all__ = ["Rec", "RecData", "Recommender", "create_recommender", "list_recommenders", "load_recommender"]
