"""The hybrid package: saved models keep their class names, product codes, and the training windows."""

import pandas as pd
import pytest

from test_batch import _log


@pytest.fixture(scope="module")
def small():
    from fashionrec.recommend import create_recommender

    return create_recommender("hybrid", n_windows=2).fit(_log(n_users=60, n_products=30))


def test_saved_model_keeps_its_class_names_and_lists(small, tmp_path):
    """Artifacts name the hybrid's classes as they always have (a model saved before the package split loads)."""
    import json

    from fashionrec.artifacts import load_artifact
    from fashionrec.recommend.base import load_recommender

    path = small.save(tmp_path / "hybrid.npz")
    cfg, _, _, _ = load_artifact(path, kind="recommender")
    text = json.dumps(cfg["state"])
    assert '"fashionrec.recommend.hybrid.Hybrid"' in text and '"fashionrec.recommend.hybrid._State"' in text
    back = load_recommender(path)
    users = list(small.data.user_ids) + ["never-seen"]
    assert back.recommend_block(users, 12) == small.recommend_block(users, 12)


def test_product_codes_are_product_code_of():
    from fashionrec.recommend.hybrid import product_codes

    assert product_codes(["0108775015", "0108775044", "sku-9"]).tolist() == ["0108775", "0108775", "sku-9"]


def test_windows_back_to_the_start_of_the_log(small):
    """n_windows=None: windows `window_step_days` apart from the newest back to the first event of the log."""
    from fashionrec.recommend import create_recommender
    from fashionrec.recommend.hybrid.training import window_times

    data = small.data
    now = pd.Timestamp(data.now).normalize() + pd.Timedelta(days=1)
    first = pd.Timestamp(data.events["timestamp"].min())
    m = create_recommender("hybrid", n_windows=None, window_step_days=28)
    starts = window_times(m, data, now)
    expect = [now - pd.Timedelta(days=28 + 28 * w) for w in range(50)]
    assert starts == [t for t in expect if t > first] and len(starts) >= 3
    assert all((a - b).days == 28 for a, b in zip(starts, starts[1:]))  # label windows do not overlap
    assert window_times(create_recommender("hybrid"), data, now)[:2] == [expect[0], expect[0] - pd.Timedelta(days=14)]
    with pytest.raises(ValueError, match="n_windows"):
        create_recommender("hybrid", n_windows=0)
