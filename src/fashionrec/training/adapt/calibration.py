"""The heads' temperatures, fitted on the held-out products (`evaluation.calibration`)."""

from __future__ import annotations

import numpy as np

from fashionrec.evaluation.calibration import calibration_report, crossfit_temperature, fit_temperature
from fashionrec.training.adapt.model import AdaptedModel


def calibrate_on_heldout(
    model: AdaptedModel,
    probs: dict[str, np.ndarray],
    head_only: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    held: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int = 0,
    min_photos: int = 10,
) -> tuple[dict[str, np.ndarray], dict]:
    """Fit each head's temperature on the held-out products' labelled photos (`model.temperatures`; and for a boosted
    colour head also the one without its booster), which the heads never trained on. -> (`probs` with the held-out
    rows calibrated by temperatures fitted on the *other* held-out products (2 folds by product, so the reported
    figures are not fitted on the photos they score), {head: temperature, the folds' temperatures, and
    `calibration_report` before and after}). Heads with fewer than `min_photos` labelled held-out photos keep T = 1.
    """
    rows = np.flatnonzero(held)
    out, report = dict(probs), {}
    for n in model.head_names:
        y = labels[n][rows]
        if (y >= 0).sum() < min_photos:
            continue
        p = probs[n][rows]
        model.temperatures[n] = fit_temperature(p, y)
        if n in model.colour_boosters:
            model.temperatures_no_booster[n] = fit_temperature(head_only[n][rows], y)
        honest, folds = crossfit_temperature(p, y, groups[rows], seed=seed)
        out[n] = np.array(probs[n], dtype=np.float64, copy=True)
        out[n][rows] = honest
        report[n] = {
            "temperature": round(model.temperatures[n], 4),
            "fold_temperatures": [round(t, 4) for t in folds],
            "before": calibration_report(p, y),
            "after": calibration_report(honest, y),
        }
    return out, report
