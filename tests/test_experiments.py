"""Label-efficiency experiment: resumable, merges methods, refuses to mix setups."""

import json
from dataclasses import replace

import numpy as np
import pytest

from fashionrec.errors import FashionrecError
from fashionrec.evaluation.label_efficiency import run_label_efficiency
from fashionrec.training.tasks import ClassifierConfig


def _blobs(n, seed):
    """Two classes told apart by mean brightness of the left vs right half."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, size=(n, 8, 8)).astype(np.uint8)
    x[y == 0, :, :4] += 150
    x[y == 1, :, 4:] += 150
    return x, y


def test_resume_runs_only_what_is_missing_and_checks_setup(tmp_path):
    x_pool, y_pool = _blobs(60, 0)
    x_te, y_te = _blobs(40, 1)
    cfg = ClassifierConfig()
    kw = dict(classes=["left", "right"], methods=["pixels"], out_dir=tmp_path, classifier_cfg=cfg, progress=False)
    t1 = run_label_efficiency(x_pool, y_pool, x_te, y_te, ks=[1, 5], seeds=[0], **kw)
    assert t1["pixels"]["5"][0] == 1.0  # the task is easy: a known answer
    first = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(first) == 2
    # Mark the saved runs: if they were recomputed the marks would vanish.
    res = json.loads((tmp_path / "results.json").read_text())
    for r in res["runs"]:
        r["seconds"] = -1
    (tmp_path / "results.json").write_text(json.dumps(res))
    t2 = run_label_efficiency(x_pool, y_pool, x_te, y_te, ks=[5], seeds=[0, 1], **kw)
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(runs) == 3 and sum(r["seconds"] == -1 for r in runs) == 2
    assert set(t2["pixels"]) == {"1", "5"}  # the table keeps k=1 from the first call
    assert "k=1" in (tmp_path / "table.md").read_text()
    # Other data in the same folder: refused, naming what differs; --fresh starts over.
    with pytest.raises(FashionrecError, match="different setup.*test"):
        run_label_efficiency(x_pool, y_pool, x_te[:20], y_te[:20], ks=[5], seeds=[0], **kw)
    with pytest.raises(FashionrecError, match="probe_C"):
        run_label_efficiency(
            x_pool, y_pool, x_te, y_te, ks=[5], seeds=[0], **{**kw, "classifier_cfg": replace(cfg, probe_C=1.0)}
        )
    run_label_efficiency(x_pool, y_pool, x_te[:20], y_te[:20], ks=[5], seeds=[0], resume=False, **kw)
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 1


def test_curve_axis_is_shared_and_ordered(tmp_path):
    from fashionrec.evaluation.plots import label_efficiency_axis, plot_label_efficiency

    table = {
        "probe": {"1": (0.5, 0.0), "10": (0.7, 0.0), "500": (0.8, 0.0), "all": (0.9, 0.0)},
        "finetune": {"1": (0.4, 0.0), "5": (0.6, 0.0), "10": (0.7, 0.0)},
    }
    assert label_efficiency_axis(table) == ["1", "5", "10", "500", "all"]
    assert plot_label_efficiency(table, tmp_path / "c.png", "t").stat().st_size > 1000


def test_finetune_max_k_counts_all_as_the_pool_size(tmp_path, monkeypatch):
    import fashionrec.training.tasks as tasks

    calls = []

    class Fake:
        def __init__(self, n):
            self.n = n

        def predict_proba(self, x):
            return np.tile([1.0, 0.0], (len(x), 1))

    monkeypatch.setattr(tasks, "train_image_classifier", lambda x, y, *a, **k: calls.append(len(y)) or Fake(len(y)))
    x_pool, y_pool = _blobs(60, 0)
    x_te, y_te = _blobs(10, 1)
    kw = dict(classes=["left", "right"], methods=["finetune"], classifier_cfg=ClassifierConfig(), progress=False)
    run_label_efficiency(
        x_pool, y_pool, x_te, y_te, ks=[5, "all"], seeds=[0], out_dir=tmp_path / "a", finetune_max_k=10, **kw
    )
    assert calls == [10]  # k=5 (2 classes x 5); "all" = 60 images > 10: skipped
    run_label_efficiency(
        x_pool, y_pool, x_te, y_te, ks=["all"], seeds=[0], out_dir=tmp_path / "b", finetune_max_k=100, **kw
    )
    assert calls == [10, 60]
