"""The serving tables as data: flat numpy arrays, saved by `serving.store` and memory-mappable.

- `Precomputed`: the top-k of every known customer for one model (users sorted by their UTF-8 bytes, CSR offsets
  into items/scores/because);
- `Neighbours`: the k nearest catalog photos of every catalog photo;
- `Projection`: the shop's PCA from raw backbone vectors to the recommenders' space.

The upload taggers are `fashionrec.tagging.Tagger`s, stored the same way (`Tagger.arrays`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Projection:
    """Raw backbone vector -> the recommenders' image-feature space (the shop's PCA, or identity), L2-normalised."""

    mean: np.ndarray | None = None
    components: np.ndarray | None = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(raw).astype(np.float32)
        if self.components is not None:
            z = ((z - self.mean) @ np.asarray(self.components).T).astype(np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


class Precomputed:
    """Top-k of every known customer for one model, as flat arrays (memory-mappable; no per-customer objects)."""

    def __init__(self, users, offsets, items, scores, because_offsets, because_items, item_ids):
        self.users, self.offsets, self.items, self.scores = users, offsets, items, scores
        self.because_offsets, self.because_items, self.item_ids = because_offsets, because_items, item_ids

    @classmethod
    def build(cls, model, users: list[str], k: int, progress: bool = False) -> Precomputed:
        from tqdm.auto import tqdm

        item_ids = list(model.data.item_ids)
        pos = {i: j for j, i in enumerate(item_ids)}
        users = sorted(users, key=lambda u: u.encode())  # the order of the UTF-8 bytes searched at request time
        offsets, items, scores, b_off, b_items = [0], [], [], [0], []
        for u in tqdm(users, desc=f"precompute {model.name}", unit="customer", disable=not progress):
            for r in model.recommend(u, k):
                items.append(pos[r.item])
                scores.append(r.score)
                b_items.extend(pos[b] for b in r.because)
                b_off.append(len(b_items))
            offsets.append(len(items))
        return cls(
            utf8_ids(users),
            np.array(offsets, np.int64),
            np.array(items, np.int32),
            np.array(scores, np.float64),
            np.array(b_off, np.int64),
            np.array(b_items, np.int32),
            utf8_ids(item_ids),
        )

    # Ids as UTF-8 bytes ('S'): a fixed-width unicode array takes 4 bytes per character of the longest id (H&M's
    # customer ids are 64 characters: 350 MB at 1.37M customers, per model); the customers array is shared.
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            "users" if k == "users" else f"{prefix}.{k}": getattr(self, k)
            for k in ("users", "offsets", "items", "scores", "because_offsets", "because_items", "item_ids")
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> Precomputed:
        return cls(
            *(
                arrays["users" if k == "users" else f"{prefix}.{k}"]
                for k in ("users", "offsets", "items", "scores", "because_offsets", "because_items", "item_ids")
            )
        )

    def __len__(self) -> int:
        return len(self.users)

    def _row(self, user: str) -> int:
        key = user.encode("utf-8", "surrogatepass")
        i = int(np.searchsorted(self.users, key))
        return i if i < len(self.users) and self.users[i] == key else -1

    def __contains__(self, user: str) -> bool:
        return self._row(user) >= 0

    def get(self, user: str, k: int) -> list[tuple] | None:
        """[(item, score, because), ...] (at most k), or None for an unknown customer."""
        r = self._row(user)
        if r < 0:
            return None
        lo, hi = int(self.offsets[r]), int(self.offsets[r + 1])
        hi = min(hi, lo + k)
        ids = self.item_ids
        items = self.items[lo:hi].tolist()
        scores = self.scores[lo:hi].tolist()
        b_off = self.because_offsets[lo : hi + 1].tolist()
        b_items = self.because_items[b_off[0] : b_off[-1]].tolist()
        base = b_off[0]
        return [
            (ids[i].decode(), s, [ids[b].decode() for b in b_items[b_off[n] - base : b_off[n + 1] - base]])
            for n, (i, s) in enumerate(zip(items, scores))
        ]


class Neighbours:
    """The k nearest catalog photos of every catalog photo, as the catalog index answers them (one search per item
    at build time): GET /items/{id}/similar without a category is then a lookup. Rows sorted by id bytes."""

    def __init__(self, ids, rows, scores, row_ids):
        self.ids, self.rows, self.scores, self.row_ids = ids, rows, scores, row_ids

    @classmethod
    def build(cls, index, ids: list[str], k: int, progress: bool = False) -> Neighbours:
        from tqdm.auto import tqdm

        order = sorted(ids, key=lambda i: i.encode())
        pos = {i: j for j, i in enumerate(order)}
        rows = np.full((len(order), k), -1, dtype=np.int32)
        scores = np.zeros((len(order), k), dtype=np.float32)
        for j, item in enumerate(tqdm(order, desc="nearest photos", unit="item", disable=not progress)):
            found, sc = index.search(index.vector(item)[None], k, exclude=[item])
            hits = [(pos[i], s) for i, s in zip(found[0], sc[0]) if i]
            rows[j, : len(hits)] = [h[0] for h in hits]
            scores[j, : len(hits)] = [h[1] for h in hits]
        return cls(utf8_ids(order), rows, scores, utf8_ids(order))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"nb.ids": self.ids, "nb.rows": self.rows, "nb.scores": self.scores}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Neighbours | None:
        if "nb.ids" not in arrays:
            return None
        return cls(arrays["nb.ids"], arrays["nb.rows"], arrays["nb.scores"], arrays["nb.ids"])

    @property
    def k(self) -> int:
        return self.rows.shape[1]

    def get(self, item: str, k: int) -> list[tuple[str, float]] | None:
        """[(id, score)] of the k nearest (k <= self.k), or None for an item not in the table."""
        key = item.encode("utf-8", "surrogatepass")
        r = int(np.searchsorted(self.ids, key))
        if r >= len(self.ids) or self.ids[r] != key:
            return None
        rows, scores = self.rows[r, :k].tolist(), self.scores[r, :k].tolist()
        return [(self.ids[j].decode(), s) for j, s in zip(rows, scores) if j >= 0]


def utf8_ids(ids: list[str]) -> np.ndarray:
    return np.array([i.encode("utf-8", "surrogatepass") for i in ids], dtype=bytes) if ids else np.zeros(0, "S1")
