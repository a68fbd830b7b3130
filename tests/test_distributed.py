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
