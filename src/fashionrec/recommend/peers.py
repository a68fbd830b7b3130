"""Published visual recommenders from Cornac, wrapped as fashionrec recommenders: `vbpr` and `amr`.

They are fitted by Cornac's own training code (`cornac.models.VBPR`, `cornac.models.AMR`) on the training matrix and
the same image features the project's visual models use (`RecData.image_features`), so they run in the same
leak-free protocol as the rest. Cornac only knows the items of its training data; this module scores the whole
candidate catalog with the parameters Cornac learned:

- VBPR (He & McAuley, AAAI 2016): x_ui = beta_i + gamma_u . gamma_i + theta_u . (E^T f_i) + beta'^T f_i.
  Cornac's `score(u)` is exactly this for the items it was trained on. An item nobody bought has no beta_i and no
  gamma_i (zero, as in the paper's cold-start setting) and is scored by its visual terms
  theta_u . (E^T f_i) + beta'^T f_i with the learned E and beta'.
- AMR (Tang et al., TKDE 2020; VBPR's matching with adversarial training on the image features):
  x_ui = gamma_u . (gamma_i + E^T f_i); an item nobody bought: gamma_u . (E^T f_i).

Users. A customer of the training log gets the user vectors Cornac learned. A history given at query time (a new
or anonymous customer, `similar_items`) is *folded in*: the user vectors that maximise the model's own training
objective for that user with every item parameter fixed, i.e. the mean over history items i and negatives j of
log sigmoid(x_ui - x_uj) minus the same L2 penalty (lambda_w) Cornac applies; negatives are the items Cornac samples
them from (the items of the training matrix), at most `fold_in_negatives` of them, drawn once at fit time with the
seed. The objective is concave in the user vectors, so the answer does not depend on a starting point (L-BFGS from
zero). With no history at all VBPR ranks by its user-independent part beta_i + beta'^T f_i; AMR has none and
recommends nothing (every score -inf), as the collaborative baselines do.

An item with neither an image vector nor a purchase in the training log is never recommended (-inf). New arrivals
(`add_items` with their image vectors, in the `image_features` space) are scored by their visual terms at once.

The fitted state is the learned parameter arrays (no Cornac object), so `save` / `load_recommender` work like for
every other recommender and a loaded model does not need Cornac to score.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from fashionrec.errors import FashionrecError
from fashionrec.recommend.base import RecData, Recommender, register_recommender


def _cornac():
    try:
        import cornac  # noqa: F401
    except ImportError:
        raise FashionrecError("the Cornac peer models need Cornac: pip install cornac==3.0.1") from None
    import cornac.models
    from cornac.data import Dataset, ImageModality

    return cornac.models, Dataset, ImageModality


def train_cornac(model, matrix, features: np.ndarray, seed: int):
    """Fit a Cornac image model on the users x items matrix (every purchased pair once, as positive feedback) and
    per-item features (rows aligned with the matrix columns). Returns (fitted Cornac model, user rows, item columns):
    Cornac's user u / item i are row user_rows[u] / column item_cols[i] of `matrix`."""
    _, Dataset, ImageModality = _cornac()
    coo = matrix.tocoo()
    keep = coo.data > 0
    pairs = np.unique(np.stack([coo.row[keep], coo.col[keep]], axis=1), axis=0)  # sorted: a fixed order
    if not len(pairs):
        raise FashionrecError("no purchase to fit on")
    triples = [(int(u), int(i), 1.0) for u, i in pairs]
    train = Dataset.build(triples, fmt="UIR", seed=seed)
    user_rows = np.fromiter(train.uid_map.keys(), dtype=np.int64, count=len(train.uid_map))
    item_cols = np.fromiter(train.iid_map.keys(), dtype=np.int64, count=len(train.iid_map))
    assert list(train.iid_map.values()) == list(range(len(item_cols)))
    train.add_modalities(item_image=ImageModality(features=np.ascontiguousarray(features[item_cols], np.float32)))
    with contextlib.redirect_stdout(io.StringIO()), _one_torch_thread():  # Cornac prints "Optimization finished!"
        model.fit(train)
    return model, user_rows, item_cols


