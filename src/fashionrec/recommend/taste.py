"""Taste: a customer's liking for any item, read from its photo, learned from the purchase log.

A two-tower model in the family of VBPR (He & McAuley, 2016) and multi-interest retrieval (MIND, Li et al., 2019;
ComiRec, Cen et al., 2020), kept small enough to train in seconds on one CPU:

- **item tower**: the item's photo only, so a brand-new arrival is scored like any other item. Its input is the
  image embedding (style) next to a colour descriptor of the garment (`training.colour`: a Lab histogram of the
  pixels that differ from the backdrop, reduced by PCA), and a linear map sends it to a small *taste space*
  (`dim`), plus a scalar appeal (how much the photo looks like what people buy at all);
- **customer**: no vector of its own. The customer is the set of their recent purchases in taste space, and an
  item's score is a soft maximum over them (log-sum-exp of scaled cosines, weighted by recency) plus its appeal:
  a customer who buys for a child and for herself keeps both interests instead of one blurred mean;
- **training**: each purchase in the log is a positive for the customer's history before that day; negatives are
  items *on sale at the time* (first sold up to a week later, last sold up to `sale_days` earlier), drawn
  uniformly (so appeal is learned against what else was on the shelf, not against the catalog's dead stock), plus
  other colours of the bought product (so the colour a customer picks is learned, not only the style). Sampled
  softmax over the positive and its negatives, Adam, a fixed seed.

Known users and anonymous histories are scored the same way; nothing is refitted for a new customer or item.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashionrec.errors import FashionrecError
from fashionrec.recommend.base import DAY, RecData, Recommender, recency_weights, register_recommender


def item_inputs(
    data: RecData, colour: bool, colour_dims: int, seed: int = 0, tags: bool = False
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(X, has_input, colour_map): one row per item of `data` (image vector, then the colour descriptor's PCA
    whitened to the same scale), a mask of the items with a photo, and the colour PCA (mean, components, scale)
    used, so new arrivals' descriptors map the same way."""
    if data.image_features is None:
        raise FashionrecError("recommender 'taste' needs image features (RecData(image_features=...))")
    V, has = data.image_features.aligned(data.item_ids)
    cmap: dict = {}
    parts = [V]
    cf = getattr(data, "colour_features", None)
    if colour and cf is not None and len(cf.ids):
        C, has_c = cf.aligned(data.item_ids, normalize=False)
        if has_c.sum() > colour_dims:
            mean = C[has_c].mean(0)
            # PCA by SVD of a sample (deterministic): the descriptor's main axes (lightness, hue, saturation)
            rng = np.random.default_rng(seed)
            rows = np.flatnonzero(has_c)
            rows = rows[rng.permutation(len(rows))[:4000]]
            _, sv, vt = np.linalg.svd(C[rows] - mean, full_matrices=False)
            comp = vt[:colour_dims]
            scale = (sv[:colour_dims] / np.sqrt(max(len(rows) - 1, 1))) * np.sqrt(colour_dims)
            Z = np.where(has_c[:, None], ((C - mean) @ comp.T) / np.maximum(scale, 1e-6), 0.0).astype(np.float32)
            cmap = {"mean": mean.astype(np.float32), "components": comp.astype(np.float32), "scale": scale}
            parts.append(Z)
    pred = getattr(data, "predicted", None)
    if tags and pred is not None and len(pred):
        # tags predicted from the photo (the same for every item, row or not: leak-free), one-hot per column
        cols = [c for c in TAG_INPUTS if c in pred.columns]
        P = pred.reindex(pd.Index(data.item_ids, dtype=object))
        for c in cols:
            cat = pd.Categorical(P[c])
            oh = np.zeros((len(P), len(cat.categories)), np.float32)
            ok = cat.codes >= 0
            oh[np.flatnonzero(ok), cat.codes[ok]] = 1.0 / np.sqrt(len(cols))
            parts.append(oh)
    return np.hstack(parts).astype(np.float32), has, cmap


