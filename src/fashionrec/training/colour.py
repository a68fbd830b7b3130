"""A colour descriptor of the garment in a product photo, for the heads that tag colour.

Deep features trained for style (and for ImageNet's classes) keep only part of what tells "Dark Grey" from "Black"
or "Beige" from "Light Beige": on the H&M sample's held-out products a logistic regression on this descriptor alone
tags the colour group as well as the fashion-adapted network's own inputs (0.658 vs 0.644), and the two together
score 0.678 (+3.4 points, bootstrap over products [+2.1, +4.9]; `benchmarks/colour_ceiling.py`). Pure numpy, no
learning:

- the garment: pixels that differ from the photo's background (the median of its border pixels: studio photos
  stand on a plain backdrop, and `Preprocess` pads with white) by more than `threshold` in some channel; a photo
  with fewer than 50 such pixels uses all of them;
- a joint histogram of those pixels in CIE Lab (8 lightness x 10 x 10 chroma bins, square-rooted: the Hellinger
  map, so a linear model compares distributions sensibly);
- the mean, standard deviation and 10/25/50/75/90th percentiles of L, a and b, and the share of garment pixels.

A mirror image has the same descriptor, so it is computed once per photo.

The descriptor is read twice: by the linear colour head, next to the network's inputs, and by a gradient-boosted
model of the descriptor alone (`fit_colour_booster`, LightGBM), whose trees see the interactions of bins a linear
model cannot (on an inner split of the H&M training products, descriptor alone: logistic regression 0.676, LightGBM
0.708). `combine_with_booster` multiplies the two models' probabilities (a product of experts, weight 1, fixed
beforehand, not tuned on held-out photos).
"""

from __future__ import annotations

import numpy as np

BINS = (8, 10, 10)  # L (0..100) x a x b (-60..60): measured against (6, 8, 8) and (10, 14, 14) on training products
THRESHOLD = 14  # 0-255 difference from the background that marks a garment pixel (6 and 25 measured the same)
MIN_PIXELS = 50
PERCENTILES = (10, 25, 50, 75, 90)
COLOUR_FEATURES_DIM = BINS[0] * BINS[1] * BINS[2] + 3 * (2 + len(PERCENTILES)) + 1

# LightGBM settings of the booster, chosen on an inner split of the H&M training products (descriptor alone, 1,350
# photos; `benchmarks/colour_ceiling.py` measures the held-out effect): 15 leaves x 300 rounds at 0.05, 30% of the
# features per tree scored 0.708 / log-loss 1.120. Within about a point (this split's noise) of it: 31 leaves
# 0.709 / 1.145, 7 leaves x 600 rounds 0.704 / 1.176, 600 rounds 0.714 / 1.211, 10% or 50% of the features
# 0.704 / 1.093 and 0.702 / 1.151, 30 photos per leaf 0.695 / 1.118, 150 rounds at 0.1 0.703 / 1.156.
BOOSTER_PARAMS = {
    "objective": "multiclass",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 10,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "feature_fraction": 0.3,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
BOOSTER_ROUNDS = 300

_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)  # D65


def _linear(c: np.ndarray) -> np.ndarray:
    """sRGB gamma (0-1) -> linear light."""
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92).astype(np.float32)


_LINEAR_U8 = _linear(np.arange(256, dtype=np.float32) / 255.0)  # uint8 photos: a table look-up, not a power


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in 0-255 (uint8 or float) -> CIE Lab (D65): L in 0..100, a and b roughly -100..100."""
    rgb = np.asarray(rgb)
    c = _LINEAR_U8[rgb] if rgb.dtype == np.uint8 else _linear(rgb.astype(np.float32) / 255.0)
    xyz = (c @ _SRGB_TO_XYZ.T) / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def garment_mask(images: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """(N, H, W) bool: pixels unlike the photo's background (the median colour of its border)."""
    im = np.asarray(images, np.float32)
    border = np.concatenate([im[:, 0], im[:, -1], im[:, :, 0], im[:, :, -1]], 1)
    bg = np.median(border, 1)
    return np.abs(im - bg[:, None, None]).max(-1) > threshold


