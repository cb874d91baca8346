"""``melanet train-fusion``: k-fold training of FusionNet (timm CNN + metadata MLP).

One loop per fold over the cohort's fixed ``fold`` column. Device, precision
and data parallelism come from Lightning Fabric: one process on CPU or one GPU,
``torchrun`` / Slurm / Fabric's own launcher for several (docs/distributed.md).
Only global rank 0 writes artifacts; validation and test predictions are
sharded across ranks without duplicates and gathered.

Writes (DESIGN.md "Runs")::

    RUN_DIR/config.yaml                     resolved config
    RUN_DIR/fold_<k>/model.safetensors      weights of the epoch that predicted the OOF
    RUN_DIR/fold_<k>/meta_encoder.json      metadata encoder fitted on the fold's training rows
    RUN_DIR/fold_<k>/history.csv            epoch, lr, train_loss, val_loss, val_<metric>, seconds
    RUN_DIR/fold_<k>/{oof,test}.parquet     then DONE
    RUN_DIR/{oof,test}.parquet, metrics.json, training_curves.png   once every fold is done

Which weights predict the OOF (``eval.oof_epoch``): ``last`` (default) uses
the final epoch, chosen without looking at the validation fold. ``best`` keeps
the epoch with the best validation metric; the OOF is then optimistic,
because the same rows chose the epoch and are scored with it.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from contextlib import nullcontext

# OpenMP threads that spin while waiting turn a shared or oversubscribed CPU
# (loader workers, a second job) into a 5-40x slowdown; sleeping waiters cost
# a few percent on an idle machine. Read once, when torch loads, so set it before.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator

from melanet import metrics as M
from melanet.cohort import labelled_mask, read_cohort
from melanet.config import StageConfig, config_from_run, config_to_yaml
from melanet.console import console, progress
from melanet.errors import ArtifactError, ConfigError, InputDataError, did_you_mean, unknown_choice
from melanet.features import MetaEncoder, build_features
from melanet.io import read_json, write_csv, write_json, write_text
from melanet.runs import RunDir, TargetSpec, merge_folds, predictions_frame, read_exclude, resolve_target
from melanet.train import staged
from melanet.train.data import (AugmentConfig, FusionDataset, ImageStore, build_train_transform, dihedral,
                                drop_meta, make_loader, mix_batch, to_nchw)
from melanet.train.model import (FusionNet, check_backbone, fusion_loss, load_weights, pretrained_source,
                                 probabilities, save_weights, soft_targets)

# --------------------------------------------------------------------------- configuration


class ModelConfig(StageConfig):
    """FusionNet architecture."""

    backbone: str = Field("efficientnet_b3", description="Any timm model name (timm.list_models()).")
    pretrained: bool = Field(True, description="Start from pretrained weights (local file or cache only).")
    pretrained_path: Path | None = Field(None, description="Local .safetensors/.pth weights for the backbone.")
    use_meta: bool = Field(True, description="Fuse the metadata MLP; false gives the image-only baseline.")
    meta_hidden: list[int] = Field([512, 128], description="Widths of the metadata MLP's two layers.")
    meta_dropout: float = Field(0.3, ge=0, lt=1, description="Dropout between the metadata MLP's layers.")
    head_dropout: float = Field(0.5, ge=0, lt=1, description="Dropout rate of each multi-sample-dropout mask.")
    head_samples: int = Field(5, ge=1, le=32, description="Dropout masks averaged by the head.")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="Stochastic depth of the backbone (if supported).")
    image_aux_weight: float = Field(
        0.0, ge=0, description="Weight of an auxiliary image-only head's loss (deep supervision of the backbone "
                               "so that metadata does not become a shortcut); 0 = no auxiliary head.")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        check_backbone(name)
        return name

    @field_validator("meta_hidden")
    @classmethod
    def _two_widths(cls, widths: list[int]) -> list[int]:
        if len(widths) != 2 or min(widths) < 1:
            raise ValueError("give two positive widths, e.g. [512, 128]")
        return widths


class FeaturesConfig(StageConfig):
    """Metadata features (melanet.features.build_features, shared with the GBDT)."""

    context: bool = Field(True, description="Add patient-context features (images per patient, age vs patient).")
    drop: list[str] = Field([], description="Feature columns to leave out (e.g. transfer_syntax).")


class TrainConfig(StageConfig):
    """Optimisation and loader settings."""

    epochs: int = Field(15, ge=1)
    batch_size: int = Field(32, ge=2, description="Images per step per process.")
    lr: float = Field(2e-4, gt=0, description="Peak AdamW learning rate.")
    min_lr: float = Field(1e-6, ge=0, description="Floor of the cosine / plateau schedule.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs (fractions allowed).")
    scheduler: Literal["cosine", "plateau"] = Field(
        "cosine", description="Cosine decay per step, or ReduceLROnPlateau on val_loss.")
    plateau_patience: int = Field(1, ge=0, description="Epochs without val_loss improvement before the LR drops.")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    accumulate: int = Field(1, ge=1, description="Batches per optimiser step (gradient accumulation).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    imbalance: Literal["none", "pos_weight", "sampler", "focal"] = Field(
        "none", description="pos_weight: weight classes by inverse frequency in the loss; sampler: class-balanced "
                            "sampling; focal: focal loss with focal_gamma.")
    focal_gamma: float = Field(2.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Keep an exponential moving average of the weights (timm ModelEmaV3, with "
                                      "warm-up) and predict with it; e.g. 0.99 for a few hundred steps. null = off.")
    meta_drop_p: float = Field(0.0, ge=0, le=1, description="Per-sample probability of blanking all metadata.")
    meta_epochs: int = Field(
        0, ge=0, description="> 0: staged training (melanet/train/staged.py): `epochs` on the pixels alone, then this "
                             "many epochs fitting the metadata MLP and fused head on the frozen backbone's features; "
                             "0 = joint training.")
    meta_lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate of the staged metadata epochs.")
    workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers per process; auto = 1 per spare core, at most 4.")
    preload_max_mb: float = Field(2048, ge=0, description="Hold resized images in RAM when they fit in this many MB.")
    channels_last: bool = Field(True, description="NHWC memory layout (faster convolutions on CPU and tensor cores).")

    @field_validator("workers")
    @classmethod
    def _non_negative(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("workers must be >= 0 or 'auto'")
        return v


class EvalConfig(StageConfig):
    """Validation and prediction."""

    tta: int = Field(8, ge=1, le=8, description="Dihedral flips averaged for OOF and test predictions (1 = none).")
    batch_size: int | None = Field(None, ge=1, description="Prediction batch; default twice train.batch_size.")
    oof_epoch: Literal["last", "best"] = Field(
        "last", description="Weights that predict the OOF: last epoch, or best val metric (optimistic OOF).")


class EngineConfig(StageConfig):
    """Lightning Fabric settings; under torchrun ``auto`` devices/nodes come from the environment."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = Field("auto", description="Processes (GPUs) per node.")
    num_nodes: int | Literal["auto"] = "auto"
    strategy: str = Field("auto", description="Fabric strategy: auto, ddp, ddp_spawn, fsdp, ...")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: bf16-mixed (or 16-mixed) on CUDA, 32-true elsewhere.")
    threads: int = Field(0, ge=0, description="Torch CPU threads per process; 0 = cores / processes on this node.")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        from lightning.fabric.strategies import STRATEGY_REGISTRY

        choices = ["auto", *STRATEGY_REGISTRY.available_strategies()]
        if name not in choices:
            raise unknown_choice("engine.strategy", name, choices)
        return name


