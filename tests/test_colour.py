"""The garment colour descriptor the colour heads read (`training/colour.py`): known answers on drawn photos."""

from __future__ import annotations

import numpy as np
import pytest

from fashionrec.training.colour import (
    BINS,
    COLOUR_FEATURES_DIM,
    boost_colour_probs,
    colour_features,
    combine_with_booster,
    fit_colour_booster,
    garment_mask,
    srgb_to_lab,
)

NB = BINS[0] * BINS[1] * BINS[2]


def _photo(garment, background=(255, 255, 255), size=40, box=(8, 30, 12, 28)):
    """A plain backdrop with a rectangular garment (rows box[0]:box[1], columns box[2]:box[3])."""
    im = np.empty((size, size, 3), np.uint8)
    im[:] = background
    im[box[0] : box[1], box[2] : box[3]] = garment
    return im


def _bin_of(rgb) -> int:
    L, a, b = srgb_to_lab(np.array(rgb, np.float32))
    li = min(int(L / 100 * BINS[0]), BINS[0] - 1)
    ai = min(max(int((a + 60) / 120 * BINS[1]), 0), BINS[1] - 1)
    bi = min(max(int((b + 60) / 120 * BINS[2]), 0), BINS[2] - 1)
    return (li * BINS[1] + ai) * BINS[2] + bi


def test_lab_known_values():
    """CIE Lab (D65) of sRGB white, black, mid grey and pure red, against the standard's published values."""
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [119, 119, 119], [255, 0, 0]], np.float32))
    assert np.allclose(lab[0], [100, 0, 0], atol=0.1)
    assert np.allclose(lab[1], [0, 0, 0], atol=0.1)
    assert np.allclose(lab[2], [50.0, 0, 0], atol=0.5) and abs(lab[2, 1]) < 0.1  # greys have no chroma
    assert np.allclose(lab[3], [53.24, 80.09, 67.20], atol=0.3)


def test_garment_mask_is_the_drawn_garment_on_any_backdrop():
    for bg in [(255, 255, 255), (235, 235, 232), (40, 40, 40)]:
        m = garment_mask(_photo((200, 30, 30), background=bg)[None])[0]
        want = np.zeros((40, 40), bool)
        want[8:30, 12:28] = True
        assert (m == want).all(), bg


def test_histogram_holds_the_garment_colour_not_the_backdrop():
    red, navy = (200, 30, 30), (20, 30, 90)
    f = colour_features(np.stack([_photo(red), _photo(red, background=(230, 230, 230)), _photo(navy)]))
    assert f.shape == (3, COLOUR_FEATURES_DIM) and f.dtype == np.float32
    h = f[:, :NB] ** 2  # the histogram is stored square-rooted
    assert np.allclose(h.sum(1), 1, atol=1e-5)
    # all the mass in the garment's own bin, whatever the backdrop
    assert h[0, _bin_of(red)] == pytest.approx(1.0) and h[2, _bin_of(navy)] == pytest.approx(1.0)
    assert np.allclose(f[0], f[1], atol=1e-6)
    # the statistics: mean L, a, b of the garment; navy is darker and bluer than red
    mean_red, mean_navy = f[0, NB : NB + 3] * 50, f[2, NB : NB + 3] * 50
    assert np.allclose(mean_red, srgb_to_lab(np.array(red, np.float32)), atol=0.1)
    assert mean_navy[0] < mean_red[0] and mean_navy[2] < 0 < mean_red[1]
    assert f[0, -1] == pytest.approx(22 * 16 / 40**2)  # the garment's share of the photo


def test_two_colour_garment_and_mirror_image():
    im = _photo((200, 30, 30))
    im[8:19, 12:28] = (30, 160, 40)  # top half green
    f = colour_features(np.stack([im, im[:, ::-1]]))
    h = f[0, :NB] ** 2
    assert h[_bin_of((30, 160, 40))] == pytest.approx(0.5) and h[_bin_of((200, 30, 30))] == pytest.approx(0.5)
    assert np.allclose(f[0], f[1])  # a mirror image has the same descriptor


