"""Settings of ``melanet train-fusion``: one pydantic model per section of configs/fusion.yaml.

Re-exported by :mod:`melanet.train.fusion`, which reads them. Sizes in pixels,
learning rates per optimiser step. :func:`resolve_batch_and_lr` turns the
device-dependent ``auto`` batch size and the learning-rate scaling rule into
plain numbers, which is what a run writes to its ``config.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from melanet.train.data import AugmentConfig
from melanet.config import Choice, StageConfig
from melanet.errors import unknown_choice
from melanet.targets import TargetType
from melanet.tracking import TrackingBackend
from melanet.train.model import check_backbone


LrScaling = Choice("train.lr_scaling", ("sqrt", "linear"))
Scheduler = Choice("train.scheduler", ("cosine", "plateau"))
Imbalance = Choice("train.imbalance", ("none", "pos_weight", "sampler", "focal"))
OofEpoch = Choice("eval.oof_epoch", ("last", "best"))
Accelerator = Choice("engine.accelerator", ("auto", "cpu", "gpu", "cuda", "mps"))
Precision = Choice("engine.precision", ("auto", "32-true", "bf16-mixed", "16-mixed"))


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
    descriptors: bool = Field(
        False, description="Feed the lesion_* descriptors ingest measured (melanet.descriptors) to the metadata MLP "
                           "as numeric inputs; then predict needs them too (ingest measures them by default).")


class TrainConfig(StageConfig):
    """Optimisation and loader settings."""

    epochs: int = Field(15, ge=1)
    batch_size: int | Literal["auto"] = Field(
        32, description="Images per step per process; auto = 32 on CPU, on a GPU by its memory: 32 below "
                        "20 GiB, 64 below 40 GiB, else 128 (sized for efficientnet_b3 at 384 px, bf16).")
    lr: float = Field(2e-4, gt=0, description="Peak AdamW learning rate (at an effective batch of lr_batch).")
    lr_batch: int | None = Field(
        None, ge=1, description="Effective batch (batch_size x processes x accumulate) that lr was chosen for; "
                                "other effective batches scale lr by lr_scaling. null = use lr as given.")
    lr_scaling: LrScaling = Field(
        "sqrt", description="How lr follows the effective batch when lr_batch is set: sqrt (suits AdamW) or linear.")
    min_lr: float = Field(1e-6, ge=0, description="Floor of the cosine / plateau schedule.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs (fractions allowed).")
    scheduler: Scheduler = Field(
        "cosine", description="Cosine decay per step, or ReduceLROnPlateau on val_loss.")
    plateau_patience: int = Field(1, ge=0, description="Epochs without val_loss improvement before the LR drops.")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    accumulate: int = Field(1, ge=1, description="Batches per optimiser step (gradient accumulation).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    imbalance: Imbalance = Field(
        "none", description="pos_weight: weight classes by inverse frequency in the loss; sampler: class-balanced "
                            "sampling; focal: focal loss with focal_gamma.")
    focal_gamma: float = Field(2.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Keep an exponential moving average of the weights (timm ModelEmaV3, with "
                                      "warm-up) and predict with it; e.g. 0.99 for a few hundred steps. null = off.")
    swa_epochs: int = Field(
        0, ge=0, description="> 0: stochastic weight averaging (melanet/train/swa.py): predict with the mean of the "
                             "weights at the end of each of the last this many epochs, BatchNorm statistics "
                             "recomputed on the fold's training rows; 0 = off.")
    swa_lr: float | None = Field(
        None, gt=0, description="With swa_epochs: the cosine decays to this rate by the first averaged epoch and "
                                "holds it through the averaged epochs; null = the cosine runs to min_lr as usual.")
    seeds: int = Field(
        1, ge=1, le=16, description="Networks trained per fold, each from its own seed (seed + fold + 1000 x j); "
                                    "their probabilities are averaged for the OOF, the test rows and predict "
                                    "(a seed ensemble: less variance, the same bias; costs this many times the "
                                    "training). 1 = one network.")
    meta_drop_p: float = Field(0.0, ge=0, le=1, description="Per-sample probability of blanking all metadata.")
    aux_descriptors: float = Field(
        0.0, ge=0, description="> 0: the backbone also regresses the cohort's standardised lesion_* descriptors "
                               "(melanet/train/aux.py), loss = main loss + this weight x masked MSE; training only, "
                               "predict never reads descriptors. 0 = off.")
    meta_epochs: int = Field(
        0, ge=0, description="> 0: staged training (melanet/train/staged.py): `epochs` on the pixels alone, then this "
                             "many epochs fitting the metadata MLP and fused head on the frozen backbone's features; "
                             "0 = joint training.")
    meta_lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate of the staged metadata epochs.")
    workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers per process; auto = on CPU none with <= 2 cores per process, else 1 "
                            "per spare core, at most 4; on a GPU the process's share of the cores less one for "
                            "itself, at most 16.")
    preload_max_mb: float = Field(2048, ge=0, description="Hold resized images in RAM when they fit in this many MB.")
    channels_last: bool = Field(True, description="NHWC memory layout (faster convolutions on CPU and tensor cores).")

    @model_validator(mode="after")
    def _swa_settings(self):
        if self.swa_epochs > self.epochs:
            raise ValueError(f"train.swa_epochs ({self.swa_epochs}) averages more epochs than train.epochs "
                             f"({self.epochs}) trains; set it to at most {self.epochs}")
        if self.swa_lr is not None and self.swa_epochs == 0:
            raise ValueError("train.swa_lr only acts with train.swa_epochs > 0; set both or leave swa_lr null")
        if self.swa_lr is not None and self.scheduler != "cosine":
            raise ValueError("train.swa_lr needs train.scheduler=cosine (the plateau schedule sets its own rate); "
                             "leave swa_lr null to average under the plateau schedule")
        if self.swa_epochs and self.ema_decay is not None:
            raise ValueError("train.swa_epochs and train.ema_decay both average weights; use one of them")
        return self

    @field_validator("workers")
    @classmethod
    def _non_negative(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("workers must be >= 0 or 'auto'")
        return v

    @field_validator("batch_size")
    @classmethod
    def _two_or_more(cls, v):
        if v != "auto" and v < 2:  # BatchNorm cannot train on one image
            raise ValueError("batch_size must be >= 2 or 'auto'")
        return v


class EvalConfig(StageConfig):
    """Validation and prediction."""

    tta: int = Field(8, ge=1, le=8, description="Dihedral flips averaged for OOF and test predictions (1 = none).")
    batch_size: int | None = Field(None, ge=1, description="Prediction batch; default twice train.batch_size.")
    oof_epoch: OofEpoch = Field(
        "last", description="Weights that predict the OOF: last epoch, or best val metric (optimistic OOF).")


class EngineConfig(StageConfig):
    """Lightning Fabric settings; under torchrun ``auto`` devices/nodes come from the environment."""

    accelerator: Accelerator = "auto"
    devices: int | Literal["auto"] = Field("auto", description="Processes (GPUs) per node.")
    num_nodes: int | Literal["auto"] = "auto"
    strategy: str = Field("auto", description="Fabric strategy: auto, ddp, ddp_spawn, fsdp, ...")
    precision: Precision = Field(
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
    track: TrackingBackend = Field("none", description="Experiment tracking: none, mlflow or tensorboard.")
    track_uri: str | None = None
    seed: int = 42
    target: str = Field("target", description="Label column: binary 0/1 or class names (e.g. diagnosis).")
    positive_class: str | None = Field(None, description="Class whose probability is scored (multiclass targets).")
    target_type: TargetType = Field(
        "auto", description="auto: 0/1 is binary, other values need positive_class; multiclass: every value a class.")
    image_size: int = Field(384, ge=16, le=2048, description="Training and prediction side, pixels.")
    model: ModelConfig = ModelConfig()
    features: FeaturesConfig = FeaturesConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    engine: EngineConfig = EngineConfig()
    overwrite: bool = Field(False, description="Replace another run found in out_dir (otherwise refused).")

    @model_validator(mode="after")
    def _swa_predicts_last(self):
        if self.train.swa_epochs and self.eval.oof_epoch == "best":
            raise ValueError("train.swa_epochs > 0 predicts with the average of the last epochs' weights, "
                             "eval.oof_epoch=best with one chosen epoch's; set eval.oof_epoch=last or "
                             "train.swa_epochs=0")
        return self

    @model_validator(mode="after")
    def _aux_without_mixing(self):
        mixing = (self.augment.mixup_alpha > 0 or self.augment.cutmix_alpha > 0) and self.augment.mix_p > 0
        if self.train.aux_descriptors > 0 and mixing:  # a mixed image has no measured descriptors to regress
            raise ValueError("train.aux_descriptors > 0 does not combine with Mixup/CutMix; set "
                             "train.aux_descriptors=0 or augment.mixup_alpha=0 and augment.cutmix_alpha=0")
        return self


# Keys that do not change what a fold learns: a resumed run may differ in them.
# lr_batch/lr_scaling too: once resolved, train.lr and train.batch_size carry their effect.
_OPERATIONAL = {"data_dir", "out_dir", "track", "track_uri", "engine", "eval.batch_size", "train.workers",
                "train.lr_batch", "train.lr_scaling",
                "train.preload_max_mb", "overwrite", "exclude"}


# --------------------------------------------------------------------------- resolution


def default_batch_size(device_type: str, gpu_memory_gib: float | None = None) -> int:
    """``train.batch_size: auto``: 32 on CPU; on CUDA by GPU memory (GiB): 32 below 20, 64 below 40, else 128.

    On an H200 a larger batch raised efficientnet_b3 at 384 px from 698 to 946
    images/s (bf16); the memory tiers keep b3 at 384 px inside smaller cards.
    """
    if device_type != "cuda" or gpu_memory_gib is None:
        return 32
    return 32 if gpu_memory_gib < 20 else 64 if gpu_memory_gib < 40 else 128


def scaled_lr(lr: float, effective_batch: int, lr_batch: int | None, rule: str = "sqrt") -> float:
    """``lr`` (chosen at an effective batch of ``lr_batch``) for ``effective_batch``: sqrt or linear rule."""
    if lr_batch is None or effective_batch == lr_batch:
        return lr
    ratio = effective_batch / lr_batch
    return lr * (math.sqrt(ratio) if rule == "sqrt" else ratio)


def resolve_batch_and_lr(cfg: "FusionConfig", device_type: str, world_size: int = 1,
                         gpu_memory_gib: float | None = None) -> "FusionConfig":
    """``cfg`` with ``train.batch_size`` a number and ``train.lr`` scaled to the effective batch.

    The result records the batch it was scaled to as ``lr_batch``, so resolving
    it again (a resumed run reading its config.yaml) changes nothing.
    """
    t = cfg.train
    batch = default_batch_size(device_type, gpu_memory_gib) if t.batch_size == "auto" else t.batch_size
    effective = batch * max(1, world_size) * t.accumulate
    update = {"batch_size": batch}
    if t.lr_batch is not None:
        update.update(lr=scaled_lr(t.lr, effective, t.lr_batch, t.lr_scaling), lr_batch=effective)
    return cfg.model_copy(update={"train": t.model_copy(update=update)})
