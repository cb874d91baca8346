"""``FeatureConfig`` and ``GBDTConfig``: the settings of ``melanet train-gbdt``, checked before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from melanet import features as F
from melanet.config import Choice, StageConfig
from melanet.errors import unknown_choice
from melanet.tracking import TrackingBackend
from melanet.train.gbdt.dask import dask_early_stopping_error
from melanet.train.gbdt.engines import COMPUTE_BACKENDS, ENGINES
from melanet.train.gbdt.lightgbm_model import LightGBMModel
from melanet.train.gbdt.params import check_param_names
from melanet.train.gbdt.xgboost_model import XGBoostModel
from melanet.train.offset import MODES
from melanet.train.small_data import SmallDataConfig
from melanet.train.stacking import SCALES

GBDTEngine = Choice("GBDT engine", ENGINES)
OofScale = Choice("with_oof_scale", SCALES)
OofMode = Choice("with_oof_mode", MODES)


class FeatureConfig(StageConfig):
    """Which cohort columns become features (see :func:`melanet.features.build_features`)."""

    categorical: list[str] = Field(default_factory=lambda: list(F.CATEGORICAL),
                                   description="Columns used as native categoricals (missing stays missing).")
    numeric: list[str] = Field(default_factory=lambda: list(F.NUMERIC),
                               description="Numeric columns (age in years, sizes in pixels...).")
    context: bool = Field(True, description="Add patient-context features: images per patient and each "
                                            "context column vs the patient's mean, std, rank and range.")
    context_columns: list[str] = Field(default_factory=lambda: list(F.CONTEXT_DEFAULT),
                                       description="Numeric columns that get patient-context features.")
    descriptors: bool = Field(True, description="Add the cohort's lesion_* descriptors (from ingest) as numeric "
                                                "features, with patient context and the ugly-duckling distance.")


class GBDTConfig(StageConfig):
    """Settings of ``melanet train-gbdt``. Engine parameters are merged over the engine's defaults."""

    data_dir: Path
    out_dir: Path
    target: str = Field("target", description="Label column: 0/1 (binary) or class names (multiclass).")
    positive_class: str | None = Field(None, description="Multiclass: the class scored by AUC/pAUC and the blend.")
    target_type: Literal["auto", "binary", "multiclass"] = Field(
        "auto", description="auto: 0/1 is binary, other values need positive_class; multiclass: every value a class.")
    engine: GBDTEngine = Field("lightgbm", description="lightgbm or xgboost.")
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    lightgbm: dict[str, Any] = Field(default_factory=lambda: dict(LightGBMModel.defaults))
    xgboost: dict[str, Any] = Field(default_factory=lambda: dict(XGBoostModel.defaults))
    num_boost_round: int = Field(2000, ge=1, description="Most boosting rounds per fold.")
    early_stopping_rounds: int | None = Field(
        100, ge=1, description="Stop after this many rounds without improvement on the inner split; "
                               "null trains num_boost_round rounds on all training rows.")
    inner_valid_fraction: float = Field(0.2, gt=0.0, lt=1.0,
                                        description="Fraction of training patients held out for early stopping.")
    refit: bool = Field(True, description="After early stopping picks the round count on the inner split, boost "
                                          "again on all training rows (rounds scaled by 1/(1-inner_valid_fraction)).")
    inner_splits: int = Field(1, ge=1, description="With refit: round count = mean early-stopped round over this "
                                                  "many patient-grouped inner splits, then refit on all rows.")
    small_data: SmallDataConfig = Field(default_factory=SmallDataConfig,
                                        description="Settings used below small_data.max_rows labelled rows "
                                                    "(melanet/train/small_data.py).")
    seed: int = Field(42, ge=0, description="Seed of boosting, bagging, the inner split and tuning.")
    n_jobs: int = Field(0, ge=0, description="Threads per model (0 = one under 20,000 training rows, where "
                                             "waking threads costs more than they save; else all available cores).")
    backend: str = Field("local", description="Where boosting runs: local (this process) or dask (the engine's "
                                              "Dask interface on a cluster).")
    scheduler: str | None = Field(None, description="backend dask: scheduler address (tcp://host:8786); null = "
                                                    "start a local cluster of dask_workers workers for the run.")
    dask_workers: int = Field(2, ge=1, description="backend dask without scheduler: worker processes of the local "
                                                   "cluster, each with n_jobs / dask_workers threads.")
    with_oof: list[str] = Field(default_factory=list,
                                description="Image-model runs whose OOF/test scores become features.")
    with_oof_context: bool = Field(True, description="Patient-context features on the OOF scores too "
                                                     "(the 'ugly duckling': a lesion vs the patient's others).")
    with_oof_monotone: bool = Field(True, description="Constrain the GBDT to be non-decreasing in each "
                                                      "image-model score (not in its patient-context features); "
                                                      "+0.005 AUC on two synthetic cohorts.")
    with_oof_scale: OofScale = Field("rank", description="How image-model scores enter: rank (percentile among the "
                                                    "producing fold model's OOF scores), logit (fold-standardised "
                                                    "logit) or raw; see melanet/train/stacking.py.")
    with_oof_mode: OofMode = Field("offset", description="offset: boost from a logistic fit of the image-model "
                                                     "scores (the trees learn corrections; binary targets); "
                                                     "feature: the scores are only features. "
                                                     "See melanet/train/offset.py.")
    tune: int = Field(0, ge=0, description="Optuna trials over the main hyper-parameters (0 = off).")
    exclude: Path | None = Field(None, description="CSV with image_id of rows not to train on (still predicted).")
    track: TrackingBackend = Field("none", description="Experiment tracking: none, mlflow or tensorboard.")
    track_uri: str | None = Field(None, description="MLflow tracking URI.")
    report: bool = Field(True, description="Write report.html (as `melanet report`) after training.")
    overwrite: bool = Field(False, description="Replace another run found in out_dir (otherwise refused).")

    @field_validator("positive_class", mode="before")
    @classmethod
    def _class_as_text(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @field_validator("backend")
    @classmethod
    def _known_compute_backend(cls, value: str, info: ValidationInfo) -> str:
        if value not in COMPUTE_BACKENDS:
            raise ValueError(str(unknown_choice("GBDT backend", value, COMPUTE_BACKENDS)))
        engine = ENGINES.get(info.data.get("engine", ""))
        # Refused here, before any data is read or a cluster started, rather than in the first fold.
        if value == "dask" and engine and not engine.dask_early_stopping and info.data.get("early_stopping_rounds"):
            raise ValueError(dask_early_stopping_error(engine.name))
        return value

    @field_validator("lightgbm", "xgboost")
    @classmethod
    def _engine_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        model = ENGINES[info.field_name]
        params = {model.canonical(k): v for k, v in model.defaults.items()}
        params.update({model.canonical(str(k)): v for k, v in value.items()})
        for key in map(str, value):
            owner = model.reserved.get(model.canonical(key), model.reserved.get(key))
            if owner:
                raise ValueError(f"{key!r} is set by the top-level key {owner!r}; remove it from "
                                 f"`{info.field_name}:` and set {owner} instead")
        # Names are checked only for the engine in use: XGBoost's check trains one tiny round.
        if info.data.get("engine") == model.name:
            check_param_names(model, {str(k): v for k, v in value.items()})
        return params
