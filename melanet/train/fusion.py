"""``melanet train-fusion``: k-fold training of FusionNet (timm CNN + metadata MLP).

One loop per fold over the cohort's fixed ``fold`` column. Device, precision
and data parallelism come from Lightning Fabric: one process on CPU or one GPU,
``torchrun`` / Slurm / Fabric's own launcher for several (docs/distributed.md).
Only global rank 0 writes artifacts; validation and test predictions are
sharded across ranks without duplicates and gathered.

Writes (docs/architecture.md "Runs")::

    RUN_DIR/config.yaml                     resolved config
    RUN_DIR/fold_<k>/model.safetensors      weights of the epoch that predicted the OOF
    RUN_DIR/fold_<k>/model_seed<j>.safetensors   with train.seeds > 1: network j of the fold's seed ensemble
    RUN_DIR/fold_<k>/meta_encoder.json      metadata encoder fitted on the fold's training rows
    RUN_DIR/fold_<k>/history.csv            epoch, lr, train_loss, val_loss, val_<metric>, seconds (+ seed)
    RUN_DIR/fold_<k>/{oof,test}.parquet     then DONE
    RUN_DIR/{oof,test}.parquet, metrics.json   once every fold is done (then the report's figures)

Which weights predict the OOF (``eval.oof_epoch``): ``last`` (default) uses
the final epoch, chosen without looking at the validation fold. ``best`` keeps
the epoch with the best validation metric; the OOF is then optimistic,
because the same rows chose the epoch and are scored with it. With
``train.swa_epochs`` (only with ``last``) the average of the last epochs'
weights predicts (melanet/train/swa.py); the history's per-epoch validation
figures are those of the trained weights, not of the average.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melanet import metrics as M
from melanet.cohort import labelled_mask, read_cohort
from melanet.config import config_to_yaml
from melanet.console import console, progress
from melanet.errors import ArtifactError, ConfigError, InputDataError, did_you_mean
from melanet.features import NUMERIC, MetaEncoder, build_features, descriptor_columns
from melanet.io import read_json, write_csv, write_json, write_text
from melanet.report import after_stage
from melanet.runs import (CONFIG_FILE, RunDir, TargetSpec, check_out_dir, check_run, comparable_config, fingerprint,
                          merge_folds, predictions_frame, read_config, read_exclude, resolve_target, run_identity)
from melanet.train import aux as aux_targets
from melanet.train import staged, swa
from melanet.train.data import (AugmentConfig, FusionDataset, ImageStore, build_train_transform, dihedral,
                                drop_meta, make_loader, mix_batch, to_device, to_nchw)
from melanet.train.device import (autocast, default_workers, gpu_memory_gib, loader_settings, make_fabric,
                                  resolve_precision)
from melanet.train.fusion_config import (_OPERATIONAL, EngineConfig, EvalConfig, FeaturesConfig, FusionConfig,
                                         ModelConfig, TrainConfig, resolve_batch_and_lr)
from melanet.train.model import (FusionNet, fusion_loss, load_weights, pretrained_source, probabilities,
                                 save_weights, soft_targets)
from melanet.train.optim import LRSchedule, param_groups

__all__ = ["AugmentConfig", "EngineConfig", "EvalConfig", "FeaturesConfig", "FusionConfig", "ModelConfig", "TrainConfig",
           "FoldTrainer", "autocast", "make_fabric", "merge", "predict", "predict_rows", "resolve_precision", "run"]

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
    """The metadata feature table FusionNet encodes (shared feature code, minus ``features.drop``).

    ``features.descriptors`` adds the cohort's ``lesion_*`` columns as numeric inputs.
    """
    numeric = list(NUMERIC)
    if features.descriptors:
        if not descriptor_columns(cohort):
            raise InputDataError("features.descriptors is on but the cohort has no lesion_* column; ingest it with "
                                 "descriptors on (`melanet ingest DICOM_DIR --out DATA_DIR --set descriptors=true`, "
                                 "the default) or set features.descriptors=false")
        numeric += descriptor_columns(cohort)
    feats = build_features(cohort, context=features.context, numeric=numeric)
    unknown = [c for c in features.drop if c not in feats.columns]
    if unknown:
        raise ConfigError(f"features.drop: no feature column {unknown[0]!r}"
                          f"{did_you_mean(unknown[0], feats.columns)}; columns: {', '.join(feats.columns)}")
    return feats.drop(columns=list(features.drop))


def load_cohort_data(cfg: FusionConfig, progress_bar=None, cohort: pd.DataFrame | None = None) -> CohortData:
    """Read the cohort (unless given), resolve the target, build the feature table and hold the images."""
    cohort = read_cohort(cfg.data_dir) if cohort is None else cohort
    labelled = labelled_mask(cohort, cfg.target)
    spec = resolve_target(cohort.loc[labelled, cfg.target], cfg.target, cfg.positive_class, cfg.target_type)
    labels = np.zeros(len(cohort), dtype=np.int64)
    labels[labelled] = spec.encode(cohort.loc[labelled, cfg.target])
    excluded = read_exclude(cfg.exclude, cohort)
    store = ImageStore(cfg.data_dir, cohort["image_path"].tolist(), cfg.image_size, cfg.train.preload_max_mb,
                       progress_bar)
    return CohortData(cohort, spec, labels, labelled, labelled & ~excluded, meta_features(cohort, cfg.features),
                      store)


# --------------------------------------------------------------------------- model, schedule, loop


def resolve_run_config(cfg: FusionConfig, fabric) -> FusionConfig:
    """``cfg`` with the batch size and learning rate fixed for Fabric's device and process count."""
    return resolve_batch_and_lr(cfg, fabric.device.type, fabric.world_size, gpu_memory_gib(fabric.device))


