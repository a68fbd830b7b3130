"""The attribute heads after training: their inputs (pooled taps + pre-logits, one upper pass per view), the refit
by logistic regression, the colour boosters, and the held-out probabilities (`finish_heads`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fashionrec.training.adapt.model import AdaptedModel, is_colour_column
from fashionrec.training.adapt.runner import _runner


def head_taps_for(n_blocks: int, k: int) -> tuple[int, ...]:
    """Blocks whose pooled outputs the refit heads read: the frozen part's last block (its map is cached) through
    the block before the last (Lite0 at the default split: blocks 3, 4 and 5)."""
    return tuple(range(max(k - 1, 0), max(n_blocks - 1, 0)))


def upper_pass(model: AdaptedModel, k: int, shape: tuple[int, ...], onnx: bool = True):
    """maps (float32 array) -> (embeddings, head inputs), in eval mode with the model's current weights: through ONNX
    Runtime where it matches torch (`features.onnx_function`), else torch (`_runner`)."""
    return _runner(onnx, model, lambda h: model.head_inputs(h, k), shape)


def head_features(
    model: AdaptedModel, maps: list[np.ndarray], k: int, batch_size: int = 256, onnx: bool = True, run=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(embeddings, head inputs)] from each array of cached lower maps, in eval mode: one upper pass gives both
    (`upper_pass`, built once for all the arrays unless `run` is given)."""
    model.eval()
    run = run or upper_pass(model, k, maps[0].shape[1:], onnx)
    res = []
    for m in maps:
        parts = [run(m[s : s + batch_size]) for s in range(0, len(m), batch_size)]
        res.append((np.concatenate([e for e, _ in parts]), np.concatenate([x for _, x in parts])))
    return res


@torch.no_grad()
def head_probs(model: AdaptedModel, x: np.ndarray, colour: np.ndarray | None = None) -> dict[str, np.ndarray]:
    logits = model.head_logits(torch.from_numpy(x), None if colour is None else torch.from_numpy(colour))
    return {n: torch.softmax(lg, 1).numpy() for n, lg in zip(model.head_names, logits)}


def refit_heads(
    model: AdaptedModel,
    views: list[np.ndarray],
    labels: dict[str, np.ndarray],
    train: np.ndarray,
    c: float = 0.05,
    max_iter: int = 300,
    colour: np.ndarray | None = None,
) -> dict[str, int]:
    """Replace every head by an L2 multinomial logistic regression (scikit-learn) on the head inputs of the training
    photos (each view a sample), standardised; the scaling is folded into the linear layer, so the folder needs no
    scaler. `views` are the head inputs of the photo and of its mirror image, computed with `model.head_taps` set.
    `colour`: `colour_features` per photo (the same for its mirror image); the colour columns' heads then read them
    too (`model.colour_heads`). Returns the training rows per head."""
    from sklearn.linear_model import LogisticRegression

    model.colour_heads = tuple(n for n in model.head_names if colour is not None and is_colour_column(n))
    new, rows = [], {}
    for name in model.head_names:
        n_cls = len(model.classes[name])
        y = labels[name]
        m = train & (y >= 0)
        rows[name] = int(m.sum())
        # colour features may exist for the labelled photos only (`adapt` computes no more): scale on those
        xs, scale_rows = ([np.hstack([v, colour]) for v in views], m) if name in model.colour_heads else (views, train)
        mu = xs[0][scale_rows].mean(0) if scale_rows.any() else np.zeros(xs[0].shape[1])
        sd = (xs[0][scale_rows].std(0) if scale_rows.any() else 0) + 1e-6
        d = xs[0].shape[1]
        W = np.zeros((n_cls, d), dtype=np.float64)
        b = np.full(n_cls, -30.0)  # a class with no training photo is never predicted
        present = np.unique(y[m])
        if len(present) == 1:
            b[present] = 0.0
        elif len(present) > 1:
            xtr = np.vstack([(v[m] - mu) / sd for v in xs])
            lr = LogisticRegression(C=c, max_iter=max_iter).fit(xtr, np.concatenate([y[m]] * len(views)))
            coef, icpt = lr.coef_, lr.intercept_
            if len(lr.classes_) == 2:  # sklearn's binary form: one row; softmax over (0, w.x + b) is the same model
                coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, icpt[0]])
            W[lr.classes_] = coef / sd
            b[lr.classes_] = icpt - (coef / sd) @ mu
        lin = nn.Linear(d, n_cls)
        lin.weight.data = torch.from_numpy(W.astype(np.float32))
        lin.bias.data = torch.from_numpy(b.astype(np.float32))
        new.append(lin)
    model.heads = nn.ModuleList(new)
    return rows