def test_tiny_or_missing_garment_uses_the_whole_photo_and_bad_shapes_are_refused():
    plain = np.full((1, 20, 20, 3), 128, np.uint8)  # nothing unlike the backdrop
    f = colour_features(plain)
    assert f[0, _bin_of((128, 128, 128))] == pytest.approx(1.0) and f[0, -1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected"):
        colour_features(np.zeros((2, 20, 20), np.uint8))


def test_booster_learns_what_a_linear_model_cannot_and_multiplies_in():
    """Known answer: the class is the XOR of two descriptor bins' being lit (a two-tone garment's pair of colours),
    which no linear model of the descriptor separates and trees do."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((600, 20)).astype(np.float32)
    y = ((x[:, 3] > 0.5) ^ (x[:, 7] > 0.5)).astype(int)
    tr, te = slice(0, 400), slice(400, None)
    booster = fit_colour_booster(x[tr], y[tr], 2, seed=0, threads=1)
    p = booster.predict(x[te])
    assert p.shape == (200, 2) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1) == y[te]).mean() > 0.9
    assert (LogisticRegression().fit(x[tr], y[tr]).predict(x[te]) == y[te]).mean() < 0.7
    # multiplied with a head that knows nothing (uniform), the booster decides; with no booster nothing changes
    flat = np.full((200, 2), 0.5, np.float32)
    assert np.allclose(combine_with_booster(flat, booster, x[te]), p, atol=1e-6)
    assert combine_with_booster(flat, None, x[te]) is flat
    # a confident head and a confident booster that disagree: the product renormalises, the stronger wins
    head = np.tile([[0.9, 0.1]], (200, 1)).astype(np.float32)
    both = combine_with_booster(head, booster, x[te])
    expected = head * p / (head * p).sum(1, keepdims=True)
    assert np.allclose(both, expected, atol=1e-5)
    with pytest.raises(ValueError, match="classes"):
        combine_with_booster(np.full((200, 3), 1 / 3), booster, x[te])
    assert fit_colour_booster(x[:10], np.zeros(10, int), 2) is None  # one class: nothing to learn


def test_boost_colour_probs_tags_colour_a_colour_blind_classifier_misses():
    """What `tag` without --model does for a colour column: drawn garments in three colours on varied backdrops; a
    classifier that knows nothing (uniform) times the booster fitted on the labelled photos gets every colour right,
    a confident classifier is combined as the product, greyscale photos are returned unchanged."""
    rng = np.random.default_rng(0)
    rgb = [(200, 30, 30), (30, 30, 200), (30, 160, 30)]

    def photos(n):
        y = rng.integers(0, 3, n)
        ims = [
            _photo(np.clip(np.array(rgb[k]) + rng.integers(-20, 21, 3), 0, 255), background=(int(g),) * 3)
            for k, g in zip(y, rng.integers(200, 256, n))
        ]
        return np.stack(ims), y

    x_tr, y_tr = photos(90)
    x_te, y_te = photos(30)
    flat = np.full((30, 3), 1 / 3, np.float32)
    p = boost_colour_probs(flat, x_tr, y_tr, x_te, seed=0, threads=1)
    assert p.shape == (30, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == y_te).all() and not np.allclose(p, flat)
    wrong = np.eye(3, dtype=np.float32)[(y_te + 1) % 3] * 0.4 + 0.2  # a classifier that leans the wrong way
    both = boost_colour_probs(wrong, x_tr, y_tr, x_te, seed=0, threads=1)
    booster = fit_colour_booster(colour_features(x_tr), y_tr, 3, seed=0, threads=1)
    assert np.allclose(both, combine_with_booster(wrong, booster, colour_features(x_te)), atol=1e-6)
    grey = x_te[..., 0]
    assert boost_colour_probs(flat, x_tr, y_tr, grey) is flat
