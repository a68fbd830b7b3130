"""Temperature scaling: known-answer data where the true probabilities are known and the tagger's are sharpened."""

import numpy as np
import pytest

from fashionrec.evaluation.calibration import (
    apply_temperature,
    calibration_report,
    crossfit_temperature,
    fit_temperature,
)


def _overconfident(n=4000, classes=5, power=3.0, seed=0):
    """Labels drawn from known probabilities; the 'tagger' reports those probabilities raised to `power`
    (overconfident by exactly temperature `power`). Products of 4 photos share a label distribution."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (n // 4, classes)).repeat(4, 0)
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=p) for p in true])
    sharp = true**power
    return true, sharp / sharp.sum(1, keepdims=True), y, np.arange(n) // 4


def test_temperature_recovers_a_known_overconfidence_and_keeps_the_ranking():
    true, reported, y, groups = _overconfident()
    t = fit_temperature(reported, y)
    assert t == pytest.approx(3.0, rel=0.15)  # the sharpening it was given
    calibrated = apply_temperature(reported, t)
    assert np.array_equal(calibrated.argmax(1), reported.argmax(1))  # accuracy cannot change
    assert np.allclose(calibrated.sum(1), 1)
    before, after = calibration_report(reported, y), calibration_report(calibrated, y)
    assert before["mean_confidence"] > before["accuracy"] + 0.1  # overconfident, as built
    assert after["ece"] < before["ece"] / 2 and after["log_loss"] < before["log_loss"]
    assert abs(after["mean_confidence"] - after["accuracy"]) < 0.03
    # honest figures: each half of the products calibrated by the temperature of the other half
    honest, folds = crossfit_temperature(reported, y, groups)
    assert len(folds) == 2 and all(f == pytest.approx(3.0, rel=0.25) for f in folds)
    assert calibration_report(honest, y)["ece"] < before["ece"] / 2
    # a calibrated tagger needs no change; T = 1 and too few labels leave probabilities as they are
    assert fit_temperature(true, y) == pytest.approx(1.0, abs=0.15)
    assert apply_temperature(reported, 1.0) is reported
    assert fit_temperature(reported[:1], y[:1]) == 1.0
    assert fit_temperature(reported, np.full_like(y, -1)) == 1.0


def test_calibration_report_counts_what_min_confidence_keeps():
    p = np.array([[0.95, 0.05], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    r = calibration_report(p, y)
    assert r["n"] == 4 and r["accuracy"] == 0.75
    assert r["at_min_confidence"]["0.5"] == {"coverage": 1.0, "accuracy": 0.75}
    assert r["at_min_confidence"]["0.7"] == {"coverage": 0.5, "accuracy": 1.0}
    assert r["at_min_confidence"]["0.9"] == {"coverage": 0.25, "accuracy": 1.0}
    # ECE by hand: four bins of one photo each (0.6 wrong; 0.55, 0.8, 0.95 right), a quarter of the photos each
    assert r["ece"] == pytest.approx(0.25 * (0.6 + 0.45 + 0.2 + 0.05), abs=1e-4)
    assert calibration_report(p, np.full(4, -1)) == {"n": 0}


def test_apply_temperature_matches_hand_written_softmax():
    """scipy.special.softmax against the formula: p^(1/T), renormalised (float32 stays float32)."""
    _, reported, y, _ = _overconfident(400)
    for t in (0.5, 2.0, 7.5):
        ref = reported ** (1 / t)
        assert np.allclose(apply_temperature(reported, t), ref / ref.sum(1, keepdims=True), atol=1e-12)
    assert apply_temperature(reported.astype(np.float32), 2.0).dtype == np.float32
    # the fitted T minimises the hand-written mean negative log-likelihood
    t = fit_temperature(reported, y)

    def nll(tt):
        p = reported ** (1 / tt)
        p = p / p.sum(1, keepdims=True)
        return -np.mean(np.log(p[np.arange(len(y)), y]))

    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1))
