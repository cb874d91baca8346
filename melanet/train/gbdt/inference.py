"""Predictions of a finished train-gbdt run for new rows (``melanet predict``, the Python API)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from melanet.errors import ArtifactError
from melanet.io import read_json
from melanet.runs import TargetSpec, check_run, read_config
from melanet.train.gbdt.config import GBDTConfig
from melanet.train.gbdt.cv import class_prob
from melanet.train.gbdt.engines import get_engine, n_classes_of
from melanet.train.gbdt.features import FEATURES_FILE, apply_schema, feature_table
from melanet.train.gbdt.model import TreeModel
from melanet.train.gbdt.params import resolve_n_jobs


def predict(run_dir: str | Path, cohort: pd.DataFrame, extra: pd.DataFrame | None = None,
            extra_folds: dict[str, dict[int, np.ndarray]] | None = None,
            per_fold: bool = False) -> np.ndarray | dict[int, np.ndarray]:
    """Fold-averaged probabilities of a train-gbdt run for ``cohort``'s rows: (n,) binary, (n, n_classes) multiclass.

    ``cohort`` has the cohort.parquet columns (labels not needed); include all
    of a patient's images so the patient-context features match training. Runs
    trained ``with_oof`` need the image-model scores, row-aligned, under the
    column names :func:`oof_feature_name` gives (``features.json`` lists them):
    ``extra`` holds each image model's fold-averaged score, ``extra_folds``
    each fold model's own scores ({column: {fold: scores}}), which a run whose
    scores were put on one scale fold model by fold model
    (``oof_scaling[column].test_scores == "per_fold"``) needs. For the test
    rows of the training cohort this reproduces ``test.parquet``. With
    ``per_fold`` returns {fold: that fold model's probabilities} instead.
    """
    from melanet.train.stacking import ScoreScaler

    run_dir = Path(run_dir)
    record = check_run(run_dir, ("gbdt",), reader="predict")
    cfg = read_config(record.verify("config.yaml").parent, GBDTConfig)
    info = read_json(record.verify(FEATURES_FILE))
    columns = info["oof_columns"]
    scaling = info.get("oof_scaling", {})
    features = None
    if columns:
        extra_folds = extra_folds or {}
        features = pd.DataFrame(index=cohort.index)
        for col in columns:
            state = scaling.get(col)  # absent: a run from before scaling, raw scores
            if state is not None and state["test_scores"] == "per_fold":
                if col not in extra_folds:
                    raise ArtifactError(f"{run_dir} was trained with image-model scores mapped fold model by fold "
                                        f"model; pass each fold model's scores as `extra_folds[{col!r}]`")
                scores = extra_folds[col]
            else:
                if extra is None or col not in extra.columns:
                    raise ArtifactError(f"{run_dir} was trained with image-model scores as features; pass them as "
                                        f"`extra` columns {columns} (missing: {col})")
                if len(extra) != len(cohort):
                    raise ArtifactError(f"`extra` has {len(extra)} rows, the cohort {len(cohort)}; "
                                        f"align them row by row")
                scores = extra[col].to_numpy(dtype=float)
            if state is None:
                features[col] = np.asarray(scores, dtype=float)
                continue
            for k, v in (scores.items() if isinstance(scores, dict) else []):
                if len(v) != len(cohort):
                    raise ArtifactError(f"`extra_folds[{col!r}][{k}]` has {len(v)} rows, the cohort {len(cohort)}")
            features[col] = ScoreScaler.from_state(state).transform_new(scores)
    X = apply_schema(feature_table(cohort, cfg.features, features, cfg.with_oof_context, cfg.target), info)
    spec = TargetSpec(column=cfg.target, classes=info["classes"], positive_class=cfg.positive_class)
    engine, n_jobs = get_engine(cfg.engine), resolve_n_jobs(cfg.n_jobs)
    # the key as written: a run from before with_oof_mode existed stacked its scores as features only
    offset_mode = bool(columns) and read_config(run_dir).get("with_oof_mode", "feature") == "offset"

    def load(k: int) -> TreeModel:
        path = record.verify(f"fold_{k}/{engine.model_file}")
        if offset_mode:
            from melanet.train.offset import OFFSET_FILE, OffsetModel

            record.verify(f"fold_{k}/{OFFSET_FILE}")
            return OffsetModel.load(engine, path, n_classes_of(spec), n_jobs)
        return engine.load(path, n_classes_of(spec), n_jobs)

    probs = {int(k): class_prob(load(k).predict_proba(X), spec) for k in info["folds"]}
    return probs if per_fold else np.mean(list(probs.values()), axis=0)
