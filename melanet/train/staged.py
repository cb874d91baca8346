"""Staged fusion training: the image branch first, then the metadata branch on top of it.

Why: trained jointly from the start, the metadata MLP fits the easy age/site
signal within an epoch or two, the residual the backbone could learn from
shrinks, and on a small cohort the fused network ends as a metadata model
whose score barely follows the pixels (issue 12). Staging gives the pixels the
whole residual first.

Stage 1 (``train.epochs``): ``FusionNet.image_stage`` is on, so the network is
the image-only model - backbone and image head learn from the pixels alone,
with the usual loop, schedule and augmentation; validation figures in the
history are the image-only model's.

Stage 2 (``train.meta_epochs``): the backbone is frozen. Its pooled features of
the fold's training rows are computed once per dihedral view (eval mode), the
fused head is initialised to the image head (image weights copied, metadata
weights zero: stage 2 starts from the image model's predictions) and the
metadata MLP and fused head are trained with AdamW and a cosine schedule on
(features, metadata). The validation fold is only scored, never used to choose
anything. Prediction then uses the fused head as in joint training, so the run
directory, weight file and ``predict`` are the same as for a joint run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from melanet.train.data import FusionDataset, ImageStore, dihedral, make_loader, to_nchw
from melanet.train.model import FusionNet, fusion_loss, probabilities, soft_targets

#: Dihedral views of each training image whose features stage 2 cycles through (one per epoch).
FEATURE_VIEWS = 2


def begin_image_stage(*models: FusionNet) -> None:
    """Switch models (the trained one and its EMA copy) to image-only training (stage 1)."""
    for model in models:
        if model.image_head is None:
            raise ValueError("staged training needs a FusionNet built with image_aux_head=True and metadata")
        model.image_stage = True


def init_fused_head(model: FusionNet) -> None:
    """Make the fused head equal the trained image head: image weights copied, metadata weights zero."""
    with torch.no_grad():
        width = model.image_head.in_features
        model.head.weight.zero_()
        model.head.weight[:, :width].copy_(model.image_head.weight)
        model.head.bias.copy_(model.image_head.bias)


@torch.no_grad()
def pooled_features(model: FusionNet, store: ImageStore, rows: np.ndarray, meta: np.ndarray, *, views: int,
                    batch_size: int, device: torch.device, channels_last: bool = True,
                    autocast=None) -> torch.Tensor:
    """Pooled backbone features of cohort rows: (views, n, width) float32 on ``device``, eval mode."""
    from contextlib import nullcontext

    model.eval()
    loader = make_loader(FusionDataset(store, rows, meta), batch_size, workers=0)
    out: list[list[torch.Tensor]] = [[] for _ in range(views)]
    with autocast or nullcontext():
        for images, _, _, _ in loader:
            images = to_nchw(images, channels_last).to(device, non_blocking=True)
            for k in range(views):
                out[k].append(model.image_features(dihedral(images, k)).float())
    return torch.stack([torch.cat(v) for v in out])


def _cosine(lr: float, step: int, total: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def fit_meta_stage(model: FusionNet, train_feats: torch.Tensor, train_meta: torch.Tensor, train_y: torch.Tensor,
                   val_feats: torch.Tensor, val_meta: torch.Tensor, *, epochs: int, lr: float, weight_decay: float,
                   batch_size: int, seed: int, first_epoch: int, label_smoothing: float = 0.0,
                   loss_kwargs: dict | None = None,
                   evaluate: Callable[[np.ndarray], tuple[str, float, float]] | None = None) -> list[dict]:
    """Stage 2: train the metadata MLP and the fused head on frozen features; returns history rows.

    ``train_feats`` is (views, n, width), ``val_feats`` (n_val, width);
    ``evaluate`` maps validation probabilities to (metric name, value, log
    loss) for the history (scoring only). The backbone is left untouched.
    """
    init_fused_head(model)
    model.image_stage = False
    params = [p for module in (model.meta, model.head) for p in module.parameters()]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr)
    n = train_feats.shape[1]
    n_batches = max(1, n // batch_size)  # a ragged remainder joins the last batch: BatchNorm needs > 1 sample
    total, step = epochs * n_batches, 0
    g = torch.Generator().manual_seed(seed)
    target = soft_targets(train_y, model.head.out_features, label_smoothing)
    history = []
    for e in range(epochs):
        t0 = time.perf_counter()
        model.meta.train()
        model.dropouts.train()
        feats = train_feats[e % train_feats.shape[0]]
        order = torch.randperm(n, generator=g).to(feats.device)
        running, seen = 0.0, 0
        current_lr = _cosine(lr, step, total)
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size if b + 1 < n_batches else n]
            for group in optimizer.param_groups:
                group["lr"] = _cosine(lr, step, total)
            logits = model._head(model.head, model._fuse(feats[idx], train_meta[idx]))
            loss = fusion_loss(logits, target[idx], **(loss_kwargs or {}))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
        row = {"epoch": first_epoch + e, "lr": current_lr, "train_loss": running / max(seen, 1)}
        if evaluate is not None and len(val_feats):
            model.eval()
            with torch.no_grad():
                prob = probabilities(model.head(model._fuse(val_feats, val_meta))).double().cpu().numpy()
            name, value, val_loss = evaluate(prob)
            row.update({"val_loss": val_loss, name: value})
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
    model.eval()
    return history


def run_meta_stage(trainer, val_rows: np.ndarray, evaluate: Callable[[np.ndarray], tuple[str, float, float]],
                   first_epoch: int) -> list[dict]:
    """Stage 2 for a :class:`melanet.train.fusion.FoldTrainer` after its image stage; returns history rows.

    Every process computes the same features and takes the same steps (same
    seed, all training rows), so data-parallel replicas stay identical.
    """
    from melanet.train.fusion import autocast

    cfg, data, device = trainer.cfg, trainer.data, trainer.fabric.device
    model: FusionNet = trainer.predictor
    for m in {id(trainer.raw): trainer.raw, id(model): model}.values():
        m.image_stage = False
    batch = cfg.eval.batch_size or 2 * cfg.train.batch_size
    settings = dict(batch_size=batch, device=device, channels_last=cfg.train.channels_last,
                    autocast=autocast(device, trainer.precision))
    train_rows = trainer.train_rows
    train_feats = pooled_features(model, data.store, train_rows, trainer.meta, views=FEATURE_VIEWS, **settings)
    val_feats = pooled_features(model, data.store, val_rows, trainer.meta, views=1, **settings)[0]
    meta = torch.as_tensor(trainer.meta, dtype=torch.float32, device=device)
    y = torch.as_tensor(data.labels[train_rows], device=device)
    return fit_meta_stage(model, train_feats, meta[train_rows], y, val_feats, meta[val_rows],
                          epochs=cfg.train.meta_epochs, lr=cfg.train.meta_lr, weight_decay=cfg.train.weight_decay,
                          batch_size=cfg.train.batch_size, seed=int(trainer.rng.integers(2**31)),
                          first_epoch=first_epoch, label_smoothing=cfg.train.label_smoothing,
                          loss_kwargs=trainer.loss_kwargs, evaluate=evaluate)
