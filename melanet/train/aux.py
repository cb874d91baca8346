"""Auxiliary descriptor targets: the backbone also learns to predict the lesion descriptors (multi-task).

Why: on a cohort of ~1,000 images a small CNN trained from scratch on the
label alone sees one bit per image and learns the image cues slowly
(issue 12). The ``lesion_*`` columns ingest measures from every image
(:mod:`melanet.descriptors`: area, diameter, border irregularity, asymmetry,
CIELAB colour mean and spread, colour clusters, lesion-skin contrast) say
what a dermatologist looks at, for every image, labelled or not. Regressing
them from the backbone's pooled features (``train.aux_descriptors`` > 0, the
loss weight) gives the backbone ~20 dense targets per image. They come from
the pixels, not from any generator's truth, so they exist for every cohort
ingest reads (``descriptors`` is on by default).

The descriptor head is used in training only: predictions, OOF, test and
``melanet predict`` never read a descriptor, and the head is not saved with
the weights (:func:`melanet.train.model.save_weights` leaves out
``descriptor_head.*``).

Targets: each column standardised with the mean and standard deviation of the
fold's training rows, clipped to +-``CLIP`` standard deviations (a few
extreme areas would otherwise dominate a squared loss). Missing values (NaN:
failed masks, chroma columns of grayscale images) are left out of the loss
(:func:`masked_mse`); columns with no spread on the training rows are
dropped.

A cohort without any measured descriptor (radiology modalities get none,
README "Lesion descriptors"; or every mask failed) trains with both
descriptor options off, said in one printed line and recorded in the run's
``config.yaml`` (:func:`without_missing_descriptors`), so one default recipe
serves every modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from melanet.errors import InputDataError
from melanet.features import descriptor_columns

#: Standardised targets are clipped to +-CLIP standard deviations.
CLIP = 5.0


def has_descriptors(cohort: pd.DataFrame) -> bool:
    """Whether ``cohort`` holds at least one measured (finite) ``lesion_*`` descriptor value."""
    raw = raw_descriptors(cohort)
    return raw.shape[1] > 0 and bool(np.isfinite(raw.to_numpy(float)).any())


def without_missing_descriptors(cfg, cohort: pd.DataFrame):
    """``(cfg, note)``: a FusionConfig with ``train.aux_descriptors`` and ``features.descriptors`` off when the
    cohort has no measured descriptor (``note`` says so), else ``(cfg, None)`` unchanged."""
    asked = [name for name, on in (("train.aux_descriptors", cfg.train.aux_descriptors > 0),
                                   ("features.descriptors", cfg.features.descriptors)) if on]
    if not asked or has_descriptors(cohort):
        return cfg, None
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"aux_descriptors": 0.0}),
                                 "features": cfg.features.model_copy(update={"descriptors": False})})
    return cfg, (f"no lesion descriptor was measured in this cohort (radiology modalities get none; or ingest ran "
                 f"with descriptors=false): {' and '.join(asked)} turned off for this run")


def no_descriptors_error(data_dir: str | Path, weight: float, what: str) -> InputDataError:
    return InputDataError(
        f"train.aux_descriptors={weight:g} needs the lesion_* descriptor columns, but {Path(data_dir) / 'cohort.parquet'}"
        f" {what}; re-ingest with descriptors on (`melanet ingest DICOM_DIR --out {data_dir} --set descriptors=true`,"
        f" the default) or set train.aux_descriptors=0")


@dataclass
class DescriptorTargets:
    """Standardised descriptor targets of every cohort row (NaN where missing), fitted on a fold's training rows."""

    columns: list[str]
    mean: np.ndarray          # per column, training rows (original units)
    std: np.ndarray
    values: np.ndarray        # (n_rows, n_columns) float32, standardised and clipped, NaN = missing

    @property
    def width(self) -> int:
        return len(self.columns)

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """All rows' targets on ``device``: indexed by a batch's cohort row positions during training."""
        return torch.tensor(self.values, dtype=torch.float32, device=device)


def raw_descriptors(cohort: pd.DataFrame) -> pd.DataFrame:
    """The numeric ``lesion_*`` columns as float, NaN where the mask failed (``lesion_mask_ok`` false)."""
    cols = descriptor_columns(cohort)
    values = cohort[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    if "lesion_mask_ok" in cohort.columns:
        failed = ~cohort["lesion_mask_ok"].fillna(False).astype(bool).to_numpy()
        values.loc[failed] = np.nan
    return values


def fit_targets(cohort: pd.DataFrame, train_rows: np.ndarray, *, data_dir: str | Path = "DATA_DIR",
                weight: float = 1.0) -> DescriptorTargets:
    """Standardise the descriptor columns with the statistics of ``train_rows`` (cohort row positions).

    Raises InputDataError naming the re-ingest when the cohort has no
    ``lesion_*`` column, or none with spread on the training rows.
    """
    if not descriptor_columns(cohort):
        raise no_descriptors_error(data_dir, weight, "has no lesion_* column")
    raw = raw_descriptors(cohort)
    train = raw.iloc[np.asarray(train_rows)]
    mean, std = train.mean(), train.std()
    keep = [c for c in raw.columns if train[c].notna().sum() >= 2 and np.isfinite(std[c]) and std[c] > 1e-12]
    if not keep:
        raise no_descriptors_error(data_dir, weight, "has no lesion_* value with spread on the fold's training rows "
                                                     "(every lesion mask failed?)")
    z = ((raw[keep] - mean[keep]) / std[keep]).clip(-CLIP, CLIP)
    return DescriptorTargets(keep, mean[keep].to_numpy(float), std[keep].to_numpy(float),
                             z.to_numpy(np.float32))


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries of ``target`` that are finite; 0 (with a gradient) when none is."""
    pred = pred.float()
    valid = torch.isfinite(target)
    diff = torch.where(valid, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (diff ** 2).sum() / valid.sum().clamp_min(1)