def _batch_line(asked: TrainConfig, used: TrainConfig, world: int) -> str:
    line = f"batch {used.batch_size} x {world} process(es) x {used.accumulate} accumulated, lr {used.lr:.3g}"
    if used.lr != asked.lr:
        line += f" ({asked.lr_scaling} rule from lr {asked.lr:.3g} at batch {asked.lr_batch})"
    return line


def build_model(cfg: FusionConfig, n_meta: int, n_outputs: int, n_descriptors: int = 0) -> FusionNet:
    """FusionNet as the config describes it; ``n_descriptors`` > 0 adds the training-only descriptor head."""
    m = cfg.model
    model = FusionNet(m.backbone, n_meta, n_outputs, use_meta=m.use_meta, meta_hidden=m.meta_hidden,
                      meta_dropout=m.meta_dropout, head_dropout=m.head_dropout, head_samples=m.head_samples,
                      pretrained=m.pretrained, pretrained_path=m.pretrained_path, drop_path_rate=m.drop_path_rate,
                      image_aux_head=m.image_aux_weight > 0 or cfg.train.meta_epochs > 0, n_descriptors=n_descriptors)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


class FoldTrainer:
    """Model, optimiser, loader and schedule of one fold, set up through Fabric.

    ``train_epoch`` runs one pass over the fold's training rows;
    ``predict(rows, tta)`` returns probabilities gathered from every rank.
    """

    def __init__(self, fabric, cfg: FusionConfig, data: CohortData, train_rows: np.ndarray, seed: int):
        cfg = resolve_run_config(cfg, fabric)  # idempotent: run() has usually resolved it already
        self.fabric, self.cfg, self.data = fabric, cfg, data
        self.train_rows = train_rows
        self.encoder = MetaEncoder().fit(data.feats.iloc[train_rows])
        self.meta = self.encoder.transform(data.feats)
        n_out = data.n_outputs
        # Auxiliary descriptor targets (melanet.train.aux), standardised on this fold's training rows.
        targets = aux_targets.fit_targets(data.cohort, train_rows, data_dir=cfg.data_dir,
                                          weight=cfg.train.aux_descriptors) if cfg.train.aux_descriptors > 0 else None
        self.descriptor_targets = targets.tensor(fabric.device) if targets is not None else None
        model = build_model(cfg, self.meta.shape[1], n_out, targets.width if targets is not None else 0)
        optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
        self.model, self.optimizer = fabric.setup(model, optimizer)
        self.raw = self.model.module
        self.rng = np.random.default_rng(seed)
        self.ema = None
        if cfg.train.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.raw, decay=cfg.train.ema_decay, use_warmup=True)
        self.swa = None        # the running average of the last epochs' weights (train.swa_epochs)
        self.averaged = None   # its network once its BatchNorm statistics are measured: then it predicts

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
        device_type = fabric.device.type
        self.workers = default_workers(t.workers, fabric.world_size, device_type)
        self.non_blocking = loader_settings(device_type, self.workers).non_blocking
        dataset = FusionDataset(data.store, train_rows, self.meta, data.labels,
                                build_train_transform(cfg.augment, cfg.image_size, seed=seed))
        # BatchNorm cannot train on a batch of one: drop a ragged last batch when there is more than one.
        per_rank = len(train_rows) // max(1, fabric.world_size)
        loader = make_loader(dataset, t.batch_size, shuffle=True, sampler=sampler,
                             drop_last=per_rank > t.batch_size, workers=self.workers, device_type=device_type)
        # Batches are moved by train_epoch (non-blocking from pinned memory on CUDA), not by Fabric.
        self.train_loader = fabric.setup_dataloaders(loader, move_to_device=False)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / t.accumulate))
        self.schedule = LRSchedule(self.optimizer, t, self.steps_per_epoch)
        self.precision = resolve_precision(cfg.engine.precision, fabric.device.type)

    @property
    def predictor(self) -> FusionNet:
        """The weights that predict: the SWA average once finished, the moving average when ``train.ema_decay``
        is set, else the trained ones."""
        if self.averaged is not None:
            return self.averaged
        return self.ema.module if self.ema is not None else self.raw

    def average_weights(self) -> None:
        """Add the current weights to the SWA average (after each of the last ``train.swa_epochs`` epochs)."""
        if self.swa is None:
            self.swa = swa.averaged_copy(self.raw)
        self.swa.update_parameters(self.raw)

    def finish_averaging(self) -> None:
        """Measure the averaged network's BatchNorm statistics on the training rows; it predicts from now on."""
        model = self.swa.module
        swa.recompute_batchnorm(model, self.data.store, self.train_rows, self.meta,
                                batch_size=self.cfg.eval.batch_size or 2 * self.cfg.train.batch_size,
                                device=self.fabric.device, channels_last=self.cfg.train.channels_last,
                                autocast=autocast(self.fabric.device, self.precision))
        self.averaged = model

    def train_epoch(self, on_step=None, batches=None) -> float:
        """One pass over the training rows; returns the mean training loss.

        ``batches`` replaces the loader with ready (images, meta, label, row)
        batches on the device - scripts/bench_train.py times the step alone that way.
        ``on_step(i, n_batches)`` is called after each batch. Nothing in the
        loop waits for the device: the loss is summed on it and read once, at the end.
        """
        t, aug, fabric = self.cfg.train, self.cfg.augment, self.fabric
        mixing = (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0) and aug.mix_p > 0
        self.model.train()
        batches = self.train_loader if batches is None else batches
        n_batches = len(batches)
        total = torch.zeros((), device=fabric.device)
        seen = 0
        for i, batch in enumerate(batches):
            images, meta, y, rows = to_device(batch, fabric.device, self.non_blocking)
            images = to_nchw(images, t.channels_last)
            target = soft_targets(y, self.data.n_outputs, t.label_smoothing)
            meta = drop_meta(meta, t.meta_drop_p)
            if mixing:
                images, meta, target = mix_batch(images, meta, target, aug, self.rng)
            stepping = (i + 1) % t.accumulate == 0 or i + 1 == n_batches
            with fabric.no_backward_sync(self.model, enabled=not stepping):
                if self.descriptor_targets is None:
                    (logits, aux), described = self.model(images, meta, with_aux=True), None
                else:
                    logits, aux, described = self.model(images, meta, with_aux=True, with_descriptors=True)
                loss = fusion_loss(logits, target, **self.loss_kwargs)  # what the history reports
                total_loss = loss if aux is None else (
                    loss + self.cfg.model.image_aux_weight * fusion_loss(aux, target, **self.loss_kwargs))
                if described is not None:
                    total_loss = total_loss + t.aux_descriptors * aux_targets.masked_mse(
                        described, self.descriptor_targets[rows])
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
                on_step(i + 1, n_batches)
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
    workers = 0 if store.images is not None else workers
    loader = make_loader(dataset, batch_size, workers=workers, device_type=device.type)
    non_blocking = loader_settings(device.type, workers).non_blocking
    with autocast(device, precision):
        for batch in loader:
            images, m, _, _ = to_device(batch, device, non_blocking)
            images = to_nchw(images, channels_last)
            prob = sum(probabilities(model(dihedral(images, k), m)) for k in range(tta)) / tta
            out.append(prob.float())  # stays on the device: one copy to the host at the end, not one per batch
    if not out:
        return np.zeros((0,) if model.head.out_features == 1 else (0, model.head.out_features), np.float32)
    prob = torch.cat(out).cpu().double().numpy()
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


