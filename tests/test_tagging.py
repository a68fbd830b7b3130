"""The one photo tagger (fashionrec.tagging): fitting rules, storage as arrays, cross-fitting without leaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashionrec.tagging import UNKNOWN, Tagger, cross_fit_tags, fit_taggers


def _clusters(n_per: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = {"red": np.r_[4.0, 0, 0], "blue": np.r_[0, 4.0, 0], "green": np.r_[0, 0, 4.0]}
    labels = np.repeat(list(centres), n_per)
    x = np.stack([centres[c] for c in labels]) + rng.normal(scale=0.5, size=(len(labels), 3))
    return x, labels


def test_fit_skips_unlabelled_photos_and_rare_classes():
    x, y = _clusters()
    y = y.astype(object)
    y[:5] = None  # unlabelled photos: not fitted on
    y[-3:] = "purple"  # 3 photos: under the 5 a class needs
    t = Tagger.fit("colour", x, y)
    assert sorted(t.classes) == ["blue", "green", "red"]
    assert t.predict(np.r_[0, 4.0, 0], top=2)[0]["label"] == "blue"
    assert Tagger.fit("colour", x, np.array(["red"] * len(x))) is None  # one class: nothing to learn


def test_arrays_round_trip():
    x, y = _clusters()
    t = Tagger.fit("colour", x, y)
    back = Tagger.from_arrays(t.arrays(), "colour")
    assert np.array_equal(back.probabilities(x), t.probabilities(x)) and list(back.classes) == list(t.classes)


def test_fit_taggers_one_per_column_with_two_classes():
    x, y = _clusters()
    ids = [f"i{j}" for j in range(len(x))]
    meta = pd.DataFrame({"colour": y, "same": "x"}, index=ids)
    got = fit_taggers(ids, x, meta, ["colour", "same", "absent"])
    assert [t.column for t in got] == ["colour"]


def test_cross_fit_never_tags_an_item_with_its_own_row():
    """Random labels on random features: a tagger fitted on every row memorises them (D > N, weak regularisation),
    cross-fitted tags are at chance; the rows without a label are tagged too."""
    rng = np.random.default_rng(0)
    n, d = 120, 200
    x = rng.normal(size=(n, d))
    y = rng.choice(["a", "b"], size=n).astype(object)
    ids = [f"i{j}" for j in range(n)]
    meta = pd.DataFrame({"c": y}, index=ids).iloc[: n - 10]  # the last 10 items have no row
    t = Tagger.fit("c", x[: n - 10], y[: n - 10], C=1e4)
    assert (t.classes[t.probabilities(x[: n - 10]).argmax(1)] == y[: n - 10]).mean() == 1.0
    tags = cross_fit_tags(ids, x, meta, ["c"], n_folds=4)
    assert (tags["c"].to_numpy()[: n - 10] == y[: n - 10]).mean() < 0.75
    assert set(tags["c"]) <= {"a", "b", UNKNOWN} and (tags["c"].iloc[n - 10 :] != UNKNOWN).all()
    assert tags["c_confidence"].between(0.5, 1.0).all()


def test_cross_fit_recovers_clear_classes():
    x, y = _clusters(seed=1)
    ids = [f"i{j}" for j in range(len(x))]
    tags = cross_fit_tags(ids, x, pd.DataFrame({"colour": y}, index=ids), ["colour"])
    assert (tags["colour"].to_numpy() == y).mean() == pytest.approx(1.0)
