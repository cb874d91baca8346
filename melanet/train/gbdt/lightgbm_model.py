"""LightGBM as a :class:`~melanet.train.gbdt.model.TreeModel` (``engine: lightgbm``)."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pandas as pd

from melanet.errors import ConfigError
from melanet.io import write_text
from melanet.train.gbdt.dask import dask_early_stopping_error, dask_frames
from melanet.train.gbdt.model import TreeModel


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
        params = {**(self.params or {}), "seed": self.seed, "num_threads": self.n_jobs}
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

    def _predict_proba(self, X, margin=None):
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

        model = cls(n_classes=n_classes, n_jobs=n_jobs)
        model.booster_ = lgb.Booster(model_file=str(path))
        model.best_iteration_ = model.booster_.current_iteration()
        model._set_features(model.booster_.num_feature(), model.booster_.feature_name())
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
