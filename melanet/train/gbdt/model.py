"""``TreeModel``: one fold's booster behind one interface, whichever engine boosts it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from melanet.errors import ConfigError


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
            y_valid: np.ndarray | None = None) -> "TreeModel":
        """Boost on ``X, y``; with ``X_valid, y_valid`` stop early on them. Returns self."""
        self._fit(X, y, X_valid, y_valid)
        self.n_train_ = len(X)
        self.n_early_stopping_ = 0 if X_valid is None else len(X_valid)
        return self

    # Subclasses implement these.
    def _fit(self, X: pd.DataFrame, y: np.ndarray, X_valid: pd.DataFrame | None,
             y_valid: np.ndarray | None) -> None:
        raise NotImplementedError

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
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