def identity(cfg: FusionConfig) -> tuple[str, dict]:
    """The run id of ``cfg``: its comparable settings and the bytes of the cohort and exclude list."""
    return run_identity("fusion", comparable_config(cfg.model_dump(mode="json"), _OPERATIONAL), {
        "cohort": fingerprint(Path(cfg.data_dir) / "cohort.parquet"), "exclude": fingerprint(cfg.exclude)})


def rerun_command(cfg: FusionConfig) -> str:
    out = Path(cfg.out_dir)
    return f"melanet train-fusion --data {cfg.data_dir} --out {out} --config {out / 'config.yaml'} --resume"


def _select_folds(all_folds: list[int], folds: list[int] | None) -> list[int]:
    if folds is None:
        return all_folds
    unknown = [k for k in folds if k not in all_folds]
    if unknown:
        raise ConfigError(f"--folds {','.join(map(str, folds))}: fold {unknown[0]} is not in the cohort; "
                          f"its folds are {all_folds}")
    return sorted(set(folds))


def _epoch_line(k: int, row: dict, metric: str, epochs: int, member: str = "") -> str:
    return (f"fold {k}{member} epoch {row['epoch']}/{epochs}  lr {row['lr']:.2e}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  {metric} {row[metric]:.4f}  ({row['seconds']:.1f} s)")


