"""Training: staged fine-tuning, discriminative learning rates, AdaBN, checkpoints, on data with a known answer."""

import copy

import numpy as np
import pytest
import torch

from fashionrec.backbones import create_backbone
from fashionrec.evaluation.calibration import apply_temperature
from fashionrec.features import Preprocess
from fashionrec.training.checkpoint import load_classifier
from fashionrec.training.domain import adapt_batchnorm
from fashionrec.training.finetune import FinetuneConfig, ImageClassifier, _param_groups, finetune
from fashionrec.training.tasks import ClassifierConfig, evaluate_classifier, is_light_on_dark, train_image_classifier


def _bars(n=120, seed=0):
    """Class 0: a vertical bar; class 1: a horizontal bar (light on dark, like Fashion-MNIST)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        p = int(rng.integers(6, 20))
        if y[i] == 0:
            x[i, 4:24, p : p + 4] = 220
        else:
            x[i, p : p + 4, 4:24] = 220
    return x, y


def test_schedule_unfreezes_last_blocks_with_smaller_rates():
    bb = create_backbone("tiny_cnn")
    model = ImageClassifier(bb, 2)
    cfg = FinetuneConfig(lr=1e-2, lr_decay=0.5)
    groups = _param_groups(model, "head", cfg)
    assert len(groups) == 1 and not any(p.requires_grad for p in bb.parameters())
    groups = _param_groups(model, "last:2", cfg)
    assert [g["lr"] for g in groups] == [1e-2, 5e-3, 2.5e-3]
    assert not any(p.requires_grad for p in bb.blocks[0].parameters())
    assert all(p.requires_grad for p in bb.blocks[-1].parameters())
    groups = _param_groups(model, "all", cfg)
    assert all(p.requires_grad for p in bb.parameters())
    with pytest.raises(ValueError, match="bad stage"):
        FinetuneConfig(stages=(("middle", 1),))


def _val_accuracy(model, x, y, pre):
    from fashionrec.training.finetune import predict_logits

    return float((predict_logits(model, x, pre).argmax(1) == y).mean())


def test_finetune_learns_known_task():
    x, y = _bars(160)
    pre = Preprocess(28, (0.5,) * 3, (0.5,) * 3)
    cfg = FinetuneConfig(stages=(("head", 2), ("all", 6)), lr=5e-3, batch_size=32, seed=0, hflip=False)
    res = finetune(create_backbone("tiny_cnn"), x[:120], y[:120], x[120:], y[120:], 2, pre, cfg, progress=False)
    assert res.best_val_accuracy >= 0.9
    assert [h["stage"] for h in res.history][:2] == ["head", "head"]
    assert _val_accuracy(res.model, x[120:], y[120:], pre) == res.best_val_accuracy  # the returned weights score it


def test_finetune_restores_the_best_weights_not_the_last():
    """Validation labels are the opposite of training's and the head starts from a probe fitted on those opposite
    labels: the more the model learns, the worse it validates, so the best epoch is an early one and the returned
    model must hold that epoch's weights, not the last ones."""
    from sklearn.linear_model import LogisticRegression

    from fashionrec.features import embed_arrays

    x, y = _bars(160)
    pre = Preprocess(28, (0.5,) * 3, (0.5,) * 3)
    f = embed_arrays(create_backbone("tiny_cnn"), x[:120], preprocess=pre, progress=False)
    lr = LogisticRegression(C=100, max_iter=5000).fit(f, 1 - y[:120])
    c, b = lr.coef_[0], lr.intercept_[0]
    init = (np.stack([-c / 2, c / 2]), np.array([-b / 2, b / 2]))
    cfg = FinetuneConfig(stages=(("all", 4),), lr=1e-3, batch_size=32, seed=0, hflip=False, augment=False, patience=10)
    x_val, y_val_flipped = x[120:], 1 - y[120:]
    res = finetune(
        create_backbone("tiny_cnn"), x[:120], y[:120], x_val, y_val_flipped, 2, pre, cfg, init_head=init, progress=False
    )
    accs = [h["val_accuracy"] for h in res.history]
    assert len(accs) == 4 and accs[-1] < max(accs), accs  # the set-up works: the last epoch is not the best
    assert res.best_val_accuracy == max(accs)
    assert _val_accuracy(res.model, x_val, y_val_flipped, pre) == max(accs)  # best weights restored


def test_adabn_changes_only_statistics():
    bb = create_backbone("tiny_cnn")
    w_before = [p.clone() for p in bb.parameters()]
    mean_before = bb.model.blocks[0][1].running_mean.clone()
    x, _ = _bars(64)
    adapt_batchnorm(bb, x, Preprocess(28, (0.5,) * 3, (0.5,) * 3), batch_size=32, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(w_before, bb.parameters()))
    assert not torch.allclose(mean_before, bb.model.blocks[0][1].running_mean)
    assert not bb.training


