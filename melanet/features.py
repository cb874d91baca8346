"""Metadata features shared by the GBDT and by FusionNet's metadata branch.

``build_features(cohort)`` is a pure function: one row per image, same order
as the cohort, categorical columns as pandas ``category`` (missing kept as
missing), numeric columns as float (missing as NaN). It never reads a label.

Patient-context features follow the ISIC 2024 winners: images per patient, and
for each context column the value relative to the same patient's mean, the
z-score within the patient and the rank within the patient, plus the "ugly
duckling" distance (:func:`ugly_duckling_distance`) of an image's lesion
descriptor vector from the mean of the same patient's other images. They use
only the rows of the same patient (never a label); since folds are grouped by
patient, no statistic crosses from a validation fold into training.

Patients with one image get the neutral values: difference 0, z-score 0, rank
0.5, range 0, duckling distance 0 (nothing to compare with); the column
``n_images_patient`` tells the model which rows those are.

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
    duckling_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Feature table for ``cohort`` (index aligned with it).

    ``extra`` adds numeric columns (e.g. image-model OOF scores) aligned with the
    cohort's rows; they also get patient-context features. ``context_columns``
    defaults to ``age`` plus every ``extra`` column. With ``context``, the
    ``duckling_columns`` (e.g. :func:`descriptor_columns`) give the
    ``duckling_distance`` and ``duckling_pat_rank`` columns.
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
        parts = [feats, patient_context(cohort["patient_id"], feats[[c for c in cols if c in feats]])]
        ducks = [c for c in duckling_columns if c in cohort.columns]
        if ducks:
            values = cohort[ducks].apply(pd.to_numeric, errors="coerce").astype(float)
            distance = ugly_duckling_distance(cohort["patient_id"], values)
            parts.append(pd.DataFrame({"duckling_distance": distance,
                                       "duckling_pat_rank": _mid_rank(distance, cohort["patient_id"].astype(str))},
                                      index=cohort.index))
        feats = pd.concat(parts, axis=1)
    return feats


def descriptor_columns(cohort: pd.DataFrame) -> list[str]:
    """The numeric lesion descriptor columns (``lesion_*`` from ingest, without ``lesion_mask_ok``) of ``cohort``."""
    return [c for c in cohort.columns if c.startswith("lesion_") and c != "lesion_mask_ok"]


def _mid_rank(values: pd.Series, groups: pd.Series) -> pd.Series:
    """Rank within group scaled to (0, 1) by ``(rank - 0.5) / n``: 0.5 for a group of one; NaN stays NaN."""
    g = values.groupby(groups)
    return (g.rank(method="average") - 0.5) / g.transform("count")


def ugly_duckling_distance(patient_id: pd.Series, values: pd.DataFrame) -> pd.Series:
    """How far each image's vector is from the mean of the same patient's *other* images (standardised units).

    Each column is standardised over all rows (mean and std of the column, no
    label), then for image ``i`` of a patient with images ``j != i`` the
    distance is the root mean square over columns of
    ``z_i - mean_j(z_j)``: the leave-one-out mean, so the lesion itself does not
    pull the reference towards itself. Missing values are skipped column by
    column (a column counts where the image and at least one other image have
    it); an image with no usable column gets NaN. A patient with one image gets
    0 (the neutral value: nothing to differ from).
    """
    groups = patient_id.astype(str)
    z = values.astype(float)
    std = z.std()
    z = (z - z.mean()) / std.where(std > 0, np.nan)
    z = z.loc[:, std > 0]
    present = z.notna().astype(float)
    g_sum = z.fillna(0.0).groupby(groups).transform("sum")
    g_cnt = present.groupby(groups).transform("sum")
    others = g_cnt - present
    loo_mean = (g_sum - z.fillna(0.0)) / others.where(others > 0, np.nan)
    sq = (z - loo_mean) ** 2  # NaN where the image or all the others lack the column
    distance = np.sqrt(sq.mean(axis=1, skipna=True))
    single = groups.map(groups.value_counts()) == 1
    distance[single.to_numpy()] = 0.0
    return distance.rename("duckling_distance")


def patient_context(patient_id: pd.Series, values: pd.DataFrame) -> pd.DataFrame:
    """Images per patient and each column relative to the same patient's other images.

    For column ``c``: ``c_pat_diff`` (value minus patient mean), ``c_pat_z``
    (z-score within patient, 0 when the patient's values do not vary),
    ``c_pat_rank`` (mid-rank within patient, ``(rank - 0.5) / n``: 0.5 for a
    patient's only image) and ``c_pat_range`` (patient max minus min).
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
        out[f"{col}_pat_rank"] = _mid_rank(v, groups)
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
