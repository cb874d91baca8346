"""``melanet train-gbdt``: LightGBM or XGBoost on DICOM metadata and patient context, on the cohort's folds.

The ISIC 2024 winners' recipe: gradient-boosted trees on header metadata (sex,
age, site, ... with categoricals handled natively by the engine and missing
values kept missing) and the lesion descriptors ingest measured from the pixels
(``lesion_*``, :mod:`melanet.descriptors`; ``features.descriptors``), plus
patient-context features (images per patient, each value relative to the same
patient's mean/std and rank, the "ugly duckling" distance of the descriptor
vector from the patient's other lesions), optionally with
image-model out-of-fold scores as features or, by default, as the starting
margin the trees correct (``with_oof_mode``, :mod:`melanet.train.offset`). Features come from
:func:`melanet.features.build_features`, the code FusionNet's metadata branch
uses too.

``backend: dask`` boosts each fold model on a Dask cluster through
``lightgbm.dask`` / ``xgboost.dask`` (same folds, same outputs, the same model
files); LightGBM's Dask interface cannot stop early, XGBoost's can. See
docs/distributed.md.

Written to ``OUT_DIR`` (DESIGN.md "Runs")::

    config.yaml                 resolved config (tuned parameters included)
    features.json               feature columns, categorical levels, classes, folds (read by predict)
    fold_<k>/model.txt|json     the fold's booster in the engine's own format
    fold_<k>/offset.json        with_oof_mode: offset: the image-score offset it boosts from (melanet/train/offset.py)
    fold_<k>/history.csv        early-stopping metric per round on the inner split
    fold_<k>/{oof,test}.parquet, fold_<k>/DONE
    oof.parquet, test.parquet, metrics.json
    feature_importance.csv/png  total gain per feature, mean over folds
    tune.json, tune_trials.csv  with ``tune: N``

Leakage, and what guards against it:

- No feature reads a label. Patient-context features use only the rows of the
  same patient (labelled or not); folds are grouped by patient, so none of
  them carries a statistic across folds.
- Early stopping watches an inner, patient-grouped split of the training
  folds, never the validation fold whose predictions become the OOF.
- ``with_oof`` (ISIC 2024 stacking) is optional because it leaks at second
  order: each training row's image score comes from an image model that did
  not see that row, but the GBDT of fold k trains on rows of the other folds,
  whose image scores were made by image models that trained on fold k's
  validation rows. The GBDT OOF metric is therefore slightly optimistic. This
  is standard practice; the blend's cross-validation does not remove it.
- ``tune`` picks hyper-parameters on the same folds' CV, so a tuned run's OOF
  metric is optimistic by the selection too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationInfo, field_validator

from melanet import features as F
from melanet.cohort import DICOM_COLUMNS, labelled_mask, read_cohort
from melanet.descriptors import LESION_COLUMNS
from melanet.config import StageConfig, config_from_run, config_to_yaml
from melanet.console import console
from melanet.errors import ArtifactError, ConfigError, did_you_mean, unknown_choice
from melanet.io import read_json, write_csv, write_json, write_text
from melanet.optional import require
from melanet.runs import (RunDir, read_exclude, TargetSpec, check_out_dir, check_run, comparable_config, evaluate,
                          fingerprint, merge_folds, predictions_frame, read_run, resolve_target, run_identity,
                          spec_from_metrics)
from melanet.tracking import BACKENDS, start_tracking
from melanet.train.offset import resolve_mode as resolve_oof_mode
from melanet.train.small_data import SmallDataConfig

FEATURES_FILE = "features.json"
# Identifiers are never features: they would let a tree memorise rows or patients.
NOT_FEATURES = {"image_id", "sop_instance_uid", "patient_id", "sha256", "image_path", "fold"}


# --------------------------------------------------------------------------- engines

# Name of the label column while it travels with the features to the Dask workers.
_DASK_LABEL = "__melanet_label__"


def dask_frames(client: Any, X: pd.DataFrame, y: np.ndarray) -> tuple[Any, Any]:
    """``X`` and ``y`` as row-aligned Dask collections on ``client``'s cluster, about one partition per worker.

    Categorical columns keep ``X``'s categories in every partition (both Dask
    interfaces require that); :func:`apply_schema` already fixed them from the
    whole table.
    """
    dd = require("dask.dataframe", "train-gbdt backend: dask")

    n_partitions = max(1, min(len(client.nthreads()), len(X)))
    frame = dd.from_pandas(X.assign(**{_DASK_LABEL: np.asarray(y)}).reset_index(drop=True), npartitions=n_partitions)
    # Persist before splitting, so that the features and the labels of a partition are one piece of data on one
    # worker rather than two computations that the engines must line up again (LightGBM issue #6920).
    frame = client.persist(frame)
    return frame[list(X.columns)], frame[_DASK_LABEL]


def dask_early_stopping_error(engine: str) -> str:
    """Why ``engine`` cannot stop early on a Dask cluster, and what to set instead."""
    return (f"{engine}'s Dask interface cannot stop early (its workers would each judge a different share of the "
            f"early-stopping rows); with backend: dask set early_stopping_rounds: null and choose num_boost_round "
            f"(e.g. the `rounds` in fold_<k>/DONE of a local run on a sample), or use engine: xgboost, whose Dask "
            f"interface stops early")


class TreeModel:
    """One fold's booster, scikit-learn style: settings in ``__init__``, ``fit`` returns self,
    learned state in ``booster_``, ``best_iteration_`` (rounds kept), ``history_`` (early-stopping
    metric per round) and ``n_train_`` / ``n_early_stopping_`` (rows boosted on / watched).

    ``n_classes`` 2 means a binary objective and ``predict_proba`` of shape (n,);
    more means softmax and (n, n_classes).

    With a ``client`` (``dask.distributed.Client``) ``fit`` boosts on the
    cluster's workers through the engine's Dask interface; the booster comes
    back as an ordinary local one, so prediction, saving and the model file are
    the same as for a model boosted in this process. ``n_jobs`` then sets only
    the threads of local prediction: each worker boosts with its own threads.
    """

    name: ClassVar[str]
    model_file: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    # engine parameter -> the top-level config key that sets it
    reserved: ClassVar[dict[str, str]]
    # whether the engine's Dask interface can stop early on a validation set
    dask_early_stopping: ClassVar[bool]

    def __init__(self, params: dict[str, Any], n_classes: int = 2, num_boost_round: int = 1000,
                 early_stopping_rounds: int | None = 100, seed: int = 0, n_jobs: int = 1, client: Any = None):
        self.params = dict(params)
        self.n_classes = n_classes
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.n_jobs = n_jobs
        self.client = client

    def _check(self) -> None:
        if not hasattr(self, "booster_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def _error(self, exc: Exception) -> ConfigError:
        # The engine's own words, on one line, without the C++ source location it appends.
        why = re.sub(r"\s+at \S+\.(cpp|cc|h), line \d+\s*\.?", "", " ".join(str(exc).split())).strip()
        why = re.sub(r"^\[[\d:]+\] ", "", why)
        return ConfigError(f"{self.name} rejected a parameter ({why}); fix the `{self.name}:` section of the config "
                           f"or the --set {self.name}.<name>=... override")

    def fit(self, X: pd.DataFrame, y: np.ndarray, X_valid: pd.DataFrame | None = None,
            y_valid: np.ndarray | None = None, margin: np.ndarray | None = None,
            margin_valid: np.ndarray | None = None) -> "TreeModel":
        """Boost on ``X, y``; with ``X_valid, y_valid`` stop early on them. Returns self.

        ``margin`` / ``margin_valid`` (binary only): each row's starting log-odds
        (LightGBM ``init_score``, XGBoost ``base_margin``), so the trees learn
        corrections to it; ``predict_proba`` then needs the same rows' margin.
        See :mod:`melanet.train.offset`.
        """
        if margin is not None and (self.n_classes > 2 or self.client is not None):
            raise ConfigError("with_oof_mode: offset needs a binary target and backend: local; "
                              "set with_oof_mode: feature")
        self._fit(X, y, X_valid, y_valid, margin, margin_valid)
        self.n_train_ = len(X)
        self.n_early_stopping_ = 0 if X_valid is None else len(X_valid)
        return self

    # Subclasses implement these.
    def _fit(self, X: pd.DataFrame, y: np.ndarray, X_valid: pd.DataFrame | None,
             y_valid: np.ndarray | None, margin: np.ndarray | None, margin_valid: np.ndarray | None) -> None:
        raise NotImplementedError

    def predict_proba(self, X: pd.DataFrame, margin: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def feature_gain(self) -> pd.Series:
        """Total split gain per feature over the kept rounds."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path, n_classes: int, n_jobs: int = 1) -> "TreeModel":
        raise NotImplementedError

    @classmethod
    def canonical(cls, key: str) -> str:
        """The engine's own name for a parameter given under an alias."""
        return key

    @classmethod
    def known_params(cls) -> list[str]:
        """Every parameter name the engine accepts (for typo detection)."""
        raise NotImplementedError

    @staticmethod
    def suggest(trial: Any) -> dict[str, Any]:
        """Optuna search space of the main hyper-parameters."""
        raise NotImplementedError

    def with_rounds(self, rounds: int) -> "TreeModel":
        """An unfitted copy with the same settings that boosts exactly ``rounds`` rounds, no early stopping."""
        return type(self)(self.params, self.n_classes, rounds, None, self.seed, self.n_jobs, self.client)


