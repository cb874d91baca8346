"""XGBoost as a :class:`~melanet.train.gbdt.model.TreeModel` (``engine: xgboost``)."""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from melanet.train.gbdt.dask import dask_frames
from melanet.train.gbdt.model import TreeModel


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
        params = {**(self.params or {}), "seed": self.seed, "nthread": self.n_jobs}
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

    def _predict_proba(self, X, margin=None):
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

        model = cls(n_classes=n_classes, n_jobs=n_jobs)
        model.booster_ = xgb.Booster()
        model.booster_.load_model(str(path))
        model.booster_.set_param({"nthread": n_jobs})
        model.best_iteration_ = model.booster_.num_boosted_rounds()
        model._set_features(model.booster_.num_features(), model.booster_.feature_names)
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