class FusionConfig(StageConfig):
    """Settings of ``melanet train-fusion`` (configs/fusion.yaml). Sizes in pixels."""

    data_dir: Path
    out_dir: Path
    exclude: Path | None = Field(None, description="CSV with image_id of rows left out of training (still predicted).")
    track: str = Field("none", description="Experiment tracking: none, mlflow or tensorboard.")
    track_uri: str | None = None
    seed: int = 42
    target: str = Field("target", description="Label column: binary 0/1 or class names (e.g. diagnosis).")
    positive_class: str | None = Field(None, description="Class whose probability is scored (multiclass targets).")
    image_size: int = Field(384, ge=16, le=2048, description="Training and prediction side, pixels.")
    model: ModelConfig = ModelConfig()
    features: FeaturesConfig = FeaturesConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    engine: EngineConfig = EngineConfig()


# Keys that do not change what a fold learns: a resumed run may differ in them.
_OPERATIONAL = {"data_dir", "out_dir", "track", "track_uri", "engine", "eval.batch_size", "train.workers",
                "train.preload_max_mb"}


# --------------------------------------------------------------------------- engine


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> bf16-mixed (16-mixed without bf16) on CUDA, 32-true elsewhere."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def autocast(device: torch.device, precision: str):
    """The autocast context of a Fabric precision name (also used by :func:`predict`)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def make_fabric(engine: EngineConfig):
    """A launched Lightning Fabric; torchrun's LOCAL_WORLD_SIZE/WORLD_SIZE fill ``auto`` devices and nodes."""
    from lightning.fabric import Fabric

    devices, num_nodes = engine.devices, engine.num_nodes
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        devices = local if devices == "auto" else devices
        num_nodes = max(1, world // local) if num_nodes == "auto" else num_nodes
    num_nodes = 1 if num_nodes == "auto" else num_nodes
    cuda = engine.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    precision = resolve_precision(engine.precision, "cuda" if cuda else "cpu")
    fabric = Fabric(accelerator=engine.accelerator, devices=devices, num_nodes=num_nodes,
                    strategy=engine.strategy, precision=precision)
    fabric.launch()
    local_procs = max(1, fabric.world_size // max(1, num_nodes))
    torch.set_num_threads(engine.threads or max(1, _cores() // local_procs))
    if fabric.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return fabric


def default_workers(workers: int | str, world_size: int = 1) -> int:
    """``auto``: one loader worker per core left after one per process, at most 4 per process."""
    if workers != "auto":
        return int(workers)
    spare = _cores() - world_size
    return max(0, min(4, spare // max(1, world_size)))


# --------------------------------------------------------------------------- data


@dataclass
class CohortData:
    """Everything a fold needs that does not depend on the fold."""

    cohort: pd.DataFrame
    spec: TargetSpec
    labels: np.ndarray        # int label per cohort row (0 where unlabelled)
    labelled: np.ndarray      # bool per row
    trainable: np.ndarray     # labelled and not excluded
    feats: pd.DataFrame
    store: ImageStore

    @property
    def n_outputs(self) -> int:
        return 1 if self.spec.is_binary else len(self.spec.classes)

    @property
    def folds(self) -> list[int]:
        return sorted(int(f) for f in self.cohort.loc[self.labelled, "fold"].unique())

    def split(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row positions: training (other folds, not excluded), validation (fold k), test (unlabelled)."""
        fold = self.cohort["fold"].to_numpy()
        return (np.flatnonzero(self.trainable & (fold != k)), np.flatnonzero(self.labelled & (fold == k)),
                np.flatnonzero(~self.labelled))


def meta_features(cohort: pd.DataFrame, features: FeaturesConfig) -> pd.DataFrame:
    """The metadata feature table FusionNet encodes (shared feature code, minus ``features.drop``)."""
    feats = build_features(cohort, context=features.context)
    unknown = [c for c in features.drop if c not in feats.columns]
    if unknown:
        raise ConfigError(f"features.drop: no feature column {unknown[0]!r}"
                          f"{did_you_mean(unknown[0], feats.columns)}; columns: {', '.join(feats.columns)}")
    return feats.drop(columns=list(features.drop))


def load_cohort_data(cfg: FusionConfig, progress_bar=None) -> CohortData:
    """Read the cohort, resolve the target, build the feature table and hold the images."""
    cohort = read_cohort(cfg.data_dir)
    labelled = labelled_mask(cohort, cfg.target)
    spec = resolve_target(cohort.loc[labelled, cfg.target], cfg.target, cfg.positive_class)
    labels = np.zeros(len(cohort), dtype=np.int64)
    labels[labelled] = spec.encode(cohort.loc[labelled, cfg.target])
    excluded = read_exclude(cfg.exclude, cohort)
    store = ImageStore(cfg.data_dir, cohort["image_path"].tolist(), cfg.image_size, cfg.train.preload_max_mb,
                       progress_bar)
    return CohortData(cohort, spec, labels, labelled, labelled & ~excluded, meta_features(cohort, cfg.features),
                      store)


# --------------------------------------------------------------------------- model, schedule, loop


def build_model(cfg: FusionConfig, n_meta: int, n_outputs: int) -> FusionNet:
    """FusionNet as the config describes it."""
    m = cfg.model
    model = FusionNet(m.backbone, n_meta, n_outputs, use_meta=m.use_meta, meta_hidden=m.meta_hidden,
                      meta_dropout=m.meta_dropout, head_dropout=m.head_dropout, head_samples=m.head_samples,
                      pretrained=m.pretrained, pretrained_path=m.pretrained_path, drop_path_rate=m.drop_path_rate,
                      image_aux_head=m.image_aux_weight > 0 or cfg.train.meta_epochs > 0)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


class LRSchedule:
    """Linear warm-up, then per-step cosine decay to ``min_lr`` or ReduceLROnPlateau on val_loss."""

    def __init__(self, optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int):
        self.optimizer, self.train = optimizer, train
        self.total = max(1, train.epochs * steps_per_epoch)
        self.warmup = int(round(train.warmup_epochs * steps_per_epoch))
        self.step_count = 0
        self.plateau = None
        if train.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=train.plateau_factor, patience=train.plateau_patience, min_lr=train.min_lr)
        self._set(self._lr(0))

    def _lr(self, step: int) -> float:
        lr, floor = self.train.lr, self.train.min_lr
        if step < self.warmup:
            return lr * (step + 1) / (self.warmup + 1)
        if self.plateau is not None:
            return lr
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """After each optimiser step."""
        self.step_count += 1
        if self.plateau is None or self.step_count <= self.warmup:
            self._set(self._lr(self.step_count))

    def epoch_end(self, val_loss: float) -> None:
        if self.plateau is not None and self.step_count >= self.warmup and math.isfinite(val_loss):
            self.plateau.step(val_loss)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decaying biases and norm scales only shrinks them toward zero without regularising anything.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class FoldTrainer:
    """Model, optimiser, loader and schedule of one fold, set up through Fabric.

    ``train_epoch`` runs one pass over the fold's training rows;
    ``predict(rows, tta)`` returns probabilities gathered from every rank.
    """

    def __init__(self, fabric, cfg: FusionConfig, data: CohortData, train_rows: np.ndarray, seed: int):
        self.fabric, self.cfg, self.data = fabric, cfg, data
        self.train_rows = train_rows
        self.encoder = MetaEncoder().fit(data.feats.iloc[train_rows])
        self.meta = self.encoder.transform(data.feats)
        n_out = data.n_outputs
        model = build_model(cfg, self.meta.shape[1], n_out)
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
        self.model, self.optimizer = fabric.setup(model, optimizer)
        self.raw = self.model.module
        self.rng = np.random.default_rng(seed)
        self.ema = None
        if cfg.train.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.raw, decay=cfg.train.ema_decay, use_warmup=True)

        t = cfg.train
        y = data.labels[train_rows]
        counts = np.bincount(y, minlength=max(2, n_out)).astype(float)
        self.loss_kwargs: dict[str, Any] = {"focal_gamma": t.focal_gamma if t.imbalance == "focal" else 0.0}
        if t.imbalance == "pos_weight":
            if n_out == 1:
                self.loss_kwargs["pos_weight"] = torch.tensor(counts[0] / max(counts[1], 1.0), device=fabric.device)
            else:
                w = counts.sum() / (n_out * np.maximum(counts, 1.0))
                self.loss_kwargs["class_weight"] = torch.tensor(w, dtype=torch.float32, device=fabric.device)
        sampler = None
        if t.imbalance == "sampler":
            weights = 1.0 / np.maximum(counts, 1.0)[y]
            sampler = torch.utils.data.WeightedRandomSampler(weights.tolist(), len(y), replacement=True,
                                                             generator=torch.Generator().manual_seed(seed))
        self.workers = default_workers(t.workers, fabric.world_size)
        dataset = FusionDataset(data.store, train_rows, self.meta, data.labels,
                                build_train_transform(cfg.augment, cfg.image_size, seed=seed))
        # BatchNorm cannot train on a batch of one: drop a ragged last batch when there is more than one.
        per_rank = len(train_rows) // max(1, fabric.world_size)
        loader = make_loader(dataset, t.batch_size, shuffle=True, sampler=sampler,
                             drop_last=per_rank > t.batch_size, workers=self.workers,
                             pin_memory=fabric.device.type == "cuda")
        self.train_loader = fabric.setup_dataloaders(loader)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / t.accumulate))
        self.schedule = LRSchedule(self.optimizer, t, self.steps_per_epoch)
        self.precision = resolve_precision(cfg.engine.precision, fabric.device.type)

    @property
    def predictor(self) -> FusionNet:
        """The weights that predict: the moving average when ``train.ema_decay`` is set, else the trained ones."""
        return self.ema.module if self.ema is not None else self.raw

    def train_epoch(self, on_step=None, batches=None) -> float:
        """One pass over the training rows; returns the mean training loss.

        ``batches`` replaces the loader with ready (images, meta, label, row)
        batches on the device - scripts/bench_train.py times the step alone that way.
        """
        t, aug, fabric = self.cfg.train, self.cfg.augment, self.fabric
        mixing = (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0) and aug.mix_p > 0
        self.model.train()
        batches = self.train_loader if batches is None else batches
        n_batches = len(batches)
        total = torch.zeros((), device=fabric.device)
        seen = 0
        for i, (images, meta, y, _) in enumerate(batches):
            images = to_nchw(images, t.channels_last)
            target = soft_targets(y, self.data.n_outputs, t.label_smoothing)
            meta = drop_meta(meta, t.meta_drop_p)
            if mixing:
                images, meta, target = mix_batch(images, meta, target, aug, self.rng)
            stepping = (i + 1) % t.accumulate == 0 or i + 1 == n_batches
            with fabric.no_backward_sync(self.model, enabled=not stepping):
                logits, aux = self.model(images, meta, with_aux=True)
                loss = fusion_loss(logits, target, **self.loss_kwargs)  # what the history reports
                total_loss = loss if aux is None else (
                    loss + self.cfg.model.image_aux_weight * fusion_loss(aux, target, **self.loss_kwargs))
                fabric.backward(total_loss / t.accumulate)
            if stepping:
                if t.grad_clip:
                    fabric.clip_gradients(self.model, self.optimizer, max_norm=t.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.schedule.step()
                if self.ema is not None:
                    self.ema.update(self.raw, step=self.schedule.step_count)
            total += loss.detach() * len(y)
            seen += len(y)
            if on_step is not None:
                on_step(i + 1, n_batches, loss)
        mean = total / max(seen, 1)
        if fabric.world_size > 1:
            mean = fabric.all_reduce(mean, reduce_op="mean")
        return float(mean)

    def predict(self, rows: np.ndarray, tta: int) -> np.ndarray:
        """Probabilities for cohort rows ``rows``: each rank predicts a disjoint shard, then all gather."""
        fabric = self.fabric
        world, rank = fabric.world_size, fabric.global_rank
        batch = self.cfg.eval.batch_size or 2 * self.cfg.train.batch_size
        settings = dict(tta=tta, batch_size=batch, device=fabric.device, precision=self.precision,
                        channels_last=self.cfg.train.channels_last, workers=self.workers)
        if world == 1:
            return predict_rows(self.predictor, self.data.store, rows, self.meta, **settings)
        per_rank = math.ceil(len(rows) / world)
        shard = rows[rank::world]
        # Equal shapes for all_gather: pad short shards with a repeated row, flagged by position -1.
        padded = np.concatenate([shard, np.repeat(rows[:1], per_rank - len(shard))]) if len(rows) else shard
        position = np.concatenate([np.arange(rank, len(rows), world), -np.ones(per_rank - len(shard), int)])
        prob = predict_rows(self.predictor, self.data.store, padded, self.meta, **settings)
        with warnings.catch_warnings():  # Lightning's gather calls a torch function torch now deprecates
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated")
            gathered = fabric.all_gather({"prob": torch.as_tensor(prob, device=fabric.device),
                                          "pos": torch.as_tensor(position, device=fabric.device)})
        prob = gathered["prob"].flatten(0, 1).cpu().numpy()
        pos = gathered["pos"].flatten().cpu().numpy()
        keep = pos >= 0
        out = np.empty((len(rows),) + prob.shape[1:], dtype=prob.dtype)
        out[pos[keep]] = prob[keep]
        return out


@torch.no_grad()
def predict_rows(model: FusionNet, store: ImageStore, rows: np.ndarray, meta: np.ndarray, *, tta: int = 1,
                 batch_size: int = 64, device: torch.device | str = "cpu", precision: str = "32-true",
                 channels_last: bool = True, workers: int = 0) -> np.ndarray:
    """Probabilities of cohort rows ``rows``, averaged over the first ``tta`` dihedral flips.

    (n,) for a binary model, (n, n_classes) otherwise. A single process; the
    model is put in eval mode. ``workers`` only matter when images are not held in RAM.
    """
    device = torch.device(device)
    model.eval()
    dataset = FusionDataset(store, rows, meta)
    out = []
    loader = make_loader(dataset, batch_size, workers=0 if store.images is not None else workers,
                         pin_memory=device.type == "cuda")
    with autocast(device, precision):
        for images, m, _, _ in loader:
            images = to_nchw(images, channels_last).to(device, non_blocking=True)
            m = m.to(device)
            prob = sum(probabilities(model(dihedral(images, k), m)) for k in range(tta)) / tta
            out.append(prob.float().cpu())
    if not out:
        return np.zeros((0,) if model.head.out_features == 1 else (0, model.head.out_features), np.float32)
    prob = torch.cat(out).double().numpy()
    # Averaged float32 softmaxes drift from summing to one; metrics check that.
    return prob / prob.sum(axis=1, keepdims=True) if prob.ndim == 2 else prob


def _val_metric(spec: TargetSpec, y: np.ndarray, prob: np.ndarray) -> tuple[str, float, float]:
    """(metric name, value, log loss) of validation probabilities against integer labels."""
    if spec.is_binary:
        m = M.binary_metrics(y, prob)
        return "val_auc", m["auc"], m["log_loss"]
    m = M.multiclass_metrics(y, prob, spec.classes)
    if spec.positive_class is not None:
        scored = (y == spec.classes.index(spec.positive_class)).astype(int)
        return "val_auc", M.binary_metrics(scored, prob[:, spec.classes.index(spec.positive_class)])["auc"], \
            m["log_loss"]
    return "val_macro_auc", m["macro_auc"], m["log_loss"]


# --------------------------------------------------------------------------- runner


def _comparable(cfg_dump: dict) -> dict:
    flat = pd.json_normalize(cfg_dump, sep=".").iloc[0].to_dict()
    return {k: v for k, v in flat.items() if k not in _OPERATIONAL and k.split(".")[0] not in _OPERATIONAL}


def _check_same_config(run: RunDir, cfg: FusionConfig) -> None:
    """Refuse to add folds to a run directory whose finished folds used another config."""
    path = run.path / "config.yaml"
    if not path.is_file() or not run.done_folds():
        return
    old = _comparable(config_from_run(FusionConfig, run.path).model_dump(mode="json"))
    new = _comparable(cfg.model_dump(mode="json"))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{run.path} holds finished folds trained with a different config ({shown}); "
                          f"use a new --out, or delete {run.path} to start over")


def _select_folds(all_folds: list[int], folds: list[int] | None) -> list[int]:
    if folds is None:
        return all_folds
    unknown = [k for k in folds if k not in all_folds]
    if unknown:
        raise ConfigError(f"--folds {','.join(map(str, folds))}: fold {unknown[0]} is not in the cohort; "
                          f"its folds are {all_folds}")
    return sorted(set(folds))


def _epoch_line(k: int, row: dict, metric: str, epochs: int) -> str:
    return (f"fold {k} epoch {row['epoch']}/{epochs}  lr {row['lr']:.2e}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  {metric} {row[metric]:.4f}  ({row['seconds']:.1f} s)")


def train_fold(fabric, cfg: FusionConfig, data: CohortData, k: int, run: RunDir, tracker, bar) -> dict:
    """Train fold ``k``; rank 0 writes its weights, encoder, history, predictions and DONE."""
    started = time.perf_counter()
    train_rows, val_rows, test_rows = data.split(k)
    if len(train_rows) < 2 or len(val_rows) == 0:
        raise InputDataError(f"fold {k}: {len(train_rows)} training and {len(val_rows)} validation rows; "
                             f"the cohort's folds are too small to train on")
    rank0 = fabric.is_global_zero
    if rank0:  # retraining a finished fold: it is unfinished until the new DONE
        (run.fold_dir(k) / "DONE").unlink(missing_ok=True)
    fabric.seed_everything(cfg.seed + k, verbose=False)
    trainer = FoldTrainer(fabric, cfg, data, train_rows, seed=cfg.seed + k)
    staged_fit = cfg.train.meta_epochs > 0 and trainer.raw.meta is not None
    if staged_fit:
        staged.begin_image_stage(trainer.raw, trainer.predictor)
    history: list[dict] = []
    best: tuple[float, int, dict] | None = None
    y_val = data.labels[val_rows]
    epochs = cfg.train.epochs
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        lr = trainer.schedule.lr
        task = bar.add_task(f"fold {k} epoch {epoch}/{epochs}", total=len(trainer.train_loader), status="") \
            if rank0 else None

        def on_step(i, n, loss, task=task):
            if task is not None and (i % 5 == 0 or i == n):
                bar.update(task, completed=i, status=f"loss {float(loss.detach()):.4f}")

        train_loss = trainer.train_epoch(on_step)
        prob = trainer.predict(val_rows, tta=1)
        metric, value, val_loss = _val_metric(data.spec, y_val, prob)
        trainer.schedule.epoch_end(val_loss)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val_loss, metric: value,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if rank0:
            bar.update(task, status=f"loss {train_loss:.4f} val_loss {val_loss:.4f} {metric} {value:.4f}")
            bar.remove_task(task)
            console.print(_epoch_line(k, row, metric, epochs), highlight=False, soft_wrap=True)
            write_csv(run.fold_dir(k) / "history.csv", pd.DataFrame(history))
            tracker.log_metrics({f"fold_{k}/{name}": v for name, v in row.items() if name != "epoch"},
                                step=epoch)
        score = value if math.isfinite(value) else -val_loss
        if cfg.eval.oof_epoch == "best" and (best is None or score > best[0]):
            best = (score, epoch, copy.deepcopy(trainer.predictor.state_dict()))
    used = epochs
    if best is not None:
        used = best[1]
        trainer.predictor.load_state_dict(best[2])
    if staged_fit:
        rows = staged.run_meta_stage(trainer, val_rows, lambda p: _val_metric(data.spec, y_val, p), epochs + 1)
        history += rows
        if rank0:
            for row in rows:
                console.print(_epoch_line(k, row, metric, epochs + cfg.train.meta_epochs), highlight=False,
                              soft_wrap=True)
            write_csv(run.fold_dir(k) / "history.csv", pd.DataFrame(history))
    oof_prob = trainer.predict(val_rows, tta=cfg.eval.tta)
    test_prob = trainer.predict(test_rows, tta=cfg.eval.tta)
    info = {"fold": k, "epoch_used": used, "epochs": epochs, "seconds": round(time.perf_counter() - started, 2),
            "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "n_test": int(len(test_rows)),
            "folds": data.folds, "target": data.spec.column, "classes": data.spec.classes,
            "positive_class": data.spec.positive_class}
    if rank0:
        fold_dir = run.fold_dir(k)
        save_weights(trainer.predictor, fold_dir / "model.safetensors",
                     metadata={"backbone": cfg.model.backbone, "fold": str(k), "epoch": str(used)})
        write_json(fold_dir / "meta_encoder.json", {"feature_names": trainer.encoder.feature_names_,
                                                    **trainer.encoder.to_dict()})
        cohort = data.cohort
        run.write_fold_predictions(k, predictions_frame(cohort.iloc[val_rows], oof_prob, data.spec),
                                   predictions_frame(cohort.iloc[test_rows], test_prob, data.spec))
        _, oof_value, _ = _val_metric(data.spec, y_val, oof_prob)
        info[f"oof_{metric.removeprefix('val_')}"] = oof_value
        run.mark_done(k, info)
    fabric.barrier()
    return info


def run(cfg: FusionConfig, folds: list[int] | None = None, resume: bool = False) -> Path:
    """Train the selected folds (all by default), then merge when every fold is done.

    ``resume`` skips folds whose ``DONE`` marker exists; ``folds`` runs a subset
    (e.g. one per machine) - finish with :func:`merge` or a run that completes
    the last fold. Returns the run directory.
    """
    from rich.progress import Progress

    from melanet.tracking import NullTracker, start_tracking

    if cfg.model.pretrained:  # fail before loading data and starting processes
        pretrained_source(cfg.model.backbone, cfg.model.pretrained_path)
    fabric = make_fabric(cfg.engine)
    rank0 = fabric.is_global_zero
    run_dir = RunDir(cfg.out_dir)
    started = time.perf_counter()
    with (progress() if rank0 else Progress(disable=True)) as bar:
        data = load_cohort_data(cfg, bar if rank0 else None)
        all_folds = data.folds
        selected = _select_folds(all_folds, folds)
        todo = selected
        if rank0:
            _check_same_config(run_dir, cfg)
            if resume:
                todo = [k for k in selected if not run_dir.is_done(k)]
                skipped = [k for k in selected if k not in todo]
                if skipped:
                    console.print(f"resume: fold(s) {skipped} already done, skipping")
            write_text(run_dir.path / "config.yaml", config_to_yaml(cfg))
            console.print(f"train-fusion: {len(data.cohort)} images ({int(data.labelled.sum())} labelled, "
                          f"{int((~data.labelled).sum())} test), target {data.spec.column!r} "
                          f"({'binary' if data.spec.is_binary else f'{len(data.spec.classes)} classes'}), "
                          f"{cfg.model.backbone} at {cfg.image_size} px, meta={'on' if cfg.model.use_meta else 'off'}, "
                          f"folds {todo}, {fabric.world_size} process(es) on {fabric.device.type}", highlight=False,
                          soft_wrap=True)
        # Rank 0 decides (its file system holds the run directory on multi-node jobs).
        todo = fabric.broadcast(todo, src=0)
        tracker = start_tracking(cfg.track, cfg.out_dir, cfg.track_uri,
                                 params=cfg.model_dump(mode="json")) if rank0 else NullTracker()
        try:
            for k in todo:
                train_fold(fabric, cfg, data, k, run_dir, tracker, bar)
            if rank0 and all(run_dir.is_done(k) for k in all_folds):
                metrics = merge(run_dir.path)
                tracker.log_metrics({"oof": metrics["overall"]})
                for name in ("oof.parquet", "metrics.json", "training_curves.png"):
                    tracker.log_artifact(run_dir.path / name)
            elif rank0:
                missing = [k for k in all_folds if not run_dir.is_done(k)]
                console.print(f"fold(s) {missing} still to run; then `melanet merge {run_dir.path}`")
        finally:
            tracker.close()
    if rank0:
        console.print(f"train-fusion finished in {time.perf_counter() - started:.1f} s -> {run_dir.path}")
    fabric.barrier()
    return run_dir.path


# --------------------------------------------------------------------------- merge, predict


def _run_info(run: RunDir) -> dict:
    """The target and fold list a run recorded in its DONE markers."""
    done = run.done_folds()
    if not done:
        raise ArtifactError(f"{run.path}: no finished fold (no fold_<k>/DONE); train it with "
                            f"`melanet train-fusion --out {run.path}` first")
    infos = [read_json(run.fold_dir(k) / "DONE") for k in done]
    if any(i.get("folds") != infos[0].get("folds") for i in infos):
        raise ArtifactError(f"{run.path}: folds were trained on cohorts with different fold lists; re-run them")
    return infos[0]


def _spec(info: dict) -> TargetSpec:
    return TargetSpec(column=info["target"], classes=info["classes"], positive_class=info["positive_class"])


def plot_training_curves(run: RunDir, folds: list[int]) -> Path:
    """``training_curves.png``: train/val loss, validation metric and learning rate per epoch, per fold."""
    from melanet import plots

    panels: dict[str, dict] = {"loss": {}, "validation metric": {}, "learning rate": {}}
    for k in folds:
        path = run.fold_dir(k) / "history.csv"
        if not path.is_file():
            continue
        h = pd.read_csv(path)
        x = h["epoch"].to_numpy()
        metric = next(c for c in h.columns if c.startswith("val_") and c != "val_loss")
        panels["loss"][f"fold {k} train"] = (x, h["train_loss"].to_numpy(float))
        panels["loss"][f"fold {k} val"] = (x, h["val_loss"].to_numpy(float))
        panels["validation metric"][f"fold {k} {metric.removeprefix('val_')}"] = (x, h[metric].to_numpy(float))
        panels["learning rate"][f"fold {k}"] = (x, h["lr"].to_numpy(float))
    out = run.path / "training_curves.png"
    plots.save_png(plots.curves_plot({k: v for k, v in panels.items() if v}, "epoch"), out)
    return out


def merge(run_dir: str | Path) -> dict:
    """Merge per-fold outputs into oof.parquet, test.parquet, metrics.json and training_curves.png.

    Refuses while a fold is missing. Writes report.html too when melanet.report is installed.
    """
    run = RunDir(Path(run_dir))
    info = _run_info(run)
    spec = _spec(info)
    _, _, metrics = merge_folds(run, info["folds"], spec)
    plot_training_curves(run, info["folds"])
    primary = metrics["primary_metric"]
    per_fold = "  ".join(f"{k}: {v.get(primary, float('nan')):.4f}" for k, v in metrics["per_fold"].items())
    console.print(f"OOF {primary} {metrics['overall'].get(primary, float('nan')):.4f}  (per fold {per_fold})",
                  highlight=False, soft_wrap=True)
    try:
        from melanet import report
    except ImportError:
        return metrics
    try:
        report.run(run.path)
    except Exception as exc:  # the run's artifacts are complete; a report failure must not hide that
        console.print(f"[yellow]warning:[/] report.html not written: {exc}")
    return metrics


def predict(run_dir: str | Path, cohort: pd.DataFrame, data_dir: str | Path, *,
            device: str | None = None) -> np.ndarray:
    """Fold-averaged TTA probabilities of a trained run for ``cohort``'s rows.

    ``cohort`` has the cohort.parquet columns (ingest's output for new images;
    its images are read from ``data_dir``). Patient-context features are
    computed within ``cohort``. Returns (n,) for a binary target or
    (n, n_classes) in class order. Reproduces the run's ``test.parquet`` for
    the same rows. Weights are read from safetensors only.
    """
    run = RunDir(Path(run_dir))
    cfg = config_from_run(FusionConfig, run.path)
    info = _run_info(run)
    missing = [k for k in info["folds"] if not run.is_done(k)]
    if missing:
        raise ArtifactError(f"{run.path}: fold(s) {missing} are not finished; finish the run before predicting")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() and cfg.engine.accelerator != "cpu" else "cpu"))
    precision = resolve_precision(cfg.engine.precision, dev.type)
    feats = meta_features(cohort, cfg.features)
    store = ImageStore(data_dir, cohort["image_path"].astype(str).tolist(), cfg.image_size, cfg.train.preload_max_mb)
    rows = np.arange(len(cohort))
    n_outputs = 1 if info["classes"] is None else len(info["classes"])
    total = None
    for k in info["folds"]:
        state = read_json(run.fold_dir(k) / "meta_encoder.json")
        encoder = MetaEncoder.from_dict(state)
        meta = encoder.transform(feats)
        model = build_model(cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})}),
                            meta.shape[1], n_outputs)
        load_weights(model, run.fold_dir(k) / "model.safetensors").to(dev)
        prob = predict_rows(model, store, rows, meta, tta=cfg.eval.tta,
                            batch_size=cfg.eval.batch_size or 2 * cfg.train.batch_size, device=dev,
                            precision=precision, channels_last=cfg.train.channels_last)
        total = prob if total is None else total + prob
    return total / len(info["folds"])