class LightGBMModel(TreeModel):
    name = "lightgbm"
    model_file = "model.txt"
    defaults = {
        "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20, "feature_fraction": 0.8,
        "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "max_cat_to_onehot": 4,
        # Same input, same seed, same trees: no timing-based row/col-wise choice, no racy reductions.
        "deterministic": True, "force_col_wise": True, "verbosity": -1,
    }
    reserved = {"objective": "target", "num_class": "target", "num_threads": "n_jobs", "seed": "seed",
                "num_iterations": "num_boost_round", "early_stopping_round": "early_stopping_rounds"}
    # lightgbm.dask evaluates a validation set on each worker's share of it only, so workers disagree on when
    # to stop and training hangs (LightGBM issues #6351, #6197); its maintainers call it unsupported (#3712).
    dask_early_stopping = False

    @classmethod
    @functools.cache
    def _aliases(cls) -> dict[str, str]:
        # LightGBM's own alias table (private, but the only complete list of its parameters).
        from lightgbm.basic import _ConfigAliases

        table = _ConfigAliases._get_all_param_aliases()
        return {alias: name for name, aliases in table.items() for alias in [name, *aliases]}

    @classmethod
    def canonical(cls, key: str) -> str:
        return cls._aliases().get(key, key)

    @classmethod
    def known_params(cls) -> list[str]:
        return list(cls._aliases())

    def _train_params(self) -> dict[str, Any]:
        params = {**self.params, "seed": self.seed, "num_threads": self.n_jobs}
        if self.n_classes > 2:
            params.update(objective="multiclass", num_class=self.n_classes)
        else:
            params.update(objective="binary")
        return params

    def _fit(self, X, y, X_valid, y_valid, margin=None, margin_valid=None):
        import lightgbm as lgb

        stopping = X_valid is not None and bool(self.early_stopping_rounds)
        if stopping and self.client is not None:
            raise ConfigError(dask_early_stopping_error(self.name))
        history: dict = {}
        try:
            if self.client is None:
                self.booster_ = self._boost_local(X, y, X_valid if stopping else None, y_valid, history,
                                                  margin, margin_valid)
            else:
                self.booster_ = self._boost_dask(X, y)
        except lgb.basic.LightGBMError as exc:
            raise self._error(exc) from None
        self.best_iteration_ = self.booster_.best_iteration or self.booster_.current_iteration()
        self.history_ = pd.DataFrame(history.get("valid", {}))

    def _boost_local(self, X, y, X_valid, y_valid, history: dict, margin=None, margin_valid=None):
        import lightgbm as lgb

        train = lgb.Dataset(X, y, init_score=margin)
        valid_sets, callbacks = [], []
        if X_valid is not None:
            valid_sets = [lgb.Dataset(X_valid, y_valid, reference=train, init_score=margin_valid)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False),
                         lgb.record_evaluation(history)]
        return lgb.train(self._train_params(), train, self.num_boost_round, valid_sets=valid_sets,
                         valid_names=["valid"] * len(valid_sets), callbacks=callbacks)

    def _boost_dask(self, X, y):
        from lightgbm.dask import DaskLGBMRegressor

        # Each worker boosts with its own thread count; lightgbm.dask drops thread settings with a warning.
        params = {k: v for k, v in self._train_params().items() if k != "num_threads"}
        # The regressor face with the classification objective set explicitly: DaskLGBMClassifier re-encodes
        # labels on each worker from the classes that worker happens to hold, so a worker whose partitions
        # lack a class would number the classes differently. ``y`` is already 0..n_classes-1.
        model = DaskLGBMRegressor(client=self.client, n_estimators=self.num_boost_round, **params)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(*dask_frames(self.client, X, y))
        return model.to_local().booster_

    def predict_proba(self, X, margin=None):
        self._check()
        if margin is None:
            return self.booster_.predict(X, num_iteration=self.best_iteration_, num_threads=self.n_jobs)
        from scipy.special import expit

        # init_score is not part of the booster: add it back to the trees' raw sum
        raw = self.booster_.predict(X, num_iteration=self.best_iteration_, num_threads=self.n_jobs, raw_score=True)
        return expit(raw + np.asarray(margin, dtype=float))

    def feature_gain(self):
        self._check()
        return pd.Series(self.booster_.feature_importance("gain", iteration=self.best_iteration_),
                         index=self.booster_.feature_name(), dtype=float)

    def save(self, path):
        self._check()
        write_text(path, self.booster_.model_to_string(num_iteration=self.best_iteration_))

    @classmethod
    def load(cls, path, n_classes, n_jobs=1):
        import lightgbm as lgb

        model = cls({}, n_classes=n_classes, n_jobs=n_jobs)
        model.booster_ = lgb.Booster(model_file=str(path))
        model.best_iteration_ = model.booster_.current_iteration()
        return model

    @staticmethod
    def suggest(trial):
        return {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 5, 200, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        }


