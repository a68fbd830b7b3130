"""Tags from a photo's image features: the tagger the server fits once and applies to every upload.

A `Tagger` predicts one catalog attribute (product type, colour, ...) from a photo's raw backbone vector:
standardise, then multinomial logistic regression (`training.probe.fit_linear_probe`, the fitting routine of the
`tag` command's probe too), kept as arrays and applied in numpy (no sklearn or torch at prediction time,
memory-mappable in the server's tables). `fit_taggers` fits one per column at the server's cold build, with the
regularisation `config.TAGGER_C`, measured on the H&M sample against the other settings and against the
recommenders' neighbour vote (`recommend.attributes.predict_attributes`, which tags every catalog photo in seconds
where cross-fitted logistic taggers take many minutes): docs/tagging.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashionrec.config import TAGGER_C

#: a class with fewer labelled photos than this is not learnt (too few to fit, and to score)
MIN_CLASS_COUNT = 5
_FIELDS = ("classes", "mean", "scale", "coef", "intercept")


@dataclass(frozen=True)
class Tagger:
    """StandardScaler + multinomial logistic regression over one attribute's classes, as coefficients."""

    column: str
    classes: np.ndarray  # (C,) str
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (C, D), or (1, D) for two classes
    intercept: np.ndarray  # (C,) or (1,)

    @classmethod
    def fit(
        cls,
        column: str,
        features: np.ndarray,
        labels: Sequence,
        *,
        C: float = TAGGER_C,
        max_iter: int = 500,
        min_count: int = MIN_CLASS_COUNT,
    ) -> Tagger | None:
        """Fit on labelled photos (`labels` as strings; None/NaN: unlabelled, skipped). Classes with fewer than
        `min_count` photos are left out; None when fewer than two classes remain."""
        from fashionrec.training.probe import fit_linear_probe

        raw = pd.Series(np.asarray(labels, dtype=object))
        lab = raw[raw.notna()].astype(str)
        counts = lab.value_counts()
        lab = lab[lab.isin(counts[counts >= min_count].index)]
        if lab.nunique() < 2:
            return None
        x = np.asarray(features)[lab.index.to_numpy()]
        return cls.from_pipeline(column, fit_linear_probe(x, lab.to_numpy(), C=C, max_iter=max_iter))

    @classmethod
    def from_pipeline(cls, column: str, pipe) -> Tagger:
        scaler, lr = pipe[0], pipe[-1]
        return cls(
            column,
            np.asarray(lr.classes_).astype(str),
            scaler.mean_.astype(np.float64),
            scaler.scale_.astype(np.float64),
            lr.coef_.astype(np.float64),
            lr.intercept_.astype(np.float64),
        )

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities for raw backbone vectors, as sklearn's predict_proba."""
        z = (np.atleast_2d(raw).astype(np.float64) - self.mean) / self.scale
        logits = z @ np.asarray(self.coef).T + self.intercept
        if logits.shape[1] == 1:  # sklearn's binary case: one logit for the second class
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, raw: np.ndarray, top: int = 3) -> list[dict]:
        """The `top` classes of one photo: [{"label", "probability"}], most probable first."""
        p = self.probabilities(raw)[0]
        order = np.argsort(-p, kind="stable")[:top]
        return [{"label": str(self.classes[j]), "probability": round(float(p[j]), 4)} for j in order]

    def arrays(self, prefix: str = "tag") -> dict[str, np.ndarray]:
        return {f"{prefix}.{self.column}.{k}": np.asarray(getattr(self, k)) for k in _FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], column: str, prefix: str = "tag") -> Tagger:
        return cls(column, *(arrays[f"{prefix}.{column}.{k}"] for k in _FIELDS))


def fit_taggers(
    item_ids: Sequence[str],
    features: np.ndarray,
    metadata: pd.DataFrame,
    columns: Sequence[str],
    *,
    progress: bool = False,
) -> list[Tagger]:
    """One tagger per column of `metadata` (among `columns`) with at least two classes, fitted on every item of
    `item_ids` (rows of `features`) that has a value."""
    from tqdm.auto import tqdm

    out = []
    ids = pd.Index(item_ids)
    for col in tqdm(list(columns), desc="fit taggers", unit="column", disable=not progress):
        if col not in metadata.columns:
            continue
        t = Tagger.fit(col, features, _labels(metadata, col, ids))
        if t is not None:
            out.append(t)
    return out


def _labels(metadata: pd.DataFrame, column: str, ids: pd.Index) -> np.ndarray:
    """The column's value of each id (None where it has no row or no value); the first of duplicated rows."""
    col = metadata[column]
    col = col[~col.index.duplicated(keep="first")]
    return col.reindex(ids).astype(object).where(lambda s: s.notna(), None).to_numpy()
