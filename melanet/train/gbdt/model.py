"""``TreeModel``: one fold's booster behind one interface, whichever engine boosts it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sklearn.base import BaseEstimator, clone
from sklearn.utils import Tags
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted

from melanet.errors import ConfigError


class TreeModel(BaseEstimator):
    """One fold's booster as a scikit-learn estimator: settings in ``__init__`` (stored as given, no work),
    ``fit`` returns self, learned state in ``booster_``, ``best_iteration_`` (rounds kept), ``history_``
    (early-stopping metric per round), ``n_train_`` / ``n_early_stopping_`` (rows boosted on / watched) and
    ``n_features_in_`` / ``feature_names_in_``. ``get_params`` / ``set_params`` / :func:`sklearn.base.clone`
    work as for any estimator; using a model before ``fit`` (or ``load``) raises ``NotFittedError``.

    ``y`` holds class codes 0..n_classes-1. ``n_classes`` 2 means a binary objective and ``predict_proba`` of
    shape (n,) (the positive class only, as the run's tables store it, not scikit-learn's (n, 2)); more means
    softmax and (n, n_classes). That shape is why this is a plain estimator, not a ``ClassifierMixin``.

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

    def __init__(self, params: dict[str, Any] | None = None, n_classes: int = 2, num_boost_round: int = 1000,
                 early_stopping_rounds: int | None = 100, seed: int = 0, n_jobs: int = 1, client: Any = None):
        self.params = params  # engine parameters over the engine's own defaults; None = {}
        self.n_classes = n_classes
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.n_jobs = n_jobs
        self.client = client

    def __sklearn_clone__(self) -> "TreeModel":
        # As sklearn.base.clone, except that the Dask client is shared, not deep-copied: it is a connection
        # to a cluster, not a setting.
        return type(self)(**{key: value if key == "client" else clone(value, safe=False)
                             for key, value in self.get_params(deep=False).items()})

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing values stay missing: both engines route them natively
        tags.input_tags.categorical = True  # pandas categoricals are split on natively
        tags.target_tags.required = True
        return tags

    def _check(self) -> None:
        check_is_fitted(self, "booster_", msg=f"This {type(self).__name__} is not fitted: call fit() (or load a "
                                              f"saved model) before predict_proba, feature_gain or save")

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
        X, y = self._check_rows(X, y, fitting=True)
        if X_valid is not None:
            X_valid, y_valid = self._check_rows(X_valid, y_valid, fitting=True)
        self._fit(X, y, X_valid, y_valid, margin, margin_valid)
        self.n_train_ = len(X)
        self.n_early_stopping_ = 0 if X_valid is None else len(X_valid)
        self._set_features(X.shape[1], list(X.columns) if isinstance(X, pd.DataFrame) else None)
        return self

    def _check_rows(self, X: Any, y: Any = None, fitting: bool = False) -> tuple[Any, Any]:
        """``X`` (and ``y``) checked before an engine sees them, so a wrong input is named as such and is not
        reported as "rejected a parameter". A pandas table passes unchanged (its categoricals are features);
        anything else goes through :func:`sklearn.utils.check_array` (dense, numeric, missing values allowed)."""
        if isinstance(X, pd.DataFrame):
            if X.shape[1] == 0 or len(X) == 0:
                what = f"0 feature(s) (shape={X.shape})" if X.shape[1] == 0 else f"0 sample(s) (shape={X.shape})"
                raise ValueError(f"Found array with {what} while a minimum of 1 is required by {type(self).__name__}.")
        else:
            X = check_array(X, accept_sparse=False, ensure_all_finite="allow-nan", estimator=self)
        if not fitting:
            return X, y
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        codes = np.asarray(y)
        check_consistent_length(X, codes)
        wrong = ~np.isin(codes, np.arange(self.n_classes)) if codes.ndim == 1 else np.ones(1, bool)
        if wrong.any():
            found = codes.shape if codes.ndim != 1 else repr(codes[np.flatnonzero(wrong)[0]])
            raise ValueError(f"{type(self).__name__}: y must be a 1-d array of class codes 0..{self.n_classes - 1} "
                             f"(n_classes={self.n_classes}); found {found}")
        return X, y

    def _set_features(self, n_features: int, names: list[str] | None) -> None:
        self.n_features_in_ = int(n_features)
        if names is not None and all(isinstance(c, str) for c in names):
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def predict_proba(self, X: pd.DataFrame, margin: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of ``X``'s rows from the kept rounds: (n,) binary, (n, n_classes) multiclass.

        ``margin``: the rows' starting log-odds, for a model fitted with one (see :meth:`fit`)."""
        self._check()
        X, _ = self._check_rows(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return self._predict_proba(X, margin)

    # Subclasses implement these.
    def _fit(self, X: pd.DataFrame, y: np.ndarray, X_valid: pd.DataFrame | None,
             y_valid: np.ndarray | None, margin: np.ndarray | None, margin_valid: np.ndarray | None) -> None:
        raise NotImplementedError

    def _predict_proba(self, X: pd.DataFrame, margin: np.ndarray | None = None) -> np.ndarray:
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
