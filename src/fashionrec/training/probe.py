"""Linear probe: logistic regression on frozen (cached) features."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, *, C: float = 1.0, max_iter: int = 2000, seed: int = 0):
    """Standardise, then multinomial logistic regression. Returns a fitted sklearn pipeline (predict_proba)."""
    if len(np.unique(labels)) < 2:
        raise ValueError("a linear probe needs at least two classes among the labelled examples")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    return clf.fit(features, labels)