def weight_files(seeds: int) -> list[str]:
    """A fold's weight files: ``model.safetensors``, then ``model_seed<j>.safetensors`` per further seed."""
    return ["model.safetensors", *(f"model_seed{j}.safetensors" for j in range(1, seeds))]


def member_seed(cfg: FusionConfig, k: int, j: int) -> int:
    """The seed of fold ``k``'s network ``j`` (``train.seeds``); network 0 keeps the single-network seed."""
    return cfg.seed + k + 1000 * j


def _train_member(fabric, cfg: FusionConfig, data: CohortData, k: int, j: int, run: RunDir, tracker, bar,
                  rows: tuple[np.ndarray, np.ndarray], history: list[dict]) -> tuple[FoldTrainer, int]:
    """Train fold ``k``'s network ``j``; appends its epochs to ``history`` (rank 0 writes it).
    Returns the trainer, whose ``predictor`` then predicts, and the epoch used."""
    train_rows, val_rows = rows
    rank0 = fabric.is_global_zero
    seed = member_seed(cfg, k, j)
    fabric.seed_everything(seed, verbose=False)
    trainer = FoldTrainer(fabric, cfg, data, train_rows, seed=seed)
    several = cfg.train.seeds > 1
    member = f" seed {j}" if several else ""  # numbered as history.csv's seed column and model_seed<j>
    prefix = f"fold_{k}/seed_{j}" if several else f"fold_{k}"
    staged_fit = cfg.train.meta_epochs > 0 and trainer.raw.meta is not None
    if staged_fit:
        staged.begin_image_stage(trainer.raw, trainer.predictor)
    best: tuple[float, int, dict] | None = None
    y_val = data.labels[val_rows]
    epochs = cfg.train.epochs

    def record(new_rows: list[dict], total_epochs: int) -> None:
        history.extend({**row, "seed": j} if several else row for row in new_rows)
        if rank0:
            for row in new_rows:
                console.print(_epoch_line(k, row, metric, total_epochs, member), highlight=False, soft_wrap=True)
            write_csv(run.fold_dir(k) / "history.csv", pd.DataFrame(history))

    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        lr = trainer.schedule.lr
        task = bar.add_task(f"fold {k}{member} epoch {epoch}/{epochs}", total=len(trainer.train_loader),
                            status="") if rank0 else None

        def on_step(i, n, task=task):
            if task is not None and (i % 5 == 0 or i == n):
                bar.update(task, completed=i)

        train_loss = trainer.train_epoch(on_step)
        prob = trainer.predict(val_rows, tta=1)
        metric, value, val_loss = _val_metric(data.spec, y_val, prob)
        trainer.schedule.epoch_end(val_loss)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val_loss, metric: value,
               "seconds": time.perf_counter() - t0}
        if rank0:
            bar.update(task, status=f"loss {train_loss:.4f} val_loss {val_loss:.4f} {metric} {value:.4f}")
            bar.remove_task(task)
            tracker.log_metrics({f"{prefix}/{name}": v for name, v in row.items() if name != "epoch"},
                                step=epoch)
        record([row], epochs)
        score = value if math.isfinite(value) else -val_loss
        if cfg.eval.oof_epoch == "best" and (best is None or score > best[0]):
            best = (score, epoch, copy.deepcopy(trainer.predictor.state_dict()))
        if epoch > epochs - cfg.train.swa_epochs:
            trainer.average_weights()
    used = epochs
    if best is not None:
        used = best[1]
        trainer.predictor.load_state_dict(best[2])
    if trainer.swa is not None:  # before the metadata stage, which then starts from the averaged backbone
        trainer.finish_averaging()
    if staged_fit:
        record(staged.run_meta_stage(trainer, val_rows, lambda p: _val_metric(data.spec, y_val, p), epochs + 1),
               epochs + cfg.train.meta_epochs)
    return trainer, used


