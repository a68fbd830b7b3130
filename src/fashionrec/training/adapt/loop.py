"""The training loop: two stages (heads + embedding with the trunk frozen, then blocks[k:] too), each in its share
of the time or `max_epochs` passes over the training photos, whichever ends first; the learning rate follows that
progress (warm-up, cosine decay), so a busy machine trains fewer steps rather than overrunning."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashionrec.errors import FashionrecError
from fashionrec.training.adapt.config import AdaptCallbacks, AdaptConfig
from fashionrec.training.adapt.data import AdaptData
from fashionrec.training.adapt.model import AdaptedModel, is_colour_column


def _lr_factor(frac: float, warmup: float = 0.05) -> float:
    """Warm-up then cosine decay, as a function of the elapsed share of the stage's time."""
    frac = min(max(frac, 0.0), 1.0)
    if frac < warmup:
        return 0.1 + 0.9 * frac / warmup
    return 0.5 * (1 + math.cos(math.pi * (frac - warmup) / (1 - warmup))) * 0.99 + 0.01


def _batches(rng: np.random.Generator, multi: dict[str, np.ndarray], labelled: np.ndarray, cfg: AdaptConfig):
    """Endless batches: P products x 2 photos (positives) + L labelled photos (heads; negatives for the metric).
    A product of one photo (no groups: the photo is its own product) gives that photo twice; the loop then shows
    it in two different views."""
    keys = np.array(list(multi)) if multi else np.zeros(0, dtype=object)
    order, pos = rng.permutation(len(keys)), 0
    while True:
        rows = []
        for _ in range(min(cfg.products_per_batch, len(keys))):
            if pos >= len(order):
                order, pos = rng.permutation(len(keys)), 0
            members = multi[keys[order[pos]]]
            pos += 1
            pick = rng.choice(members, 2, replace=len(members) < 2)
            rows.extend(pick.tolist())
        if len(labelled):
            rows.extend(rng.choice(labelled, min(cfg.labelled_per_batch, len(labelled)), replace=False).tolist())
        yield np.array(rows)


def trunk_layers(bb, k: int) -> list[list[nn.Parameter]]:
    """The trained trunk's parameters by depth from the top: [what follows the last block, blocks[-1], ...,
    blocks[k]]. Which parameters sit before the first block (the stem, frozen with blocks[:k]) and which after it
    comes from timm's own layer numbering (`group_parameters` with the model's `group_matcher(coarse=True)`: one
    layer per stage, as the block list has them); models without one (mobilenetv2, tiny_cnn) have nothing outside
    their blocks but an EfficientNet-style stem."""
    blocks = bb.blocks
    in_block = {id(p) for b in blocks for p in b.parameters()}
    outside = [(n, p) for n, p in bb.model.named_parameters() if id(p) not in in_block]
    if hasattr(bb.model, "group_matcher"):
        from timm.models import group_parameters

        layer_of = {
            n: i for i, names in group_parameters(bb.model, bb.model.group_matcher(coarse=True)).items() for n in names
        }
        first = min(layer_of.get(n, math.inf) for n, p in bb.model.named_parameters() if id(p) in in_block)
        top = [p for n, p in outside if layer_of.get(n, math.inf) > first]
    else:
        top = [p for n, p in outside if not n.startswith(("conv_stem.", "bn1."))]
    return [top] + [list(b.parameters()) for b in reversed(blocks[k:])]


def _param_groups(model: AdaptedModel, k: int, cfg: AdaptConfig, stage: str) -> list[dict]:
    """Heads + embedding at `lr`; in the upper stage also the trunk above block k, `trunk_lr` at the top and
    `lr_decay` times less per layer below (layer-wise learning-rate decay, by `trunk_layers`)."""
    bb = model.backbone
    for p in model.parameters():
        p.requires_grad = False
    head_params = list(bb.embed.parameters()) + list(model.heads.parameters())
    for p in head_params:
        p.requires_grad = True
    groups = [{"params": head_params, "lr": cfg.lr}]
    if stage == "head":
        return groups
    seen = {id(p) for p in head_params}
    for depth, ps in enumerate(ps for ps in trunk_layers(bb, k) if ps):  # the top trained layer at trunk_lr
        ps = [p for p in ps if id(p) not in seen]
        seen.update(id(p) for p in ps)
        for p in ps:
            p.requires_grad = True
        if ps:
            groups.append({"params": ps, "lr": cfg.trunk_lr * cfg.lr_decay**depth})
    return groups


