"""Ray Data batch embedding on a local Ray instance started by the test: same features as the local path."""

import numpy as np
import pytest

from conftest import make_image


def test_ray_embedding_matches_local(tmp_path):
    pytest.importorskip("ray")
    from fashionrec.backbones import create_backbone
    from fashionrec.distributed import embed_with_ray
    from fashionrec.features import embed_image_files

    items = {f"a{i}": make_image(tmp_path / f"a{i}.jpg", (20 * i, 100, 200 - 10 * i)) for i in range(9)}
    (tmp_path / "bad.jpg").write_bytes(b"")
    items["bad"] = tmp_path / "bad.jpg"
    ids, feats = embed_with_ray(items, backbone="tiny_cnn", input_size=28, num_actors=2, batch_size=4)
    local = embed_image_files(create_backbone("tiny_cnn", input_size=28), items, num_workers=0, progress=False)
    assert ids == local.ids == [f"a{i}" for i in range(9)]
    assert np.allclose(feats, local.features, atol=1e-5)


def test_ray_batch_recommendation_equals_single_process(tmp_path):
    """Customers sharded over 2 Ray actors sharing the model through the object store: the same file, byte for byte."""
    pytest.importorskip("ray")
    from fashionrec.recommend import create_recommender
    from fashionrec.recommend.batch import recommend_all
    from test_batch import _log

    model = create_recommender("hybrid", n_windows=2).fit(_log(seed=3, n_users=90))
    users = list(model.data.user_ids)[::-1] + ["never-seen"]  # any order: the output keeps it
    local = recommend_all(model, users, 12, tmp_path / "local.csv", block_size=8, progress=False)
    timings = {}
    dist = recommend_all(
        model, users, 12, tmp_path / "ray.csv", block_size=8, progress=False, workers=2, timings=timings
    )
    assert dist.read_bytes() == local.read_bytes()
    assert dist.read_text().count("\n") == len(users) + 1
    assert timings["worker_peak_gib"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.csv", "ray.csv"]  # part files removed