@contextlib.contextmanager
def _one_torch_thread():
    """Cornac's training steps are tiny (a batch of 100 x 256 features times 256 x 10): intra-op threads cost more
    than they give (an epoch on the H&M sample took 33 s with torch's 2 threads on 2 busy cores, 2.9 s with one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _CornacVisual(Recommender):
    """The shared plumbing: fit with Cornac, keep the learned arrays over the whole catalog, score, fold in.

    Per item (aligned with data.item_ids, extended by add_items): `item_bias` (beta_i + beta'^T f_i; 0 for AMR),
    `gamma_item` (0 for items Cornac did not see), `theta_item` (E^T f_i), `scorable`. Per user of the training
    matrix: `gamma_user`, `theta_user`, `user_known`. And the learned `emb_matrix` E and `beta_prime` beta', to score
    new arrivals from their image vectors."""

    tied = False  # AMR: one user vector for both the collaborative and the visual term
    needs_images = True

    def __init__(
        self,
        k: int = 10,
        k2: int = 10,
        n_epochs: int = 30,
        batch_size: int = 100,
        learning_rate: float = 0.005,
        lambda_w: float = 0.01,
        lambda_b: float = 0.01,
        lambda_e: float = 0.0,
        seed: int = 0,
        max_history: int = 50,
        fold_in_negatives: int = 4096,
    ):
        super().__init__()
        if k < 1 or k2 < 1 or n_epochs < 1 or batch_size < 1:
            raise ValueError("k, k2, n_epochs and batch_size must be positive integers")
        if learning_rate <= 0 or min(lambda_w, lambda_b, lambda_e) < 0:
            raise ValueError("learning_rate must be positive and the lambdas non-negative")
        if max_history < 1 or fold_in_negatives < 1:
            raise ValueError("max_history and fold_in_negatives must be positive integers")
        self.k, self.k2, self.n_epochs, self.batch_size = k, k2, n_epochs, batch_size
        self.learning_rate, self.lambda_w, self.lambda_b, self.lambda_e = learning_rate, lambda_w, lambda_b, lambda_e
        self.seed, self.max_history, self.fold_in_negatives = seed, max_history, fold_in_negatives

    def _shared_settings(self) -> dict:
        """The constructor settings Cornac's VBPR and AMR share."""
        return {
            "k": self.k,
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "lambda_w": self.lambda_w,
            "lambda_b": self.lambda_b,
            "lambda_e": self.lambda_e,
            "use_gpu": False,
            "verbose": False,
            "seed": self.seed,
        }

    def _cornac_model(self):
        raise NotImplementedError

    def _adopt(self, model, F: np.ndarray) -> None:
        """Copy the learned parameters of the fitted Cornac `model` into catalog-wide arrays."""
        raise NotImplementedError

    def fit(self, data: RecData):
        if data.image_features is None:
            raise FashionrecError(f"recommender '{self.name}' needs image features (RecData(image_features=...))")
        self.data = data
        F, has = data.image_features.aligned(data.item_ids)
        if not has.any():
            raise FashionrecError(f"recommender '{self.name}': no candidate item has an image vector")
        model, user_rows, item_cols = train_cornac(self._cornac_model(), data.matrix, F, self.seed)
        n, u = data.n_items, data.matrix.shape[0]
        self.trained = np.zeros(n, dtype=bool)
        self.trained[item_cols] = True
        self.scorable = has | self.trained
        self.user_known = np.zeros(u, dtype=bool)
        self.user_known[user_rows] = True
        self._user_rows, self._item_cols = user_rows, item_cols
        self._adopt(model, F)
        del self._user_rows, self._item_cols
        rng = np.random.default_rng(self.seed)
        negs = np.flatnonzero(self.trained)
        if len(negs) > self.fold_in_negatives:
            negs = np.sort(rng.choice(negs, self.fold_in_negatives, replace=False))
        self.negatives = negs
        return self

    def _catalog(self, rows: np.ndarray, dim: int) -> np.ndarray:
        out = np.zeros((self.data.n_items, dim), dtype=np.float32)
        out[self._item_cols] = rows
        return out

    def _users(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((self.data.matrix.shape[0], rows.shape[1]), dtype=np.float32)
        out[self._user_rows] = rows
        return out

    # --- scoring

    def _item_matrix(self, rows=slice(None)) -> np.ndarray:
        """Item side of the bilinear score: x_i = item_bias_i + item_matrix_i . q for a user vector q."""
        if self.tied:
            return self.gamma_item[rows] + self.theta_item[rows]
        return np.hstack([self.gamma_item[rows], self.theta_item[rows]])

    def user_vector(self, hist_idx, user=None) -> np.ndarray | None:
        """The learned vector of a customer of the training log; else one folded in from the history; None when
        there is neither."""
        j = self.data.user_index.get(user) if user is not None else None
        if j is not None and j < len(self.user_known) and self.user_known[j]:
            return self.gamma_user[j] if self.tied else np.concatenate([self.gamma_user[j], self.theta_user[j]])
        h = self._known_items(hist_idx)
        if not len(h):
            return None
        return self.fold_in(h)

    def _known_items(self, hist_idx) -> np.ndarray:
        """The distinct items of the last `max_history` history entries that the model can score."""
        h = np.asarray(hist_idx, dtype=np.int64)[-self.max_history :]
        h = h[h < len(self.scorable)]
        return np.unique(h[self.scorable[h]])

    def fold_in(self, positives: np.ndarray) -> np.ndarray:
        """argmax_q mean_{i in positives, j in negatives} log sigmoid(x_i - x_j) - lambda_w / 2 |q|^2 (concave)."""
        from scipy.optimize import minimize
        from scipy.special import expit, log_expit

        negs = self.negatives[~np.isin(self.negatives, positives)]
        if not len(negs):
            negs = self.negatives
        Ap, An = (self._item_matrix(r).astype(np.float64) for r in (positives, negs))
        bp, bn = (self.item_bias[r].astype(np.float64) for r in (positives, negs))
        lam = self.lambda_w
        count = len(positives) * len(negs)

        def loss(q):
            d = (bp + Ap @ q)[:, None] - (bn + An @ q)[None, :]
            w = expit(-d) / count  # d/d(d) of the mean log sigmoid
            grad = Ap.T @ w.sum(1) - An.T @ w.sum(0)
            return -log_expit(d).sum() / count + 0.5 * lam * q @ q, -grad + lam * q

        res = minimize(loss, np.zeros(Ap.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 200})
        return res.x.astype(np.float32)

    def scores(self, hist_idx, hist_ts, user=None):
        out = np.full(self.data.n_items, -np.inf)
        q = self.user_vector(hist_idx, user)
        if q is None:
            if self.tied:
                return out
            s = self.item_bias.astype(np.float64)
        else:
            s = self.item_bias + self._item_matrix() @ q
        m = len(s)
        out[:m] = np.where(self.scorable, s, -np.inf)
        return out

    def because(self, item, hist_idx, hist_ts):
        """The history item most like `item` (cosine of their item vectors)."""
        if item in set(hist_idx.tolist()):
            return [self.data.item_ids[item]]
        h = self._known_items(hist_idx)
        if not len(h) or item >= len(self.scorable) or not self.scorable[item]:
            return []
        v, H = self._item_matrix(item), self._item_matrix(h)
        v = v / max(np.linalg.norm(v), 1e-12)
        H = H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-12)
        return [self.data.item_ids[h[np.argmax(H @ v)]]]

    def add_items(self, ids, vectors=None, metadata=None):
        """New arrivals: scored by their visual terms from their image vectors (in the image_features space);
        without a vector they are never recommended."""
        super().add_items(ids)
        n_new = len(self.data.item_ids) - len(self.scorable)
        if n_new <= 0:
            return
        F = np.zeros((n_new, self.emb_matrix.shape[0]), dtype=np.float32)
        if vectors is not None:
            v = np.asarray(vectors, dtype=np.float32)[-n_new:]
            F[-len(v) :] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        has = np.linalg.norm(F, axis=1) > 0
        self.item_bias = np.concatenate([self.item_bias, (F @ self.beta_prime).astype(np.float32)])
        self.gamma_item = np.vstack([self.gamma_item, np.zeros((n_new, self.gamma_item.shape[1]), np.float32)])
        self.theta_item = np.vstack([self.theta_item, (F @ self.emb_matrix).astype(np.float32)])
        self.trained = np.concatenate([self.trained, np.zeros(n_new, dtype=bool)])
        self.scorable = np.concatenate([self.scorable, has])


@register_recommender("vbpr")
class VBPR(_CornacVisual):
    """Visual Bayesian Personalized Ranking (He & McAuley 2016), trained by Cornac (`cornac.models.VBPR`).

    k: collaborative factors gamma; k2: visual factors theta (E maps the image vector to k2 dims). Defaults (Cornac's,
    with 30 epochs instead of 50) sized for a log of tens of thousands of purchases: the H&M sample's 25k
    customer-item pairs fit in 24-40 s on 2 cores shared with other jobs (benchmarks/peers_fit.py)."""

    def _cornac_model(self):
        models, _, _ = _cornac()
        return models.VBPR(k2=self.k2, **self._shared_settings())

    def _adopt(self, model, F):
        self.emb_matrix = np.asarray(model.emb_matrix, dtype=np.float32)  # E: (feature dim, k2)
        self.beta_prime = np.asarray(model.beta_prime, dtype=np.float32).ravel()  # beta': (feature dim,)
        beta = self._catalog(np.asarray(model.beta_item, dtype=np.float32)[:, None], 1).ravel()
        self.item_bias = (beta + F @ self.beta_prime).astype(np.float32)
        self.gamma_item = self._catalog(model.gamma_item, self.k)
        self.theta_item = (F @ self.emb_matrix).astype(np.float32)
        self.gamma_user = self._users(model.gamma_user)
        self.theta_user = self._users(model.theta_user)


@register_recommender("amr")
class AMR(_CornacVisual):
    """Adversarial Multimedia Recommendation (Tang et al. 2020), trained by Cornac (`cornac.models.AMR`): VBPR's
    matching score gamma_u . (gamma_i + E^T f_i), learned with adversarial perturbations of the image features.
    k2 is not used (the visual embedding has k dims, like gamma); lambda_b neither (AMR has no bias).

    Larger batches than VBPR by default: Cornac's AMR differentiates through the whole training feature matrix, so
    each step costs a dense gradient of it (an H&M epoch: 6.6 s in batches of 100, 1.7 s in batches of 1000);
    batches of 500 with a doubled learning rate keep the fit near a minute (H&M sample: 58-78 s on 2 shared cores)."""

    tied = True

    def __init__(self, *, batch_size: int = 500, learning_rate: float = 0.01, lambda_adv: float = 1.0, **kw):
        super().__init__(batch_size=batch_size, learning_rate=learning_rate, **kw)
        if lambda_adv < 0:
            raise ValueError("lambda_adv must be non-negative")
        self.lambda_adv = lambda_adv

    def _cornac_model(self):
        models, _, _ = _cornac()
        return models.AMR(k2=self.k, lambda_adv=self.lambda_adv, **self._shared_settings())

    def _adopt(self, model, F):
        self.emb_matrix = np.asarray(model.emb_matrix, dtype=np.float32)  # E: (feature dim, k)
        self.beta_prime = np.zeros(F.shape[1], dtype=np.float32)
        self.item_bias = np.zeros(len(F), dtype=np.float32)
        self.gamma_item = self._catalog(model.gamma_item, self.k)
        self.theta_item = (F @ self.emb_matrix).astype(np.float32)
        self.gamma_user = self._users(model.gamma_user)
        self.theta_user = self.gamma_user