def train_fold(fabric, cfg: FusionConfig, data: CohortData, k: int, run: RunDir, tracker, bar) -> dict:
    """Train fold ``k`` (``train.seeds`` networks, probabilities averaged); rank 0 writes their weights, the
    encoder, history, predictions and DONE."""
    started = time.perf_counter()
    train_rows, val_rows, test_rows = data.split(k)
    if len(train_rows) < 2 or len(val_rows) == 0:
        raise InputDataError(f"fold {k}: {len(train_rows)} training and {len(val_rows)} validation rows; "
                             f"the cohort's folds are too small to train on")
    rank0 = fabric.is_global_zero
    if rank0:  # retraining a finished fold: it is unfinished until the new DONE
        run.unmark_done(k)
    history: list[dict] = []
    files = weight_files(cfg.train.seeds)
    oof_prob = test_prob = None
    used: list[int] = []
    for j, name in enumerate(files):
        trainer, epoch = _train_member(fabric, cfg, data, k, j, run, tracker, bar, (train_rows, val_rows), history)
        used.append(epoch)
        oof = trainer.predict(val_rows, tta=cfg.eval.tta)
        test = trainer.predict(test_rows, tta=cfg.eval.tta)
        oof_prob, test_prob = (oof, test) if oof_prob is None else (oof_prob + oof, test_prob + test)
        if rank0:
            save_weights(trainer.predictor, run.fold_dir(k) / name,
                         metadata={"backbone": cfg.model.backbone, "fold": str(k), "epoch": str(epoch),
                                   "seed": str(member_seed(cfg, k, j))})
        encoder = trainer.encoder  # fitted on the fold's training rows: the same for every network
        del trainer
    oof_prob, test_prob = oof_prob / len(files), test_prob / len(files)
    info = {"fold": k, "epoch_used": used[0] if len(used) == 1 else used, "epochs": cfg.train.epochs,
            "swa_epochs": cfg.train.swa_epochs, "seeds": cfg.train.seeds,
            "seconds": round(time.perf_counter() - started, 2),
            "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "n_test": int(len(test_rows)),
            "folds": data.folds, "target": data.spec.column, "classes": data.spec.classes,
            "positive_class": data.spec.positive_class}
    if rank0:
        fold_dir = run.fold_dir(k)
        write_json(fold_dir / "meta_encoder.json", {"feature_names": encoder.feature_names_, **encoder.to_dict()})
        cohort = data.cohort
        run.write_fold_predictions(k, predictions_frame(cohort.iloc[val_rows], oof_prob, data.spec),
                                   predictions_frame(cohort.iloc[test_rows], test_prob, data.spec))
        metric, oof_value, _ = _val_metric(data.spec, data.labels[val_rows], oof_prob)
        info[f"oof_{metric.removeprefix('val_')}"] = oof_value
        run.mark_done(k, info, files=[*files, "meta_encoder.json", "history.csv"])
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

    check_out_dir(cfg.out_dir)
    if cfg.model.pretrained:  # fail before loading data and starting processes
        pretrained_source(cfg.model.backbone, cfg.model.pretrained_path)
    fabric = make_fabric(cfg.engine)
    asked, cfg = cfg.train, resolve_run_config(cfg, fabric)  # config.yaml records the resolved numbers
    cohort = read_cohort(cfg.data_dir)
    cfg, descriptor_note = aux_targets.without_missing_descriptors(cfg, cohort)
    rank0 = fabric.is_global_zero
    run_dir = RunDir(cfg.out_dir)
    started = time.perf_counter()
    with (progress() if rank0 else Progress(disable=True)) as bar:
        data = load_cohort_data(cfg, bar if rank0 else None, cohort)
        all_folds = data.folds
        selected = _select_folds(all_folds, folds)
        todo = selected
        if rank0:
            run_dir.begin("fusion", identity(cfg), rerun_command(cfg), overwrite=cfg.overwrite)
            if resume:
                todo = [k for k in selected if not run_dir.is_done(k)]
                skipped = [k for k in selected if k not in todo]
                if skipped:
                    console.print(f"resume: fold(s) {skipped} already done, skipping")
            write_text(run_dir.path / "config.yaml", config_to_yaml(cfg))
            if descriptor_note:
                console.print(f"train-fusion: {descriptor_note}", highlight=False, soft_wrap=True)
            console.print(f"train-fusion: {len(data.cohort)} images ({int(data.labelled.sum())} labelled, "
                          f"{int((~data.labelled).sum())} test), target {data.spec.column!r} "
                          f"({'binary' if data.spec.is_binary else f'{len(data.spec.classes)} classes'}), "
                          f"{cfg.model.backbone} at {cfg.image_size} px, meta={'on' if cfg.model.use_meta else 'off'}, "
                          f"{f'aux descriptors x{cfg.train.aux_descriptors:g}, ' if cfg.train.aux_descriptors else ''}"
                          f"folds {todo}, {fabric.world_size} process(es) on {fabric.device.type}; "
                          f"{_batch_line(asked, cfg.train, fabric.world_size)}", highlight=False, soft_wrap=True)
        # Rank 0 decides (its file system holds the run directory on multi-node jobs).
        todo = fabric.broadcast(todo, src=0)
        run_dir.run_id, run_dir.kind = fabric.broadcast((run_dir.run_id, "fusion"), src=0)
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