TAG_INPUTS = ("index_group_name", "product_group_name", "department_name", "garment_group_name", "product_type_name")
AGE_BANDS = np.array([0, 22, 26, 30, 35, 40, 45, 50, 55, 60, 200])


def age_bands(data: RecData, users) -> np.ndarray:
    """Age band per user (0..9), or 10 where the age is unknown."""
    out = np.full(len(users), len(AGE_BANDS) - 1, dtype=np.int64)
    tab = getattr(data, "users", None)
    if tab is None or "age" not in getattr(tab, "columns", []):
        return out
    ages = pd.to_numeric(tab["age"], errors="coerce")
    ages = ages[~ages.index.duplicated(keep="first")].reindex(pd.Index(list(users), dtype=object)).to_numpy()
    ok = ~np.isnan(ages)
    out[ok] = np.clip(np.searchsorted(AGE_BANDS, ages[ok], side="right") - 1, 0, len(AGE_BANDS) - 2)
    return out


def training_examples(data: RecData, max_history: int, half_life: float):
    """Every purchase with a history before its day: (positive item, history items (N, L) padded with -1, their
    recency weights, the purchase time in days)."""
    c = data.coded()
    items, users, ts = c["item"], c["user"], c["ts"]
    order = np.lexsort((ts, users))
    items, users, ts = items[order], users[order], ts[order]
    day = ts.astype("datetime64[D]")
    pos, H, W, T, U = [], [], [], [], []
    start = 0
    n = len(items)
    while start < n:
        end = start
        while end < n and users[end] == users[start]:
            end += 1
        for e in range(start, end):
            before = start + int(np.searchsorted(day[start:end], day[e], side="left"))
            if before == start:
                continue
            h = items[start:before][::-1]  # newest first
            t = ts[start:before][::-1]
            _, first = np.unique(h, return_index=True)
            keep = np.sort(first)[:max_history]
            hh, tt = h[keep], t[keep]
            w = np.power(0.5, np.maximum((ts[e] - tt) / DAY, 0) / half_life)
            pad = max_history - len(hh)
            pos.append(items[e])
            H.append(np.pad(hh, (0, pad), constant_values=-1))
            W.append(np.pad(w, (0, pad)))
            T.append(ts[e])
            U.append(users[e])
        start = end
    if not pos:
        return None
    return (
        np.array(pos, dtype=np.int64),
        np.vstack(H).astype(np.int64),
        np.vstack(W).astype(np.float32),
        np.array(T, dtype="datetime64[ns]"),
        np.array(U, dtype=np.int64),
    )