def colour_features(images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB photos (as `Preprocess` makes them) -> float32 (N, COLOUR_FEATURES_DIM)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"colour_features: expected (N, H, W, 3) RGB images, got shape {images.shape}")
    nb = BINS[0] * BINS[1] * BINS[2]
    out = np.zeros((len(images), COLOUR_FEATURES_DIM), np.float32)
    for s in range(0, len(images), chunk):
        im = images[s : s + chunk]
        fg = garment_mask(im)
        lab = srgb_to_lab(im)
        L = np.clip((lab[..., 0] / 100 * BINS[0]).astype(np.int64), 0, BINS[0] - 1)
        A = np.clip(((lab[..., 1] + 60) / 120 * BINS[1]).astype(np.int64), 0, BINS[1] - 1)
        B = np.clip(((lab[..., 2] + 60) / 120 * BINS[2]).astype(np.int64), 0, BINS[2] - 1)
        code = (L * BINS[1] + A) * BINS[2] + B
        for j in range(len(im)):
            w = fg[j] if fg[j].sum() >= MIN_PIXELS else np.ones_like(fg[j])
            h = np.bincount(code[j][w], minlength=nb).astype(np.float32)
            px = lab[j][w]
            stats = np.concatenate([px.mean(0), px.std(0), np.percentile(px, PERCENTILES, axis=0).ravel()])
            out[s + j, :nb] = np.sqrt(h / h.sum())
            out[s + j, nb:-1] = stats / 50  # Lab units to roughly the histogram's scale (the heads standardise anyway)
            out[s + j, -1] = w.mean()
    return out


def colour_features_of_files(items: dict, preprocess, chunk: int = 2048, progress: bool = False):
    """{id: image path} -> (ids that decoded, float32 features): decoded as `preprocess` makes them (padded to a
    square, resized), `chunk` photos at a time so memory stays bounded; unreadable files are skipped (reported by
    the decoder)."""
    from fashionrec.features import decode_images_to_array

    keys = list(items)
    ids, feats = [], []
    for s in range(0, len(keys), chunk):
        part = {i: items[i] for i in keys[s : s + chunk]}
        ok, arr, _ = decode_images_to_array(part, preprocess, progress=progress, desc="colour features")
        ids += ok
        feats.append(colour_features(arr))  # (0, dim) when nothing decoded
    return ids, np.concatenate(feats) if feats else np.zeros((0, COLOUR_FEATURES_DIM), np.float32)


def fit_colour_booster(features: np.ndarray, labels: np.ndarray, n_classes: int, *, seed: int = 0, threads: int = 0):
    """LightGBM multiclass model of colour class (0..n_classes-1) from `colour_features`; None when the labels hold
    fewer than two classes (nothing to learn). `threads` 0: LightGBM's default (all cores)."""
    import lightgbm as lgb

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    params = {**BOOSTER_PARAMS, "num_class": int(n_classes), "seed": int(seed)}
    if threads:
        params["num_threads"] = int(threads)
    return lgb.train(params, lgb.Dataset(np.asarray(features, np.float32), labels), num_boost_round=BOOSTER_ROUNDS)


def combine_with_booster(p_linear: np.ndarray, booster, features: np.ndarray) -> np.ndarray:
    """The linear head's probabilities times the booster's (on the same photos' `colour_features`), renormalised."""
    if booster is None or not len(p_linear):
        return p_linear
    p_tree = booster.predict(np.asarray(features, np.float32)).reshape(len(p_linear), -1)
    if p_tree.shape != p_linear.shape:
        raise ValueError(f"colour booster gives {p_tree.shape[1]} classes, the head {p_linear.shape[1]}")
    logp = np.log(np.clip(p_linear, 1e-12, None)) + np.log(np.clip(p_tree, 1e-12, None))
    p = np.exp(logp - logp.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(p_linear.dtype)


def boost_colour_probs(
    p_linear: np.ndarray,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    images: np.ndarray,
    *,
    seed: int = 0,
    threads: int = 0,
    train_features: np.ndarray | None = None,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """A classifier's colour probabilities on `images` times a booster fitted on the labelled `train_images`'
    descriptors (labels 0..p_linear.shape[1]-1): what `tag` without `--model` does for a colour column. Photos as
    `Preprocess` makes them (uint8 RGB); greyscale photos carry no colour, so their probabilities are returned
    unchanged. `train_features` / `features`: those photos' `colour_features` when the caller already has them."""
    if np.asarray(images).ndim != 4 or np.asarray(train_images).ndim != 4 or not len(p_linear):
        return p_linear
    if train_features is None:
        train_features = colour_features(train_images)
    booster = fit_colour_booster(train_features, train_labels, p_linear.shape[1], seed=seed, threads=threads)
    return combine_with_booster(p_linear, booster, colour_features(images) if features is None else features)