def merge(run_dir: str | Path) -> dict:
    """Merge per-fold outputs into oof.parquet, test.parquet and metrics.json, complete the run, then report it.

    Refuses while a fold is missing. The report (report.html, training_curves.png...) is written by
    :func:`melanet.report.after_stage`; a failed report leaves the complete run with a warning.
    """
    run = RunDir.open(run_dir, "fusion", "melanet merge")
    info = _run_info(run)
    spec = _spec(info)
    _, _, metrics = merge_folds(run, info["folds"], spec)
    run.complete(["config.yaml", "oof.parquet", "test.parquet", "metrics.json"], folds=info["folds"])
    primary = metrics["primary_metric"]
    per_fold = "  ".join(f"{k}: {v.get(primary, float('nan')):.4f}" for k, v in metrics["per_fold"].items())
    console.print(f"OOF {primary} {metrics['overall'].get(primary, float('nan')):.4f}  (per fold {per_fold})",
                  highlight=False, soft_wrap=True)
    after_stage(run.path)
    return metrics


def predict(run_dir: str | Path, cohort: pd.DataFrame, data_dir: str | Path, *,
            device: str | None = None, per_fold: bool = False) -> np.ndarray | dict[int, np.ndarray]:
    """Fold-averaged TTA probabilities of a trained run for ``cohort``'s rows.

    ``cohort`` has the cohort.parquet columns (ingest's output for new images;
    its images are read from ``data_dir``). Patient-context features are
    computed within ``cohort``. Returns (n,) for a binary target or
    (n, n_classes) in class order. Reproduces the run's ``test.parquet`` for
    the same rows. Weights are read from safetensors only. With ``per_fold``
    returns {fold: that fold model's probabilities} (what a GBDT stacked on
    this run's scores maps fold model by fold model).
    """
    record = check_run(run_dir, ("fusion",), reader="predict")
    run = RunDir(record.path, run_id=record.run_id, kind="fusion")
    cfg = read_config(record.verify(CONFIG_FILE).parent, FusionConfig)
    info = _run_info(run)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() and cfg.engine.accelerator != "cpu" else "cpu"))
    precision = resolve_precision(cfg.engine.precision, dev.type)
    cfg = resolve_batch_and_lr(cfg, dev.type, 1, gpu_memory_gib(dev))  # a hand-written config may say auto
    feats = meta_features(cohort, cfg.features)
    store = ImageStore(data_dir, cohort["image_path"].astype(str).tolist(), cfg.image_size, cfg.train.preload_max_mb)
    rows = np.arange(len(cohort))
    n_outputs = 1 if info["classes"] is None else len(info["classes"])
    scratch = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})})
    files = weight_files(cfg.train.seeds)
    probs: dict[int, np.ndarray] = {}
    for k in info["folds"]:
        state = read_json(record.verify(f"fold_{k}/meta_encoder.json"))
        encoder = MetaEncoder.from_dict(state)
        meta = encoder.transform(feats)
        model = build_model(scratch, meta.shape[1], n_outputs).to(dev)
        prob = None
        for name in files:  # the fold's seed ensemble, averaged as train-fusion averaged its OOF
            load_weights(model, record.verify(f"fold_{k}/{name}"))  # strict: every tensor replaced
            one = predict_rows(model, store, rows, meta, tta=cfg.eval.tta,
                               batch_size=cfg.eval.batch_size or 2 * cfg.train.batch_size, device=dev,
                               precision=precision, channels_last=cfg.train.channels_last)
            prob = one if prob is None else prob + one
        probs[int(k)] = prob / len(files)
    if per_fold:
        return probs
    total = None
    for prob in probs.values():  # summed in fold order, as before: the same float result
        total = prob if total is None else total + prob
    return total / len(info["folds"])