@register_recommender("taste")
class Taste(Recommender):
    """Learned taste from photos (style and colour), several interests per customer; scores any item with a photo."""

    needs_images = True

    def __init__(
        self,
        dim: int = 64,
        epochs: int = 6,
        negatives: int = 64,
        same_product_negatives: int = 4,
        sale_days: int = 28,
        max_history: int = 30,
        history_half_life_days: float = 90.0,
        batch_size: int = 2048,
        lr: float = 0.02,
        weight_decay: float = 1e-5,
        colour: bool = True,
        colour_dims: int = 32,
        appeal: bool = True,
        hidden: int = 0,
        tags: bool = False,
        age: bool = True,
        fresh_days: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        for name, v in [("dim", dim), ("epochs", epochs), ("negatives", negatives), ("max_history", max_history)]:
            if v < 1:
                raise ValueError(f"{name} must be a positive integer")
        if history_half_life_days <= 0 or lr <= 0:
            raise ValueError("history_half_life_days and lr must be positive")
        self.dim, self.epochs, self.negatives = dim, epochs, negatives
        self.same_product_negatives, self.sale_days = same_product_negatives, sale_days
        self.max_history, self.history_half_life_days = max_history, history_half_life_days
        self.batch_size, self.lr, self.weight_decay = batch_size, lr, weight_decay
        self.colour, self.colour_dims, self.appeal, self.seed = colour, colour_dims, appeal, seed
        self.hidden, self.tags, self.age, self.fresh_days = hidden, tags, age, fresh_days

    # ------------------------------------------------------------------ fitting
    def fit(self, data: RecData, until=None) -> Taste:
        """Learn from the purchases in `data` (those before `until` only, when given: a model standing at a past
        date, as the hybrid's training windows need)."""
        import torch

        from fashionrec.data.products import product_code_of

        self.data = data
        X, self.has, self.colour_map = item_inputs(data, self.colour, self.colour_dims, self.seed, self.tags)
        n, D = X.shape
        g = torch.Generator().manual_seed(self.seed)
        if self.hidden:
            W1 = torch.nn.Parameter(torch.randn(D, self.hidden, generator=g) * np.sqrt(2.0 / D))
            b1 = torch.nn.Parameter(torch.zeros(self.hidden))
            W = torch.nn.Parameter(torch.randn(self.hidden, self.dim, generator=g) / np.sqrt(self.hidden))
            params = [W1, b1, W]

            def tower(x):
                return torch.relu(x @ W1 + b1) @ W
        else:
            W = torch.nn.Parameter(torch.randn(D, self.dim, generator=g) / np.sqrt(D))
            params = [W]

            def tower(x):
                return x @ W

        a = torch.nn.Parameter(torch.zeros(D))
        log_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
        n_bands = len(AGE_BANDS)
        E = torch.nn.Parameter(torch.zeros(n_bands, self.dim))
        params += [a, log_scale] + ([E] if self.age else [])
        ex = training_examples(data, self.max_history, self.history_half_life_days)
        cut = None if until is None else np.datetime64(pd.Timestamp(until).to_datetime64(), "ns")
        self.train_loss = []
        if ex is not None and self.epochs:
            pos, H, Wt, T, U = ex
            ok = self.has[pos] if cut is None else self.has[pos] & (T < cut)
            pos, H, Wt, T, U = pos[ok], H[ok], Wt[ok], T[ok], U[ok]
            H = np.where((H >= 0) & self.has[np.maximum(H, 0)], H, -1)
            live = (H >= 0).any(1)
            pos, H, Wt, T, U = pos[live], H[live], Wt[live], T[live], U[live]
            band = age_bands(data, data.user_ids)[U]
            c = data.coded()
            first = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
            last = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
            srt = np.argsort(c["ts"], kind="stable")
            it, tt = c["item"][srt], c["ts"][srt]
            if cut is not None:
                it, tt = it[tt < cut], tt[tt < cut]
            first[it[::-1]] = tt[::-1]  # the earliest sale wins (written last)
            last[it] = tt
            sold = np.flatnonzero(~np.isnat(first) & self.has)
            codes = np.array([product_code_of(i) for i in data.item_ids], dtype=object)
            siblings = _siblings(codes, self.has)
            # only the items training can touch go through the tower at each step (sold items, histories,
            # positives, their other colours): about half the catalog
            sib_all = np.concatenate([siblings.get(int(j), np.zeros(0, np.int64)) for j in np.unique(pos)] or [[]])
            active = np.unique(np.concatenate([pos, H[H >= 0], sold, sib_all.astype(np.int64)]))
            remap = np.full(n, -1, dtype=np.int64)
            remap[active] = np.arange(len(active))
            Xt = torch.from_numpy(X[active])
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
            rng = np.random.default_rng(self.seed)
            days = np.timedelta64(1, "D")
            for _ in range(self.epochs if len(pos) and len(sold) else 0):
                perm = rng.permutation(len(pos))
                total = 0.0
                for b in range(0, len(perm), self.batch_size):
                    r = perm[b : b + self.batch_size]
                    B = len(r)
                    neg = sold[rng.integers(0, len(sold), size=(B, self.negatives))]
                    t = T[r][:, None]
                    on_sale = (first[neg] <= t + 7 * days) & (last[neg] >= t - self.sale_days * days)
                    if self.fresh_days:  # negatives among the arrivals of the time only
                        on_sale &= first[neg] >= t - self.fresh_days * days
                    sib = _sample_siblings(siblings, pos[r], self.same_product_negatives, rng)
                    cand = np.concatenate([pos[r][:, None], neg, np.maximum(sib, 0)], 1)
                    valid = np.concatenate([np.ones((B, 1), bool), on_sale, sib >= 0], 1)
                    valid[:, 1:] &= cand[:, 1:] != pos[r][:, None]
                    cand = remap[cand]
                    F = torch.nn.functional.normalize(tower(Xt), dim=1)
                    bias = Xt @ a if self.appeal else torch.zeros(len(active))
                    hb = torch.from_numpy(np.where(H[r] >= 0, remap[np.maximum(H[r], 0)], -1))
                    hm = hb >= 0
                    Fh = F[hb.clamp(min=0)]  # (B, L, d)
                    Fc = F[torch.from_numpy(cand)]  # (B, C, d)
                    cos = torch.einsum("bld,bcd->bcl", Fh, Fc)
                    lw = torch.log(torch.from_numpy(Wt[r]).clamp(min=1e-6))
                    z = log_scale.exp() * cos + lw[:, None, :]
                    z = z.masked_fill(~hm[:, None, :], -1e9)
                    s = torch.logsumexp(z, dim=2) + bias[torch.from_numpy(cand)]
                    if self.age:  # what customers of this age buy, in taste space
                        s = s + torch.einsum("bd,bcd->bc", E[torch.from_numpy(band[r])], Fc)
                    s = s.masked_fill(~torch.from_numpy(valid), -1e9)
                    loss = -torch.log_softmax(s, dim=1)[:, 0].mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * B
                self.train_loss.append(total / max(len(perm), 1))
        with torch.no_grad():
            Xt = torch.from_numpy(X)
            self.layers = [p.detach().numpy().astype(np.float32) for p in params[: 3 if self.hidden else 1]]
            self.a = a.detach().numpy().astype(np.float32)
            self.scale = float(log_scale.exp())
            self.age_emb = (
                E.detach().numpy().astype(np.float32) if self.age else np.zeros((n_bands, self.dim), np.float32)
            )
            self.F = torch.nn.functional.normalize(tower(Xt), dim=1).numpy().astype(np.float32)
            self.bias = (Xt @ a).numpy().astype(np.float32) if self.appeal else np.zeros(n, np.float32)
        self.F[~self.has] = 0.0
        self.bias[~self.has] = 0.0
        return self

    # ------------------------------------------------------------------ scoring
    def _recent(self, hist_idx, hist_ts):
        if not len(hist_idx):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        order = np.argsort(np.asarray(hist_ts), kind="stable")[::-1]
        h, t = np.asarray(hist_idx)[order], np.asarray(hist_ts)[order]
        _, first = np.unique(h, return_index=True)
        keep = np.sort(first)[: self.max_history]
        h, t = h[keep], t[keep]
        ok = (h < len(self.has)) & self.has[np.minimum(h, len(self.has) - 1)]
        return h[ok], recency_weights(t[ok], self.data.now, self.history_half_life_days)

    def _tower(self, x: np.ndarray) -> np.ndarray:
        if len(self.layers) == 3:
            W1, b1, W = self.layers
            f = np.maximum(x @ W1 + b1, 0) @ W
        else:
            f = x @ self.layers[0]
        return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def taste(self, hist_idx, hist_ts, items: np.ndarray | None = None, user=None) -> np.ndarray:
        """The taste score of `items` (default: every item) for this history (and the customer's age band, when
        `user` is known); items without a photo get -inf."""
        items = np.arange(len(self.F)) if items is None else np.asarray(items, dtype=np.int64)
        h, w = self._recent(hist_idx, hist_ts)
        s = self.bias[items].astype(np.float64)
        if getattr(self, "age", False):
            band = age_bands(self.data, [user])[0] if user is not None else len(AGE_BANDS) - 1
            s = s + self.F[items] @ self.age_emb[band]
        if len(h):
            z = self.scale * (self.F[items] @ self.F[h].T) + np.log(np.maximum(w, 1e-6))[None, :]
            m = z.max(1, keepdims=True)
            s = s + (m[:, 0] + np.log(np.exp(z - m).sum(1)))
        return np.where(self.has[items], s, -np.inf)

    def scores(self, hist_idx, hist_ts, user=None):
        return self.taste(hist_idx, hist_ts, user=user)

    def score_items(self, users, items) -> np.ndarray:
        self._check_fitted()
        items = np.asarray(items, dtype=np.int64)
        out = np.empty((len(users), len(items)))
        for r, u in enumerate(users):
            h, t = self.data.history(u)
            out[r] = self.taste(h, t, items, user=u)
        return out

    def because(self, item, hist_idx, hist_ts):
        h, w = self._recent(hist_idx, hist_ts)
        if not len(h) or not self.has[item]:
            return []
        return [self.data.item_ids[h[np.argmax(self.F[h] @ self.F[item] + np.log(np.maximum(w, 1e-6)) / self.scale)]]]

    def embed_inputs(self, vectors: np.ndarray, colour_descriptors: np.ndarray | None = None) -> np.ndarray:
        """Item-tower inputs for new photos: their image vectors (the recommenders' space) and, when given, their
        colour descriptors (`training.colour.colour_features`); without them the colour part is the average."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        parts = [v]
        cm = self.colour_map
        if cm:
            if colour_descriptors is None:
                z = np.zeros((len(v), len(cm["scale"])), np.float32)
            else:
                z = ((np.atleast_2d(colour_descriptors) - cm["mean"]) @ cm["components"].T) / np.maximum(
                    cm["scale"], 1e-6
                )
            parts.append(z)
        n_in = self.layers[0].shape[0]
        width = sum(p.shape[1] for p in parts)
        if width < n_in:  # predicted tags of a new photo are not known here: left blank
            parts.append(np.zeros((len(v), n_in - width), np.float32))
        return np.hstack(parts).astype(np.float32)

    def add_items(self, ids, vectors=None, metadata=None):
        super().add_items(ids)
        n_new = len(self.data.item_ids) - len(self.F)
        if n_new <= 0:
            return
        F = np.zeros((n_new, self.F.shape[1]), np.float32)
        b = np.zeros(n_new, np.float32)
        has = np.zeros(n_new, dtype=bool)
        if vectors is not None:
            x = self.embed_inputs(np.asarray(vectors)[-n_new:])
            F = self._tower(x)
            b = (x @ self.a).astype(np.float32) if self.appeal else b
            has[:] = np.linalg.norm(np.asarray(vectors)[-n_new:], axis=1) > 0
        self.F = np.vstack([self.F, F])
        self.bias = np.concatenate([self.bias, b])
        self.has = np.concatenate([self.has, has])


def _siblings(codes: np.ndarray, has: np.ndarray) -> dict:
    """item -> array of the other items of its product that have a photo."""
    df = pd.DataFrame({"c": codes, "j": np.arange(len(codes))})[has]
    groups = df.groupby("c")["j"].agg(list)
    out = {}
    for members in groups:
        if len(members) > 1:
            arr = np.array(members, dtype=np.int64)
            for j in members:
                out[j] = arr[arr != j]
    return out


def _sample_siblings(siblings: dict, pos: np.ndarray, k: int, rng) -> np.ndarray:
    out = np.full((len(pos), k), -1, dtype=np.int64)
    if not k:
        return out
    for r, j in enumerate(pos):
        s = siblings.get(int(j))
        if s is not None:
            take = s if len(s) <= k else rng.choice(s, k, replace=False)
            out[r, : len(take)] = take
    return out