class XGBoostModel(TreeModel):
    name = "xgboost"
    model_file = "model.json"
    defaults = {
        "eta": 0.05, "max_depth": 6, "min_child_weight": 1.0, "subsample": 0.8, "colsample_bytree": 0.8,
        "lambda": 1.0, "tree_method": "hist", "max_cat_to_onehot": 4, "verbosity": 0,
    }
    reserved = {"objective": "target", "num_class": "target", "nthread": "n_jobs", "n_jobs": "n_jobs",
                "seed": "seed", "random_state": "seed", "num_boost_round": "num_boost_round",
                "n_estimators": "num_boost_round", "early_stopping_rounds": "early_stopping_rounds"}
    _ALIASES = {"learning_rate": "eta", "reg_lambda": "lambda", "reg_alpha": "alpha", "min_split_loss": "gamma",
                "random_state": "seed", "n_jobs": "nthread"}
    # xgboost.dask aggregates the evaluation metric over all workers, so every worker stops at the same round.
    dask_early_stopping = True

    @classmethod
    def canonical(cls, key: str) -> str:
        return cls._ALIASES.get(key, key)

    @classmethod
    @functools.cache
    def known_params(cls) -> list[str]:
        # XGBoost has no parameter list; the keys of a fitted booster's config are the closest thing.
        import json

        import xgboost as xgb

        booster = xgb.train({"objective": "binary:logistic", "tree_method": "hist", "verbosity": 0},
                            xgb.DMatrix(np.zeros((2, 1)), np.array([0, 1])), 1)
        keys: set[str] = set(cls._ALIASES) | {"eval_metric"} | set(xgb.get_config())

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                keys.update(node)
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(json.loads(booster.save_config()))
        return sorted(keys)

    @classmethod
    def unused_params(cls, params: dict[str, Any]) -> list[str]:
        """Parameter names XGBoost reports as unused (misspelt or meaningless) after one round."""
        import xgboost as xgb

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                xgb.train({**params, "objective": "binary:logistic", "verbosity": 1},
                          xgb.DMatrix(np.zeros((2, 1)), np.array([0, 1])), 1)
            except xgb.core.XGBoostError:
                return []  # bad values are reported, with the parameters, when the fold trains
        found = re.search(r"Parameters: \{(.*?)\} are not used", " ".join(str(w.message) for w in caught), re.S)
        return re.findall(r'"([^"]+)"', found.group(1)) if found else []

    def _train_params(self) -> dict[str, Any]:
        params = {**self.params, "seed": self.seed, "nthread": self.n_jobs}
        if self.n_classes > 2:
            params.update(objective="multi:softprob", num_class=self.n_classes)
        else:
            params.update(objective="binary:logistic")
        return params

    def _matrix(self, X: pd.DataFrame, y: np.ndarray | None = None, margin: np.ndarray | None = None):
        import xgboost as xgb

        return xgb.DMatrix(X, y, base_margin=margin, enable_categorical=True, nthread=self.n_jobs)

    def _fit(self, X, y, X_valid, y_valid, margin=None, margin_valid=None):
        import xgboost as xgb

        stopping = self.early_stopping_rounds if X_valid is not None and self.early_stopping_rounds else None
        boost = self._boost_local if self.client is None else self._boost_dask
        try:
            booster, history = boost(X, y, X_valid if stopping else None, y_valid, stopping, margin, margin_valid)
        except xgb.core.XGBoostError as exc:
            raise self._error(exc) from None
        kept = booster.best_iteration + 1 if stopping else booster.num_boosted_rounds()
        # Keep only the rounds used, so the saved file predicts exactly what the OOF holds.
        self.booster_ = booster[:kept]
        self.best_iteration_ = kept
        self.history_ = pd.DataFrame(history.get("valid", {}))

    def _boost_local(self, X, y, X_valid, y_valid, stopping: int | None, margin=None, margin_valid=None):
        import xgboost as xgb

        history: dict = {}
        evals = [] if X_valid is None else [(self._matrix(X_valid, y_valid, margin_valid), "valid")]
        booster = xgb.train(self._train_params(), self._matrix(X, y, margin), self.num_boost_round, evals=evals,
                            early_stopping_rounds=stopping, evals_result=history, verbose_eval=False)
        return booster, history

    def _boost_dask(self, X, y, X_valid, y_valid, stopping: int | None, margin=None, margin_valid=None):
        import xgboost.dask as dxgb

        def matrix(X_part, y_part):
            return dxgb.DaskDMatrix(self.client, *dask_frames(self.client, X_part, y_part), enable_categorical=True)

        # Each worker boosts with its own thread count; an nthread parameter would override it on every worker.
        params = {k: v for k, v in self._train_params().items() if k != "nthread"}
        evals = [] if X_valid is None else [(matrix(X_valid, y_valid), "valid")]
        out = dxgb.train(self.client, params, matrix(X, y), self.num_boost_round, evals=evals,
                         early_stopping_rounds=stopping, verbose_eval=False)
        return out["booster"], out["history"]

    def predict_proba(self, X, margin=None):
        self._check()
        # base_margin replaces base_score, so a model boosted from a margin predicts from the same margin
        return self.booster_.predict(self._matrix(X, margin=margin))

    def feature_gain(self):
        self._check()
        gain = self.booster_.get_score(importance_type="total_gain")
        return pd.Series({f: float(gain.get(f, 0.0)) for f in self.booster_.feature_names}, dtype=float)

    def save(self, path):
        from melanet.io import write_bytes

        self._check()
        # save_raw, not save_model: save_model picks its format from the (temporary) file name.
        write_bytes(path, bytes(self.booster_.save_raw("json")))

    @classmethod
    def load(cls, path, n_classes, n_jobs=1):
        import xgboost as xgb

        model = cls({}, n_classes=n_classes, n_jobs=n_jobs)
        model.booster_ = xgb.Booster()
        model.booster_.load_model(str(path))
        model.booster_.set_param({"nthread": n_jobs})
        model.best_iteration_ = model.booster_.num_boosted_rounds()
        return model

    @staticmethod
    def suggest(trial):
        return {
            "eta": trial.suggest_float("eta", 0.01, 0.2, log=True),
            "max_depth": trial.suggest_int("max_depth", 3, 10),
            "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 50.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
            "lambda": trial.suggest_float("lambda", 1e-3, 10.0, log=True),
        }