def _set_train_mode(model: AdaptedModel, k: int, stage: str, freeze_bn: bool = False) -> None:
    model.train()
    bb = model.backbone
    frozen = list(bb.blocks[:k]) if stage != "head" and not freeze_bn else list(bb.blocks) + [bb.model]
    for part in frozen:
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def training_pairs(data: AdaptData) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({product: its training rows} for the metric loss, labelled training rows for the heads). Products of 2+
    photos; with no groups (`data.pairs == "views"`) every training photo."""
    by_group: dict[str, list[int]] = {}
    for r in np.flatnonzero(data.train):
        by_group.setdefault(data.groups[r], []).append(int(r))
    least = 1 if data.pairs == "views" else 2
    multi = {g: np.array(v) for g, v in by_group.items() if len(v) >= least}
    any_label = np.zeros(len(data.ids), dtype=bool)
    for h in data.heads:
        any_label |= data.labels[h] >= 0
    return multi, np.flatnonzero(data.train & any_label)


def draw_views(rng: np.random.Generator, rows: np.ndarray, n_views: int, n_pairs: int, pairs: str) -> np.ndarray:
    """Each photo in one of its views, drawn uniformly; with `pairs == "views"` the second photo of each pair (the
    same photo) in another view than the first."""
    view = rng.integers(0, n_views, len(rows))
    if pairs == "views" and n_views > 1:
        a = np.arange(0, 2 * n_pairs, 2)
        view[a + 1] = (view[a] + rng.integers(1, n_views, len(a))) % n_views
    return view


class _Step:
    """One optimisation step of the upper part on a batch of cached lower maps (on the model's device; mixed
    precision on CUDA, float32 on the CPU)."""

    def __init__(self, model: AdaptedModel, data: AdaptData, cfg: AdaptConfig, k: int, device):
        from fashionrec.device import autocast

        self.model, self.data, self.cfg, self.k, self.device = model, data, cfg, k, device
        self.autocast = lambda: autocast(device)
        codes = {g: j for j, g in enumerate(np.unique(data.groups))}
        self.gcode = torch.tensor([codes[g] for g in data.groups], device=device)
        self.y = {h: torch.from_numpy(data.labels[h]).to(device) for h in data.heads}
        fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)  # float16 needs loss scaling; bfloat16 does not

    def __call__(self, opt, metric, rows: np.ndarray, view: np.ndarray, use_metric: bool) -> dict[str, torch.Tensor]:
        V = self.data.views
        h = np.empty((len(rows),) + V[0].shape[1:], dtype=np.float32)
        for j, vm in enumerate(V):
            sel = view == j
            h[sel] = vm[rows[sel]]
        is_gray = torch.from_numpy(~np.isin(view, self.data.colour_idx)).to(self.device)
        hx = torch.from_numpy(h).to(self.device)
        if hx.ndim == 4:
            hx = hx.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            emb, logits = self.model.upper(hx, self.k)
            losses = {}
            if use_metric:
                losses["metric"] = self.cfg.metric_weight * metric(emb.float(), self.gcode[rows])
            for name, lg in zip(self.model.head_names, logits):
                yy = self.y[name][rows]
                m = yy >= 0
                if is_colour_column(name):  # a greyscale view does not show its colour
                    m &= ~is_gray
                if m.any():
                    losses[name] = F.cross_entropy(lg[m].float(), yy[m], label_smoothing=self.cfg.label_smoothing)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()
        return losses


def train(
    model: AdaptedModel,
    data: AdaptData,
    cfg: AdaptConfig,
    k: int,
    train_secs: float,
    cb: AdaptCallbacks,
    rng: np.random.Generator,
    device,
) -> list[dict]:
    """Both stages (only the upper one when continuing a folder); -> one history entry per stage."""
    from pytorch_metric_learning.losses import SupConLoss

    multi, labelled = training_pairs(data)
    if not multi and not len(labelled):
        raise FashionrecError("nothing to learn from: no product with 2+ photos and no labelled photo")
    batches = _batches(rng, multi, labelled, cfg)
    step = _Step(model, data, cfg, k, device)
    supcon = SupConLoss(temperature=cfg.temperature)
    n_pairs = min(cfg.products_per_batch, len(multi))
    stages = [("upper", 1.0)] if cfg.init_from else [("head", cfg.head_fraction), ("upper", 1 - cfg.head_fraction)]
    history = []
    for stage, share in stages:
        opt = torch.optim.AdamW(_param_groups(model, k, cfg, stage), weight_decay=cfg.weight_decay)
        base_lrs = [g["lr"] for g in opt.param_groups]
        # a fresh memory each stage: the embeddings of the stage before drifted too far to compare with
        metric = supcon
        if cfg.memory_size > 0:
            from pytorch_metric_learning.losses import CrossBatchMemory

            metric = CrossBatchMemory(supcon, cfg.embed_dim, memory_size=cfg.memory_size)
        stage_secs = max(train_secs, 1) * share
        stage_max = None if cfg.max_steps is None else max(1, int(cfg.max_steps * share))
        photo_cap = None if cfg.max_epochs is None else cfg.max_epochs * max(int(data.train.sum()), 1)
        t_stage, seen, n, run_loss = time.time(), 0, 0, {}
        while True:
            # The schedule follows the wall clock or the passes over the training photos, whichever is further
            # (a busy machine trains fewer steps, never longer), or the step count when max_steps is given
            # (reproducible runs, tests).
            if stage_max is not None:
                frac = n / stage_max
            else:
                frac = (time.time() - t_stage) / stage_secs
                if photo_cap is not None:
                    frac = max(frac, seen / photo_cap)
            if frac >= 1:
                break
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * _lr_factor(frac)
            _set_train_mode(model, k, stage, cfg.freeze_bn)
            rows = next(batches)
            view = draw_views(rng, rows, len(data.views), n_pairs, data.pairs)
            losses = step(opt, metric, rows, view, bool(multi))
            n += 1
            seen += len(rows)
            for name, v in losses.items():
                fv = float(v.detach())
                run_loss[name] = 0.9 * run_loss.get(name, fv) + 0.1 * fv
            cb.progress(
                stage,
                n,
                stage_max or 0,
                {"frac": frac, "photos": seen, "seconds": time.time() - t_stage, "loss": run_loss},
            )
        secs = time.time() - t_stage
        history.append(
            {
                "stage": stage,
                "steps": n,
                "photos": seen,
                "seconds": round(secs, 1),
                "loss": {name: round(v, 4) for name, v in run_loss.items()},
            }
        )
        cb.log(
            f"  stage {stage}: {n} steps, {seen} photos ({seen / max(data.train.sum(), 1):.1f} passes) in {secs:.0f}s"
        )
    return history


def training_seconds(model: AdaptedModel, data: AdaptData, cfg: AdaptConfig, k: int, t_start: float) -> float:
    """Time left for training = the budget - the time so far - the evaluation's (measured: one upper pass over 256
    photos, scaled to every photo and view, plus the refit and the colour boosters at their measured rates)."""
    from fashionrec.training.adapt.heads import head_features, upper_pass

    maps = data.views[0]
    probe_rows = np.arange(min(256, len(data.ids)))
    run = upper_pass(model, k, maps.shape[1:], cfg.onnx)  # the evaluation's pass, timed without its export
    t_eval0 = time.time()
    head_features(model, [maps[probe_rows]], k, run=run)
    n, views = len(data.ids), len(data.views)  # the evaluation embeds every view
    eval_secs = (time.time() - t_eval0) / len(probe_rows) * n * 1.4 * views + 30  # upper passes + retrieval
    if cfg.refit_heads:  # the refit: measured 64-89 s for 7 heads, 2 x 17.6k rows
        eval_secs += 2e-4 * n * len(data.colour_idx) * len(data.heads)
    if data.colour is not None and cfg.colour_booster:  # measured 28-36 s for 6.7k photos
        eval_secs += 5e-3 * int(data.colour.any(1).sum()) * sum(is_colour_column(h) for h in data.heads)
    train_secs = cfg.max_minutes * 60 - (time.time() - t_start) - eval_secs
    if train_secs < 30 and cfg.max_steps is None:
        raise FashionrecError(
            f"--max-minutes {cfg.max_minutes:g} leaves {train_secs:.0f}s for training after caching "
            f"and evaluation; give more time"
        )
    return train_secs
