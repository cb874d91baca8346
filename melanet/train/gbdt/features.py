"""The GBDT's feature table (pure): metadata, patient context, image-model scores, and their encoding.

Leakage, and what guards against it here:

- No feature reads a label. Patient-context features use only the rows of the
  same patient (labelled or not); folds are grouped by patient, so none of
  them carries a statistic across folds.
- ``with_oof`` (ISIC 2024 stacking, :func:`load_oof_features`) is optional because it leaks at second
  order: each training row's image score comes from an image model that did
  not see that row, but the GBDT of fold k trains on rows of the other folds,
  whose image scores were made by image models that trained on fold k's
  validation rows. The GBDT OOF metric is therefore slightly optimistic. This
  is standard practice; the blend's cross-validation does not remove it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from melanet import features as F
from melanet.cohort import DICOM_COLUMNS, IDENTIFIER_COLUMNS
from melanet.console import console
from melanet.descriptors import LESION_COLUMNS
from melanet.errors import ArtifactError, ConfigError, did_you_mean
from melanet.runs import read_run, spec_from_metrics

if TYPE_CHECKING:
    from melanet.train.gbdt.config import FeatureConfig

FEATURES_FILE = "features.json"
# Identifiers are never features: they would let a tree memorise rows or patients.
NOT_FEATURES = set(IDENTIFIER_COLUMNS)


def oof_feature_name(run_dir: str | Path, index: int) -> str:
    """Feature column holding image-model run number ``index``'s score (``oof0_fusion``)."""
    stem = re.sub(r"[^0-9A-Za-z_]+", "_", Path(str(run_dir)).name).strip("_") or "run"
    return f"oof{index}_{stem}"


def oof_feature_names(runs: Sequence[str | Path]) -> list[str]:
    """Feature columns of the ``with_oof`` runs' scores, in order."""
    return [oof_feature_name(run, i) for i, run in enumerate(runs)]


def feature_table(cohort: pd.DataFrame, fcfg: FeatureConfig, extra: pd.DataFrame | None = None,
                  extra_context: bool = True, target: str = "target") -> pd.DataFrame:
    """The GBDT's feature table for ``cohort`` (row-aligned): metadata, patient context, ``extra`` scores.

    Refuses columns that are missing, identifiers, or the label. With
    ``extra_context`` the ``extra`` columns get patient-context features too.
    """
    wanted = {"features.categorical": fcfg.categorical, "features.numeric": fcfg.numeric,
              "features.context_columns": fcfg.context_columns if fcfg.context else []}
    for key, columns in wanted.items():
        for col in columns:
            if col in NOT_FEATURES or col in (target, "target"):
                why = "is an identifier" if col in NOT_FEATURES else "is the label"
                raise ConfigError(f"{key}: column {col!r} {why} and cannot be a feature; remove it")
            if col not in cohort.columns:
                raise ConfigError(f"{key}: column {col!r} is not in the cohort"
                                  f"{did_you_mean(col, cohort.columns)}; cohort columns: {list(cohort.columns)}")
            if col not in DICOM_COLUMNS and col not in LESION_COLUMNS:
                console.print(f"[yellow]warning:[/] {key}: {col!r} comes from the labels table; "
                              f"make sure it is not derived from the label", highlight=False)
    context_columns, numeric, descriptors = list(fcfg.context_columns), list(fcfg.numeric), []
    if fcfg.descriptors:
        descriptors = [c for c in F.descriptor_columns(cohort) if c not in numeric]
        if not descriptors:
            console.print("[yellow]warning:[/] features.descriptors is on but the cohort has no lesion_* columns "
                          "(ingested with descriptors=false?); training without them", highlight=False)
        numeric += descriptors
        context_columns += [c for c in descriptors if c not in context_columns]
    if extra is not None and extra_context:
        context_columns += list(extra.columns)
    # Patient statistics are float sums whose last bits depend on row order; a canonical order makes a
    # row's features (and so its prediction) the same whichever rows it is predicted with.
    order = np.lexsort((pd.factorize(cohort["image_id"].astype(str), sort=True)[0],
                        pd.factorize(cohort["patient_id"].astype(str), sort=True)[0]))
    feats = F.build_features(cohort.iloc[order], context=fcfg.context,
                             extra=None if extra is None else extra.iloc[order], context_columns=context_columns,
                             categorical=fcfg.categorical, numeric=numeric, duckling_columns=descriptors)
    return feats.iloc[np.argsort(order)]