def test_light_on_dark_detection():
    x, _ = _bars(10)
    assert is_light_on_dark(x)
    assert not is_light_on_dark(255 - x)


@pytest.mark.parametrize("method", ["linear-probe", "finetune"])
def test_checkpoint_roundtrip(method, tmp_path):
    x, y = _bars(80)
    cfg = ClassifierConfig(
        method=method,
        backbone="tiny_cnn",
        input_size=28,
        taps=("final",),
        finetune=FinetuneConfig(stages=(("head", 1), ("all", 1)), batch_size=32),
    )
    tr = train_image_classifier(x[:60], y[:60], ["vertical", "horizontal"], cfg, progress=False)
    p1 = tr.predict_proba(x[60:], progress=False)
    tr.save(tmp_path / "m.pt")
    back = load_classifier(tmp_path / "m.pt")
    assert back.classes == ["vertical", "horizontal"]
    assert np.allclose(back.predict_proba(x[60:]), p1, atol=1e-4)
    assert type(back) is type(tr)  # one classifier type: trained and loaded predict through the same code
    if method == "finetune":  # calibrated on the 12 validation images early stopping read (60 // 5)
        assert tr.metrics["calibration_fit"]["n"] == 12 and back.temperature == pytest.approx(tr.temperature)
    # the temperature is applied to whatever the classifier predicts, and saved with it; the best class stays
    raw = copy.copy(tr)
    raw.temperature = 1.0
    tr.temperature = 2.5
    p25 = tr.predict_proba(x[60:], progress=False)
    assert np.allclose(p25, apply_temperature(raw.predict_proba(x[60:], progress=False), 2.5), atol=1e-5)
    assert np.array_equal(p25.argmax(1), p1.argmax(1))
    tr.save(tmp_path / "m25.pt")
    assert np.allclose(load_classifier(tmp_path / "m25.pt").predict_proba(x[60:]), p25, atol=1e-4)
    metrics = evaluate_classifier(tr, x[60:], y[60:])
    # the metrics are those of the predictions, computed independently (sklearn as the reference)
    from sklearn.metrics import confusion_matrix, f1_score

    pred = p1.argmax(1)
    assert metrics["n_test"] == 20 and np.array_equal(metrics["_pred"], pred)
    assert metrics["test_accuracy"] == pytest.approx(float((pred == y[60:]).mean()))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y[60:], pred, average="macro", labels=[0, 1], zero_division=0))
    assert metrics["confusion_matrix"] == confusion_matrix(y[60:], pred, labels=[0, 1]).tolist()
    if method == "linear-probe":  # bars are linearly separable in any CNN's features
        assert metrics["test_accuracy"] >= 0.9


def test_probe_probabilities_align_with_class_ids_when_a_class_is_unseen(tmp_path):
    # class 1 ("empty") never appears in training: predictions must still index the full class list
    x, y = _bars(60)
    y = np.where(y == 1, 2, 0)
    cfg = ClassifierConfig(backbone="tiny_cnn", input_size=28, taps=("final",))
    tr = train_image_classifier(x[:40], y[:40], ["vertical", "empty", "horizontal"], cfg, progress=False)
    p = tr.predict_proba(x[40:], progress=False)
    assert p.shape == (20, 3) and np.all(p[:, 1] == 0)
    assert (p.argmax(1) == y[40:]).mean() >= 0.9
    tr.save(tmp_path / "m.pt")
    assert np.allclose(load_classifier(tmp_path / "m.pt").predict_proba(x[40:]), p, atol=1e-4)


def test_channels_last_model_predicts_like_contiguous():
    import copy

    from fashionrec.training.finetune import memory_format_of, predict_logits

    x, _ = _bars(16)
    pre = Preprocess(28, (0.5,) * 3, (0.5,) * 3)
    ref = ImageClassifier(create_backbone("tiny_cnn"), 2).eval()
    cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    assert memory_format_of(ref) == torch.contiguous_format and memory_format_of(cl) == torch.channels_last
    np.testing.assert_allclose(predict_logits(cl, x, pre), predict_logits(ref, x, pre), rtol=1e-4, atol=1e-4)


def test_shrink_area_averages_known_blocks():
    from fashionrec.evaluation.label_efficiency import shrink

    x = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    x[:, ::2, :, :] = 200  # every other row: each 2x2 block averages to 100
    x[1, :, :, 1] = 7  # second image, green channel constant
    s = shrink(x, 32)
    assert s.shape == (2, 32, 32, 3) and s.dtype == np.uint8
    assert (s[0] == 100).all() and (s[1, :, :, 1] == 7).all() and (s[1, :, :, 0] == 100).all()
    g = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28)
    assert shrink(g, 32) is g  # already small: untouched
    assert shrink(np.full((1, 40, 40), 9, np.uint8), 20).shape == (1, 20, 20)


