"""The server's photo tagger (fashionrec.tagging): fitting rules, storage as arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashionrec.tagging import Tagger, fit_taggers


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