def fit_boosters(model: AdaptedModel, data, cfg) -> None:
    """A LightGBM model of the colour descriptor alone per colour head (`training/colour.py`), multiplied in."""
    from fashionrec.training.colour import fit_colour_booster

    for n in model.colour_heads:
        rows = data.train & (data.labels[n] >= 0)
        booster = fit_colour_booster(
            data.colour[rows], data.labels[n][rows], len(data.heads[n]), seed=cfg.seed, threads=torch.get_num_threads()
        )  # as many threads as the network (`--threads`), not LightGBM's default of every core
        if booster is not None:
            model.colour_boosters[n] = booster


def finish_heads(model: AdaptedModel, data, cfg, k: int, log) -> tuple[list[np.ndarray], dict, dict]:
    """After training: the adapted embeddings and head inputs of every view (one upper pass each, on the model's
    device), then on the CPU the heads' refit, the colour boosters and the temperatures fitted on the held-out
    products. -> (embeddings per view, held-out-calibrated probabilities per head, calibration report)."""
    import time

    from fashionrec.training.adapt.calibration import calibrate_on_heldout

    model.eval()
    refit = cfg.refit_heads and data.heads
    if refit:
        model.head_taps = head_taps_for(len(model.backbone.blocks), k)
    t_feat = time.time()
    embs, xs = zip(*head_features(model, data.views, k, onnx=cfg.onnx))
    log(
        f"  adapted embeddings + head inputs of {len(data.views)} x {len(data.ids)} views in {time.time() - t_feat:.0f}s"
    )
    model.cpu()  # the refit's heads and the saved folder live on the CPU
    xs = [xs[j] for j in data.colour_idx]  # the heads read the colour views only
    if refit:
        t_refit = time.time()
        refit_heads(model, xs, data.labels, data.train, c=cfg.head_c, colour=data.colour)
        log(
            f"  heads refit on blocks {list(model.head_taps)} + pre-logits"
            + (f" (+ colour features: {', '.join(model.colour_heads)})" if model.colour_heads else "")
            + f" in {time.time() - t_refit:.0f}s"
        )
    if model.colour_heads and cfg.colour_booster:
        t_boost = time.time()
        fit_boosters(model, data, cfg)
        log(f"  colour boosters ({', '.join(model.colour_boosters)}) in {time.time() - t_boost:.0f}s")
    colour = data.colour if model.colour_heads else None
    view_probs = [head_probs(model, x, colour) for x in xs]
    head_only = {n: np.mean([p[n] for p in view_probs], 0) for n in model.head_names}
    probs = model.with_colour_boosters(head_only, data.colour)
    probs, calibration = calibrate_on_heldout(
        model, probs, head_only, data.labels, data.held, data.groups, seed=cfg.seed
    )
    if calibration:
        log(
            "  confidences calibrated on the held-out products: "
            + ", ".join(
                f"{n} T={c['temperature']:.2f} (ECE {c['before']['ece']:.3f} -> {c['after']['ece']:.3f})"
                for n, c in calibration.items()
            )
        )
    return list(embs), probs, calibration