ENGINES: dict[str, type[TreeModel]] = {m.name: m for m in (LightGBMModel, XGBoostModel)}
# Where boosting runs: in this process, or on a Dask cluster through the engine's Dask interface.
COMPUTE_BACKENDS = ("local", "dask")


def get_engine(name: str) -> type[TreeModel]:
    """The tree model class registered under ``name`` (``lightgbm``, ``xgboost``)."""
    if name not in ENGINES:
        raise unknown_choice("GBDT engine", name, ENGINES)
    return ENGINES[name]


# --------------------------------------------------------------------------- config


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
    engine: str = Field("lightgbm", description="lightgbm or xgboost.")
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
    n_jobs: int = Field(0, ge=0, description="Threads per model (0 = all available cores).")
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
    with_oof_scale: str = Field("rank", description="How image-model scores enter: rank (percentile among the "
                                                    "producing fold model's OOF scores), logit (fold-standardised "
                                                    "logit) or raw; see melanet/train/stacking.py.")
    with_oof_mode: str = Field("offset", description="offset: boost from a logistic fit of the image-model "
                                                     "scores (the trees learn corrections; binary targets); "
                                                     "feature: the scores are only features. "
                                                     "See melanet/train/offset.py.")
    tune: int = Field(0, ge=0, description="Optuna trials over the main hyper-parameters (0 = off).")
    exclude: Path | None = Field(None, description="CSV with image_id of rows not to train on (still predicted).")
    track: str = Field("none", description="Experiment tracking: none, mlflow or tensorboard.")
    track_uri: str | None = Field(None, description="MLflow tracking URI.")
    report: bool = Field(True, description="Write report.html (as `melanet report`) after training.")
    overwrite: bool = Field(False, description="Replace another run found in out_dir (otherwise refused).")

    @field_validator("positive_class", mode="before")
    @classmethod
    def _class_as_text(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(str(unknown_choice("GBDT engine", value, ENGINES)))
        return value

    @field_validator("with_oof_scale")
    @classmethod
    def _known_scale(cls, value: str) -> str:
        from melanet.train.stacking import SCALES

        if value not in SCALES:
            raise ValueError(str(unknown_choice("with_oof_scale", value, SCALES)))
        return value

    @field_validator("with_oof_mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        from melanet.train.offset import MODES

        if value not in MODES:
            raise ValueError(str(unknown_choice("with_oof_mode", value, MODES)))
        return value

    @field_validator("track")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(str(unknown_choice("tracking backend", value, BACKENDS)))
        return value

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


def check_param_names(model: type[TreeModel], params: dict[str, Any]) -> None:
    """Raise ValueError naming the first parameter ``model``'s engine does not know, with a hint."""
    known = model.known_params()
    unknown = [k for k in params if k not in known]
    if model is XGBoostModel and not unknown:
        unknown = model.unused_params(params)
    if unknown:
        raise ValueError(f"unknown {model.name} parameter {unknown[0]!r}{did_you_mean(unknown[0], known)}; "
                         f"see the {model.name} parameter documentation")


def engine_params(cfg: GBDTConfig) -> dict[str, Any]:
    """The selected engine's parameters (defaults merged with the config's)."""
    return dict(getattr(cfg, cfg.engine))


# Keys that do not change what a run computes: a resumed run may differ in them (see melanet.runs).
_OPERATIONAL = {"data_dir", "out_dir", "track", "track_uri", "report", "n_jobs", "scheduler", "dask_workers",
                "overwrite", "exclude", "with_oof"}


def identity(cfg: GBDTConfig, with_oof_ids: list[str]) -> tuple[str, dict]:
    """The run id of ``cfg``: its comparable settings, the cohort's and exclude list's bytes, the input runs' ids."""
    return run_identity("gbdt", comparable_config(cfg.model_dump(mode="json"), _OPERATIONAL), {
        "cohort": fingerprint(Path(cfg.data_dir) / "cohort.parquet"), "exclude": fingerprint(cfg.exclude),
        "with_oof": with_oof_ids})


def check_engine_params(cfg: GBDTConfig, params: dict[str, Any], spec: TargetSpec, X: pd.DataFrame,
                        y: np.ndarray) -> None:
    """Boost one round on a few rows in this process, so that the engine rejects bad parameter values
    (``num_leaves: -3``) with a ConfigError before the run folder is touched, not in fold 0."""
    rows = np.arange(min(len(X), 64))
    get_engine(cfg.engine)(params, n_classes_of(spec), 1, None, cfg.seed, 1).fit(X.iloc[rows], y[rows])


def resolve_n_jobs(n_jobs: int) -> int:
    """Threads to use: ``n_jobs``, or every core this process may run on when 0."""
    if n_jobs > 0:
        return n_jobs
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def backend_client(cfg: GBDTConfig, n_jobs: int) -> Iterator[Any]:
    """The Dask client that fold models boost on (``backend: dask``), or None to boost in this process."""
    if cfg.backend == "local":
        yield None
        return
    from melanet.cluster import dask_client

    with dask_client(cfg.scheduler, cfg.dask_workers, n_jobs // cfg.dask_workers, needed_by="train-gbdt backend: dask") as client:
        yield client


def model_factory(cfg: GBDTConfig, params: dict[str, Any], spec: TargetSpec, n_jobs: int,
                  client: Any = None) -> Callable[[], TreeModel]:
    """A maker of unfitted fold models of ``cfg.engine`` with ``params`` (boosting on ``client`` if given);
    with ``with_oof_mode: offset`` they boost from the image-model scores (:mod:`melanet.train.offset`)."""
    make = functools.partial(get_engine(cfg.engine), params, n_classes_of(spec), cfg.num_boost_round,
                             cfg.early_stopping_rounds, cfg.seed, n_jobs, client)
    if cfg.with_oof and cfg.with_oof_mode == "offset":
        from melanet.train.offset import offset_factory

        return offset_factory(make, oof_feature_names(cfg.with_oof), cfg.with_oof_scale)
    return make


# --------------------------------------------------------------------------- features (pure)


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


# --------------------------------------------------------------------------- training core (pure)


def inner_split(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (fit, early-stopping) positions by patient, stratified on "any positive".

    A cheap permutation per stratum instead of StratifiedGroupKFold, whose
    per-patient Python loop costs seconds on 100,000 rows.
    """
    codes, _ = pd.factorize(pd.Series(groups))
    positive = np.bincount(codes, weights=(np.asarray(y) > 0).astype(float)) > 0
    rng = np.random.default_rng(seed)
    stop_patient = np.zeros(len(positive), bool)
    for stratum in (positive, ~positive):
        members = np.flatnonzero(stratum)
        stop_patient[rng.permutation(members)[:int(round(fraction * len(members)))]] = True
    stop = stop_patient[codes]
    if stop.all() or not stop.any():
        raise ArtifactError(f"cannot hold out {fraction:.0%} of {len(positive)} training patients for early "
                            f"stopping; set early_stopping_rounds: null or change inner_valid_fraction")
    return np.flatnonzero(~stop), np.flatnonzero(stop)


def refit_rounds(best_rounds: int, inner_valid_fraction: float) -> int:
    """Rounds for the refit on all training rows: the early-stopped count scaled up with the rows added back."""
    return max(1, int(round(best_rounds / (1.0 - inner_valid_fraction))))


def iter_fold_models(X: pd.DataFrame, y: np.ndarray, fold: np.ndarray, groups: np.ndarray, trainable: np.ndarray,
                     make_model: Callable[[], TreeModel], inner_valid_fraction: float,
                     seed: int, folds: Sequence[int] | None = None,
                     refit: bool = False, inner_splits: int = 1) -> Iterator[tuple[int, np.ndarray, TreeModel]]:
    """Fit one model per fold on the labelled rows ``X``; yield ``(k, validation mask, fitted model)``.

    Fold k's model trains on the other folds' ``trainable`` rows, early-stopped on a
    patient-grouped inner split of them; fold k's rows are only predicted. With
    ``refit`` the inner split only picks the round count: the model is boosted
    again on all of the fold's training rows for ``best / (1 - inner_valid_fraction)``
    rounds (more rows, proportionally more rounds), keeping the first fit's
    early-stopping history. With ``refit``, ``inner_splits`` > 1 takes the
    mean best round over that many inner splits (differently seeded), so the
    round count does not hinge on which ~150 patients one split held out.
    """
    for k in (folds if folds is not None else np.unique(fold)):
        val = fold == k
        train = np.flatnonzero(~val & trainable)
        model = make_model()
        if model.early_stopping_rounds:
            best, first, stopped_models = [], None, []
            for s in range(max(1, inner_splits) if refit else 1):
                fit, stop = inner_split(y[train], groups[train], inner_valid_fraction, seed + int(k) + 1000 * s)
                fit, stop = train[fit], train[stop]
                stopped = make_model().fit(X.iloc[fit], y[fit], X.iloc[stop], y[stop])
                best.append(stopped.best_iteration_)
                stopped_models.append(stopped)
                first = stopped if first is None else first
            if refit:
                # a model that can start from no trees at all (offset mode) picks its own count from all splits
                rounds = (first.choose_rounds(stopped_models) if hasattr(first, "choose_rounds")
                          else int(round(float(np.mean(best)))))
                model = first.with_rounds(refit_rounds(rounds, inner_valid_fraction)).fit(X.iloc[train], y[train])
                model.history_, model.n_early_stopping_ = first.history_, first.n_early_stopping_
                model.inner_best_rounds_ = best
            else:
                model = first
        else:
            model.fit(X.iloc[train], y[train])
        yield int(k), val, model


def class_prob(prob: np.ndarray, spec: TargetSpec) -> np.ndarray:
    """Model output in the run's shape: (n,) binary, (n, n_classes) multiclass (also for 2 classes)."""
    prob = np.asarray(prob, dtype=float)
    if spec.is_binary:
        return prob
    if prob.ndim == 1:
        return np.column_stack([1.0 - prob, prob])
    return prob / prob.sum(axis=1, keepdims=True)  # XGBoost's float32 softmax sums to 1 only within ~1e-7


def n_classes_of(spec: TargetSpec) -> int:
    return 2 if spec.is_binary else len(spec.classes)


# --------------------------------------------------------------------------- tuning


def tune_params(X: pd.DataFrame, y: np.ndarray, rows: pd.DataFrame, groups: np.ndarray, trainable: np.ndarray,
                spec: TargetSpec, cfg: GBDTConfig, n_jobs: int, client: Any = None) -> tuple[dict[str, Any], Any]:
    """Optuna (TPE, seeded) over the engine's main hyper-parameters; objective = OOF primary metric.

    Trials run one after another; with a Dask ``client`` each fold model of a trial boosts on the cluster.
    """
    optuna = require("optuna", "train-gbdt --tune")

    engine = get_engine(cfg.engine)
    base = engine_params(cfg)
    fold = rows["fold"].to_numpy()
    primary = "auc" if spec.score_column else "macro_auc"  # as runs.evaluate names it

    def objective(trial: Any) -> float:
        make = model_factory(cfg, {**base, **engine.suggest(trial)}, spec, n_jobs, client)
        oof = np.zeros((len(rows), len(spec.pred_columns)))
        for _, val, model in iter_fold_models(X, y, fold, groups, trainable, make, cfg.inner_valid_fraction, cfg.seed,
                                              refit=cfg.refit, inner_splits=cfg.inner_splits):
            oof[val] = class_prob(model.predict_proba(X.iloc[np.flatnonzero(val)]), spec).reshape(val.sum(), -1)
        return float(evaluate(predictions_frame(rows, oof, spec), spec)["overall"][primary])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.optimize(objective, n_trials=cfg.tune)
    return {**base, **study.best_params}, study


# --------------------------------------------------------------------------- stage runner


def resolve_small_data(cfg: GBDTConfig, n_rows: int) -> tuple[GBDTConfig, list[str]]:
    """``cfg`` with the small-data settings applied when ``n_rows`` labelled training rows are few.

    Returns the resolved config (``small_data.applied`` set) and one line per
    changed setting, for the console and the record.
    """
    from melanet.train import small_data

    sd = cfg.small_data
    applied = sd.applied if sd.applied is not None else (n_rows < sd.max_rows)
    if not applied:
        return cfg.model_copy(update={"small_data": sd.model_copy(update={"applied": False})}), []
    engine = get_engine(cfg.engine)
    params, changed = small_data.resolve(engine_params(cfg), engine.defaults, engine.canonical,
                                         small_data.fit_to_rows(getattr(sd, cfg.engine), n_rows))
    lines = [f"{cfg.engine}.{k}: {old} -> {new}" for k, (old, new) in changed.items()]
    update: dict[str, Any] = {cfg.engine: params, "small_data": sd.model_copy(update={"applied": True})}
    if cfg.inner_splits == 1 and sd.inner_splits > 1 and cfg.early_stopping_rounds and cfg.refit:
        update["inner_splits"] = sd.inner_splits
        lines.append(f"inner_splits: 1 -> {sd.inner_splits} (round count = mean best round, then refit)")
    return cfg.model_copy(update=update), lines


def monotone_params(cfg: GBDTConfig, params: dict[str, Any], columns: list[str],
                    score_columns: list[str]) -> dict[str, Any]:
    """``params`` with a non-decreasing constraint on each image-model score column (``with_oof_monotone``)."""
    if not (cfg.with_oof_monotone and score_columns):
        return params
    signs = [1 if c in score_columns else 0 for c in columns]
    if cfg.engine == "xgboost":
        return {**params, "monotone_constraints": "(" + ",".join(map(str, signs)) + ")"}
    return {**params, "monotone_constraints": signs}


def run(cfg: GBDTConfig, resume: bool = False) -> dict:
    """Train one model per fold on ``cfg.data_dir``'s cohort; write ``cfg.out_dir``; return its metrics.

    ``resume`` keeps the folds an interrupted run of the same settings and data finished.
    """
    started = time.perf_counter()
    check_out_dir(cfg.out_dir)
    engine = get_engine(cfg.engine)
    n_jobs = resolve_n_jobs(cfg.n_jobs)
    cohort = read_cohort(cfg.data_dir)
    labelled = labelled_mask(cohort, cfg.target)
    spec = resolve_target(cohort.loc[labelled, cfg.target], cfg.target, cfg.positive_class, cfg.target_type)
    excluded = read_exclude(cfg.exclude, cohort)
    extra, oof_scaling = (load_oof_features(cohort, labelled, cfg.with_oof, cfg.with_oof_scale) if cfg.with_oof
                          else (None, {}))
    X_all = feature_table(cohort, cfg.features, extra, cfg.with_oof_context, cfg.target)
    schema = feature_schema(X_all)
    X_all = apply_schema(X_all, schema)  # the exact encoding predict() will apply to new rows

    rows, test_rows = cohort.loc[labelled].reset_index(drop=True), cohort.loc[~labelled].reset_index(drop=True)
    X, X_test = X_all.loc[labelled].reset_index(drop=True), X_all.loc[~labelled].reset_index(drop=True)
    y = spec.encode(rows[cfg.target])
    groups = rows["patient_id"].astype(str).to_numpy()
    trainable = ~excluded[labelled]
    folds = sorted(int(k) for k in rows["fold"].unique())
    if len(folds) < 2:
        raise ArtifactError(f"{cfg.data_dir}: the labelled rows of cohort.parquet span {len(folds)} fold(s); "
                            f"re-run `melanet ingest` with --folds 5")
    check_engine_params(cfg, engine_params(cfg), spec, X, y)

    cfg, small_lines = resolve_small_data(cfg, int(trainable.sum()))
    mode, mode_line = resolve_oof_mode(cfg.with_oof_mode, cfg.with_oof, spec.is_binary)
    if mode_line:
        cfg = cfg.model_copy(update={"with_oof_mode": mode})
        console.print(f"train-gbdt: {mode_line}", highlight=False)
    if small_lines:
        console.print(f"train-gbdt: {int(trainable.sum())} labelled training rows < small_data.max_rows "
                      f"{cfg.small_data.max_rows}: small-data settings -> " + "; ".join(small_lines), highlight=False)
    out = RunDir(cfg.out_dir, folds).begin(
        "gbdt", identity(cfg, [check_run(r).run_id for r in cfg.with_oof]),
        f"melanet train-gbdt --data {cfg.data_dir} --out {cfg.out_dir} --config {Path(cfg.out_dir) / 'config.yaml'} "
        f"--resume", overwrite=cfg.overwrite)
    todo = [k for k in folds if not (resume and out.is_done(k))]
    if len(todo) < len(folds):
        console.print(f"resume: fold(s) {[k for k in folds if k not in todo]} already done, skipping")
    write_text(out.path / "config.yaml", config_to_yaml(cfg))
    tracker = start_tracking(cfg.track, out.path, cfg.track_uri, params=cfg.model_dump(mode="json"))
    with contextlib.ExitStack() as stack:
        stack.callback(tracker.close)
        client = stack.enter_context(backend_client(cfg, n_jobs))
        params = engine_params(cfg)
        if cfg.tune:
            params, study = tune_params(X, y, rows, groups, trainable, spec, cfg, n_jobs, client)
            cfg = cfg.model_copy(update={cfg.engine: params})
            write_json(out.path / "tune.json", {"engine": cfg.engine, "trials": cfg.tune,
                                                "metric": "auc" if spec.score_column else "macro_auc",
                                                "best_value": study.best_value, "best_params": study.best_params})
            write_csv(out.path / "tune_trials.csv", study.trials_dataframe())
            write_text(out.path / "config.yaml", config_to_yaml(cfg))
        write_json(out.path / FEATURES_FILE, {**schema, "classes": spec.classes, "folds": folds,
                                              "oof_columns": [] if extra is None else list(extra.columns),
                                              "oof_scaling": oof_scaling})
        make = model_factory(cfg, monotone_params(cfg, params, list(X.columns),
                                                  [] if extra is None else list(extra.columns)),
                             spec, n_jobs, client)
        gains: dict[int, pd.Series] = {k: engine.load(out.fold_dir(k) / engine.model_file, n_classes_of(spec),
                                                      n_jobs).feature_gain() for k in folds if k not in todo}
        fold_start = time.perf_counter()
        for k, val, model in iter_fold_models(X, y, rows["fold"].to_numpy(), groups, trainable, make,
                                              cfg.inner_valid_fraction, cfg.seed, todo, refit=cfg.refit,
                                              inner_splits=cfg.inner_splits):
            out.unmark_done(k)
            idx = np.flatnonzero(val)
            oof_k = predictions_frame(rows.iloc[idx], class_prob(model.predict_proba(X.iloc[idx]), spec), spec)
            test_k = (predictions_frame(test_rows, class_prob(model.predict_proba(X_test), spec), spec)
                      if len(test_rows) else oof_k.iloc[:0])
            model.save(out.fold_dir(k) / engine.model_file)
            write_csv(out.fold_dir(k) / "history.csv", history_table(model.history_))
            out.write_fold_predictions(k, oof_k, test_k)
            out.mark_done(k, {"engine": engine.name, "backend": cfg.backend, "rounds": int(model.best_iteration_),
                              "n_train": model.n_train_, "n_early_stopping": model.n_early_stopping_,
                              "n_excluded": int((~val & ~trainable).sum()),
                              "inner_best_rounds": [int(r) for r in getattr(model, "inner_best_rounds_", [])],
                              "seconds": round(time.perf_counter() - fold_start, 3)},
                          files=[engine.model_file, "history.csv", *getattr(model, "saved_files", [])])
            fold_start = time.perf_counter()
            gains[k] = model.feature_gain()
        _, _, metrics = merge_folds(out, folds, spec)
        for k, fold_metrics in metrics["per_fold"].items():
            tracker.log_metrics({"fold": fold_metrics}, step=int(k))
        importance = importance_table(dict(sorted(gains.items())))
        write_csv(out.path / "feature_importance.csv", importance)
        _importance_plot(importance, out.path / "feature_importance.png", engine.name)
        # figures are not recorded: `melanet report` redraws them
        out.complete(["config.yaml", FEATURES_FILE, "oof.parquet", "test.parquet", "metrics.json",
                      "feature_importance.csv"]
                     + (["tune.json", "tune_trials.csv"] if cfg.tune else []))
        tracker.log_metrics({"overall": metrics["overall"]})
        for name in ("config.yaml", "metrics.json", "oof.parquet", "test.parquet", "feature_importance.csv",
                     "feature_importance.png"):
            tracker.log_artifact(out.path / name)
    where = " on Dask" if cfg.backend == "dask" else ""
    print_summary(metrics, f"train-gbdt ({engine.name}{where}, {len(X.columns)} features) "
                           f"in {time.perf_counter() - started:.1f}s -> {out.path}")
    if cfg.report:
        _report(out.path)
    return metrics


def read_yaml_key(path: Path, key: str, default: Any) -> Any:
    """Top-level ``key`` of the YAML file ``path`` as written, or ``default`` when the file lacks it."""
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get(key, default)


def history_table(history: pd.DataFrame) -> pd.DataFrame:
    """Early-stopping metric per boosting round, in the columns ``melanet report`` plots.

    ``epoch`` is the boosting round (1-based); log losses become ``val_loss``,
    AUC ``val_auc``, anything else ``val_<metric>``.
    """
    names = {"binary_logloss": "val_loss", "multi_logloss": "val_loss", "logloss": "val_loss",
             "mlogloss": "val_loss", "auc": "val_auc"}
    table = history.rename(columns=lambda c: names.get(c, f"val_{c}"))
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    return table


def importance_table(gains: dict[int, pd.Series]) -> pd.DataFrame:
    """``feature, gain, gain_std, gain_fold_<k>...``: total gain per fold and its mean, largest first."""
    per_fold = pd.DataFrame({f"gain_fold_{k}": g for k, g in gains.items()}).fillna(0.0)
    table = pd.DataFrame({"gain": per_fold.mean(axis=1), "gain_std": per_fold.std(axis=1, ddof=0)})
    table = pd.concat([table, per_fold], axis=1).rename_axis("feature").reset_index()
    return table.sort_values(["gain", "feature"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _importance_plot(importance: pd.DataFrame, path: Path, engine: str, top: int = 30) -> None:
    from melanet.plots import barh_plot, save_png

    head = importance.head(top)
    save_png(barh_plot(dict(zip(head["feature"], head["gain"])), f"{engine} feature importance (top {len(head)})",
                       "total gain, mean over folds"), path)


def print_summary(metrics: dict, title: str) -> None:
    """Rich table of per-fold and overall metrics."""
    from rich.table import Table

    names = (["n", "auc", "pauc80", "ap", "log_loss", "brier"] if metrics["task"] == "binary" else
             ["n", "macro_auc", "balanced_accuracy", "macro_f1"] + (["auc", "pauc80", "ap"] if
                                                                    metrics["positive_class"] else []))
    table = Table(title=title, title_justify="left")
    table.add_column("fold")
    for name in names:  # short, spaced headers wrap, so a multiclass table fits 80 columns
        header = {"balanced_accuracy": "bal acc"}.get(name, name.replace("_", " "))
        table.add_column(header, justify="right")

    def cells(values: dict) -> list[str]:
        return [str(values[n]) if n == "n" else f"{values.get(n, float('nan')):.3f}" for n in names]

    for k, values in metrics["per_fold"].items():
        table.add_row(k, *cells(values))
    table.add_row("all", *cells(metrics["overall"]), style="bold")
    console.print(table)


def _report(run_dir: Path) -> None:
    try:  # written concurrently by another stage; the run is complete without it
        from melanet import report
    except ImportError:
        return
    report.run(run_dir)


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
    cfg = config_from_run(GBDTConfig, record.verify("config.yaml").parent)
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
    def load(k: int) -> TreeModel:
        path = record.verify(f"fold_{k}/{engine.model_file}")
        # a run from before with_oof_mode existed stacked its scores as features only
        if columns and read_yaml_key(path.parent.parent / "config.yaml", "with_oof_mode", "feature") == "offset":
            from melanet.train.offset import OFFSET_FILE, OffsetModel

            record.verify(f"fold_{k}/{OFFSET_FILE}")
            return OffsetModel.load(engine, path, n_classes_of(spec), n_jobs)
        return engine.load(path, n_classes_of(spec), n_jobs)

    probs = {int(k): class_prob(load(k).predict_proba(X), spec) for k in info["folds"]}
    return probs if per_fold else np.mean(list(probs.values()), axis=0)