def test_without_validation_the_schedule_runs_to_the_end():
    x, y = _bars(40)
    pre = Preprocess(28, (0.5,) * 3, (0.5,) * 3)
    cfg = FinetuneConfig(stages=(("head", 3),), lr=5e-3, batch_size=16, patience=1, hflip=False)
    res = finetune(create_backbone("tiny_cnn"), x, y, x[:0], y[:0], 2, pre, cfg, progress=False)
    assert len(res.history) == 3  # no validation images: nothing to stop early on


def test_finetune_head_probe_never_sees_the_validation_split(monkeypatch):
    import fashionrec.training.probe as probe_mod

    seen = []
    real = probe_mod.fit_linear_probe
    monkeypatch.setattr(probe_mod, "fit_linear_probe", lambda f, yy, **kw: seen.append(len(yy)) or real(f, yy, **kw))
    x, y = _bars(50)
    cfg = ClassifierConfig(
        method="finetune",
        backbone="tiny_cnn",
        input_size=28,
        taps=("final",),
        finetune=FinetuneConfig(stages=(("head", 1),), batch_size=16),
    )
    train_image_classifier(x, y, ["v", "h"], cfg, progress=False)
    assert seen == [40]  # 50 images, 10 held out for early stopping


def test_label_efficiency_gets_the_prepared_backbone_directly():
    """prepare_backbone is the backbone a trained classifier embeds with (inversion, taps, AdaBN): same identity,
    same features; the label-efficiency experiment uses it instead of training on fake labels."""
    from fashionrec.training.tasks import prepare_backbone

    x, y = _bars(40)
    unl, _ = _bars(64, seed=1)
    cfg = ClassifierConfig(backbone="tiny_cnn", input_size=28, adapt_bn=True, bn_images=64)
    prep = prepare_backbone(cfg, x, unlabelled=unl, progress=False)
    tr = train_image_classifier(x, y, ["v", "h"], cfg, unlabelled=unl, progress=False)
    assert prep.config.invert is True and prep.preprocess == tr.preprocess and "+adabn:" in prep.backbone.weights_id
    assert prep.backbone.feature_key() == tr.backbone.feature_key()
    from fashionrec.features import embed_arrays

    a = embed_arrays(prep.backbone, x[:8], preprocess=prep.preprocess, progress=False)
    b = embed_arrays(tr.backbone, x[:8], preprocess=tr.preprocess, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_head_predicts_like_the_sklearn_pipeline(n_classes):
    """The one predict path (Tagger: standardise, logits, softmax) gives sklearn's own probabilities, binary
    (sigmoid) and multinomial alike."""
    from fashionrec.tagging import Tagger
    from fashionrec.training.probe import fit_linear_probe

    rng = np.random.default_rng(0)
    y = np.arange(90) % n_classes
    f = rng.normal(size=(90, 8)) + y[:, None] * 0.7
    pipe = fit_linear_probe(f, y, C=0.5)
    head = Tagger.from_pipeline("label", pipe)
    q = rng.normal(size=(20, 8))
    np.testing.assert_allclose(head.predict_proba(q, n_classes), pipe.predict_proba(q), rtol=1e-9, atol=1e-12)


def test_flip_averaging_probe_is_mirror_invariant_and_saved(tmp_path):
    """--flip-tta: the probe reads the mean of a photo's and its mirror image's features, so a photo and its mirror
    image get the same probabilities; the checkpoint keeps the setting."""
    x, y = _bars(60)
    x = x.copy()
    x[:, :, :10] = 0  # not symmetric: the mirror image differs
    cfg = ClassifierConfig(backbone="tiny_cnn", input_size=28, taps=("final",), flip_tta=True)
    tr = train_image_classifier(x[:40], y[:40], ["vertical", "horizontal"], cfg, progress=False)
    assert tr.backbone.flip_tta and tr.backbone.feature_key().endswith("+flip")
    p, p_mirror = tr.predict_proba(x[40:], progress=False), tr.predict_proba(x[40:, :, ::-1].copy(), progress=False)
    assert np.allclose(p, p_mirror, atol=1e-5)
    tr.save(tmp_path / "m.pt")
    back = load_classifier(tmp_path / "m.pt")
    assert back.backbone.flip_tta and np.allclose(back.predict_proba(x[40:]), p, atol=1e-4)
    one_view = train_image_classifier(
        x[:40],
        y[:40],
        ["vertical", "horizontal"],
        ClassifierConfig(backbone="tiny_cnn", input_size=28, taps=("final",)),
        progress=False,
    )
    assert not one_view.backbone.flip_tta