def feature_schema(X: pd.DataFrame) -> dict[str, Any]:
    """Column order and categorical levels of a feature table, so new rows are encoded the same way."""
    return {"columns": list(X.columns),
            "categories": {c: [str(v) for v in X[c].cat.categories] for c in X.columns
                           if isinstance(X[c].dtype, pd.CategoricalDtype)}}


def apply_schema(X: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """``X`` with the training columns in order and the training categories (unseen levels -> missing)."""
    missing = [c for c in schema["columns"] if c not in X.columns]
    if missing:
        raise ArtifactError(f"the rows to predict lack feature column(s) {missing} the model was trained on")
    X = X[schema["columns"]].copy()
    for col, levels in schema["categories"].items():
        values = X[col]
        if isinstance(values.dtype, pd.CategoricalDtype) and values.cat.categories.astype(str).is_unique:
            X[col] = values.cat.rename_categories(values.cat.categories.astype(str)).cat.set_categories(levels)
        else:
            X[col] = pd.Categorical(values.astype(str).where(values.notna(), None), categories=levels)
    return X


def load_oof_features(cohort: pd.DataFrame, labelled: np.ndarray, runs: Sequence[str | Path],
                      scale: str = "rank") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Image-model scores as features, row-aligned with ``cohort``: OOF for labelled rows, test for the rest.

    Each run must cover exactly the cohort's labelled rows (same folds) in its
    ``oof.parquet`` and the unlabelled rows in its ``test.parquet``. Scores are
    put on one scale across the run's fold models (``scale``, see
    :mod:`melanet.train.stacking`). Returns the features and, per feature
    column, the state predict needs to map new rows the same way.
    """
    from melanet.train.stacking import ScoreScaler, fold_test_scores

    out = pd.DataFrame(index=cohort.index)
    states: dict[str, Any] = {}
    ids = cohort["image_id"].astype(str)
    for i, run in enumerate(runs):
        oof, test, metrics = read_run(run)
        column = spec_from_metrics(metrics).score_column
        if column is None:
            raise ArtifactError(f"--with-oof {run}: the run is multiclass without positive_class, so it has no "
                                f"single score; re-train it with positive_class set")
        for name, table, expected in (("oof.parquet", oof, ids[labelled]), ("test.parquet", test, ids[~labelled])):
            _check_ids(run, name, table["image_id"].astype(str), expected)
        folds = cohort.loc[labelled, ["image_id", "fold"]].astype({"image_id": str}).merge(
            oof[["image_id", "fold"]].astype({"image_id": str}), on="image_id", suffixes=("", "_run"))
        wrong = folds.loc[folds["fold"].astype(int) != folds["fold_run"].astype(int)]
        if len(wrong):
            row = wrong.iloc[0]
            raise ArtifactError(f"--with-oof {run}: image_id {row['image_id']!r} is in fold {int(row['fold_run'])} "
                                f"there but in fold {int(row['fold'])} in the cohort; train both on the same data")
        oof = oof.set_index(oof["image_id"].astype(str))
        scaler = ScoreScaler(scale).fit(oof[column].to_numpy(dtype=float), oof["fold"].to_numpy())
        name = oof_feature_name(run, i)
        values = pd.Series(np.nan, index=cohort.index)
        lab_ids = ids[labelled]
        values[labelled] = scaler.transform_oof(oof.loc[lab_ids, column].to_numpy(dtype=float),
                                                oof.loc[lab_ids, "fold"].to_numpy())
        test_ids = ids[~labelled]
        per_fold = fold_test_scores(run, column, test_ids)
        if per_fold is not None and not set(scaler.folds) <= set(per_fold):
            per_fold = None
        if len(test_ids):
            averaged = test.set_index(test["image_id"].astype(str)).loc[test_ids, column].to_numpy(dtype=float)
            values[~labelled] = scaler.transform_new(per_fold if per_fold is not None else averaged)
        out[name] = values.astype(float).to_numpy()
        states[name] = {**scaler.state(), "run": str(run),
                        "test_scores": "per_fold" if per_fold is not None and scale != "raw" else "fold_mean"}
    return out, states


def _check_ids(run: str | Path, name: str, found: pd.Series, expected: pd.Series) -> None:
    extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    if extra or missing or found.duplicated().any():
        detail = (f"has image_id {extra[0]!r}, which the cohort's matching rows lack" if extra else
                  f"lacks image_id {missing[0]!r}" if missing else f"repeats image_id {found[found.duplicated()].iloc[0]!r}")
        raise ArtifactError(f"--with-oof {run}: {name} {detail}; the run was trained on another cohort or "
                            f"target - re-train it on this data")
