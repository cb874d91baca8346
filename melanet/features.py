"""Metadata features shared by the GBDT and by FusionNet's metadata branch.

``build_features(cohort)`` is a pure function: one row per image, same order
as the cohort, categorical columns as pandas ``category`` (missing kept as
missing), numeric columns as float (missing as NaN). It never reads a label.

Patient-context features follow the ISIC 2024 winners: images per patient, and
for each context column the value relative to the same patient's mean, the
z-score within the patient and the rank within the patient. They use only the
rows of the same patient; since folds are grouped by patient, no statistic
crosses from a validation fold into training.

:class:`MetaEncoder` turns the feature table into a dense float matrix for the
MLP (one-hot with a missing category, standardised numerics with missing
indicators), with statistics fitted on training rows only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from melanet.errors import ArtifactError

CATEGORICAL = ["sex", "site", "modality", "photometric", "transfer_syntax"]
NUMERIC = ["age", "rows", "cols", "frames", "bits_stored"]
CONTEXT_DEFAULT = ["age"]


def build_features(
    cohort: pd.DataFrame,
    *,
    context: bool = True,
    extra: pd.DataFrame | None = None,
    context_columns: Sequence[str] | None = None,
    categorical: Sequence[str] = CATEGORICAL,
    numeric: Sequence[str] = NUMERIC,
) -> pd.DataFrame:
    """Feature table for ``cohort`` (index aligned with it).

    ``extra`` adds numeric columns (e.g. image-model OOF scores) aligned with the
    cohort's rows; they also get patient-context features. ``context_columns``
    defaults to ``age`` plus every ``extra`` column.
    """
    feats = pd.DataFrame(index=cohort.index)
    for col in categorical:
        if col in cohort.columns:
            values = cohort[col].astype("object").where(cohort[col].notna(), None)
            feats[col] = pd.Categorical(values)
    for col in numeric:
        if col in cohort.columns:
            feats[col] = pd.to_numeric(cohort[col], errors="coerce").astype(float)
    if extra is not None:
        if len(extra) != len(cohort):
            raise ArtifactError(f"extra features have {len(extra)} rows, cohort has {len(cohort)}")
        for col in extra.columns:
            feats[col] = pd.to_numeric(pd.Series(np.asarray(extra[col]), index=cohort.index), errors="coerce")
    if context:
        cols = list(context_columns) if context_columns is not None else (
            CONTEXT_DEFAULT + (list(extra.columns) if extra is not None else []))
        feats = pd.concat([feats, patient_context(cohort["patient_id"], feats[[c for c in cols if c in feats]])],
                          axis=1)
    return feats


def patient_context(patient_id: pd.Series, values: pd.DataFrame) -> pd.DataFrame:
    """Images per patient and each column relative to the same patient's other images.

    For column ``c``: ``c_pat_diff`` (value minus patient mean), ``c_pat_z``
    (z-score within patient, 0 when the patient's values do not vary),
    ``c_pat_rank`` (percentile rank within patient, 0-1) and ``c_pat_range``
    (patient max minus min).
    """
    out = pd.DataFrame(index=values.index)
    groups = patient_id.astype(str)
    out["n_images_patient"] = groups.map(groups.value_counts()).astype(float)
    for col in values.columns:
        v = values[col].astype(float)
        g = v.groupby(groups)
        mean = g.transform("mean")
        std = g.transform("std")
        out[f"{col}_pat_diff"] = v - mean
        out[f"{col}_pat_z"] = np.where(std > 0, (v - mean) / std.where(std > 0, 1.0), 0.0)
        out.loc[v.isna(), f"{col}_pat_z"] = np.nan
        out[f"{col}_pat_rank"] = g.rank(pct=True)
        out[f"{col}_pat_range"] = g.transform("max") - g.transform("min")
    return out


class MetaEncoder:
    """Dense, standardised metadata matrix for the MLP branch (scikit-learn style).

    ``fit`` learns categories and mean/std on training rows only; ``transform``
    returns float32 (n, n_features): one-hot categoricals with a ``__missing__``
    level (unseen levels map to it too), standardised numerics with NaN set to 0
    and a ``<col>_missing`` indicator when the column had any missing value.
    """

    def fit(self, feats: pd.DataFrame) -> "MetaEncoder":
        self.categories_: dict[str, list[str]] = {}
        self.numeric_: dict[str, tuple[float, float, bool]] = {}
        for col in feats.columns:
            s = feats[col]
            if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object:
                levels = sorted(str(v) for v in s.dropna().unique())
                self.categories_[col] = levels + ["__missing__"]
            else:
                v = s.astype(float)
                mean = float(np.nanmean(v)) if v.notna().any() else 0.0
                std = float(np.nanstd(v)) if v.notna().any() else 1.0
                self.numeric_[col] = (mean, std if std > 1e-12 else 1.0, bool(v.isna().any()))
        return self

    def _check(self) -> None:
        if not hasattr(self, "categories_"):
            raise RuntimeError("MetaEncoder is not fitted; call fit() on the training rows first")

    @property
    def feature_names_(self) -> list[str]:
        self._check()
        names = [f"{c}={lvl}" for c, levels in self.categories_.items() for lvl in levels]
        for col, (_, _, has_missing) in self.numeric_.items():
            names.append(col)
            if has_missing:
                names.append(f"{col}_missing")
        return names

    def transform(self, feats: pd.DataFrame) -> np.ndarray:
        self._check()
        blocks = []
        for col, levels in self.categories_.items():
            s = feats[col].astype("object") if col in feats else pd.Series([None] * len(feats))
            index = {lvl: i for i, lvl in enumerate(levels)}
            codes = np.array([index.get(str(v), len(levels) - 1) if v is not None and v == v else len(levels) - 1
                              for v in s], dtype=int)
            onehot = np.zeros((len(feats), len(levels)), dtype=np.float32)
            onehot[np.arange(len(feats)), codes] = 1.0
            blocks.append(onehot)
        for col, (mean, std, has_missing) in self.numeric_.items():
            v = feats[col].astype(float).to_numpy() if col in feats else np.full(len(feats), np.nan)
            z = np.nan_to_num((v - mean) / std, nan=0.0).astype(np.float32)
            blocks.append(z[:, None])
            if has_missing:
                blocks.append(np.isnan(v).astype(np.float32)[:, None])
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(feats), 0), np.float32)

    def to_dict(self) -> dict:
        self._check()
        return {"categories": self.categories_, "numeric": {k: list(v) for k, v in self.numeric_.items()}}

    @classmethod
    def from_dict(cls, state: dict) -> "MetaEncoder":
        enc = cls()
        enc.categories_ = {k: list(v) for k, v in state["categories"].items()}
        enc.numeric_ = {k: (float(v[0]), float(v[1]), bool(v[2])) for k, v in state["numeric"].items()}
        return enc
