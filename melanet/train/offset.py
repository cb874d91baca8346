"""Boosting from the image model's score: ``train-gbdt --with-oof`` with ``with_oof_mode: offset``.

As a plain feature (``with_oof_mode: feature``) a strong image score has to be
re-learnt by the trees from a few hundred rows: a depth-3 tree turns it into
a handful of steps, and every round spent on it is a round not spent on the
metadata, so the stack can end *below* the image model it was given.

``offset`` mode starts boosting from the score instead. Each fold model first
fits a logistic regression of the label on the score (the offset
``b + sum_i a_i * x_i``, where ``x_i`` is image-model score ``i`` on the logit
scale, see :func:`offset_inputs`) and hands it to the engine as the initial
margin (LightGBM ``init_score``, XGBoost ``base_margin``). The trees then learn
only corrections from metadata, patient context and the score's own context.

How many rounds of corrections: early stopping on log loss keeps rounds that
improve calibration but not ranking (on two synthetic cohorts it kept 5-55
rounds that cost 0.01 AUC), so in offset mode the trees are early-stopped on
AUC, and the round count is the best of 0, 1, 2, 4, 8, ... rounds on the mean
AUC curve over the inner splits, *including round 0* (the offset alone). When the corrections do
not help on held-out patients the count is 0 and the fold model is the
calibrated image score (boosted one round, at the learning rate, so that every
fold still has a booster file). Only doubling round counts are candidates,
and only up to the rounds at least half of the inner splits ran: the best of
every round count on 5 x ~190 held-out rows is the maximum of hundreds of
noisy values, and a round count that only one split reached rests on that
split alone; together they once picked 845 rounds that cost 0.02 AUC. (The
cost: on a cohort whose image model saw no metadata, 0.632 where the uncapped
rule reached 0.640; feature mode, 0.644, is the better choice there.)
Tried on five cohorts and dropped: every round count as a candidate (above),
a one-standard-error rule toward fewer rounds and requiring the gain over
round 0 to exceed one standard error (+0.005 where the trees do not help,
-0.02 to -0.03 where they do: on a cohort whose image model saw no metadata
they kept ~5 rounds where ~200 gained 0.02 AUC), the median curve (lower on
three of five).

Honesty: the regression is fitted on the rows the trees are fitted on. While
the inner split picks the round count it is fitted on the inner split's fit
rows only, so the early-stopping rows judge a model that has not seen them;
the refit on all training rows fits it again on them. Each fold model's
offset is stored beside its booster (``fold_<k>/offset.json``) and applied
identically at predict time.

Binary targets only: a multiclass run falls back to ``feature`` and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from melanet.errors import ArtifactError
from melanet.io import read_json, write_json

#: How image-model scores enter the GBDT (config key ``with_oof_mode``).
MODES = ("offset", "feature")
OFFSET_FILE = "offset.json"
# Percentiles (with_oof_scale: rank) are clipped to this distance from 0 and 1 before the logit: a new row beyond
# every OOF score of a fold model maps to percentile 0 or 1 exactly.
_PCT_EPS = 1e-3
_PROB_EPS = 1e-6
#: Engine parameter that names the early-stopping metric, per engine.
METRIC_KEY = {"lightgbm": "metric", "xgboost": "eval_metric"}


def offset_inputs(X: pd.DataFrame, columns: Sequence[str], scale: str) -> np.ndarray:
    """The score columns of the feature table ``X`` on the logit scale, shape (n, len(columns)).

    ``scale`` is the run's ``with_oof_scale``: ``rank`` percentiles go through
    the logit (clipped to [0.001, 0.999]), ``logit`` features are already
    fold-standardised logits, ``raw`` probabilities go through the logit.
    """
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise ArtifactError(f"the feature table lacks the image-model score column(s) {missing} the offset uses")
    Z = X[list(columns)].to_numpy(dtype=float)
    if scale == "rank":
        return logit(np.clip(Z, _PCT_EPS, 1 - _PCT_EPS))
    if scale == "raw":
        return logit(np.clip(Z, _PROB_EPS, 1 - _PROB_EPS))
    return Z


def fit_logistic(Z: np.ndarray, y: np.ndarray, l2: float = 1e-4, max_iter: int = 50) -> tuple[np.ndarray, float]:
    """``(coef, intercept)`` of a logistic regression of 0/1 ``y`` on ``Z`` (Newton steps, a tiny ridge on coef).

    A handful of columns and well-separated classes are the normal case, so a
    few Newton iterations converge; the ridge keeps a perfectly separating
    score from diverging.
    """
    Z, y = np.asarray(Z, dtype=float), np.asarray(y, dtype=float)
    A = np.column_stack([np.ones(len(Z)), Z])
    w = np.zeros(A.shape[1])
    prior = np.clip(y.mean(), _PROB_EPS, 1 - _PROB_EPS)
    w[0] = logit(prior)
    ridge = np.full(A.shape[1], l2 * len(Z))
    ridge[0] = 0.0
    for _ in range(max_iter):
        p = expit(A @ w)
        grad = A.T @ (p - y) + ridge * w
        hess = (A * (p * (1 - p))[:, None]).T @ A + np.diag(ridge + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w[1:], float(w[0])


class ScoreOffset:
    """``b + Z @ a`` on the logit scale, fitted by :func:`fit_logistic`; scikit-learn style (state in ``coef_``...).

    Missing scores (never in a melanet run: every row has one) take the
    training mean of their column, so the row gets the average offset.
    """

    def __init__(self, columns: Sequence[str], scale: str):
        self.columns = list(columns)
        self.scale = scale

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> ScoreOffset:
        Z = offset_inputs(X, self.columns, self.scale)
        self.fill_ = np.array([c[~np.isnan(c)].mean() if (~np.isnan(c)).any() else 0.0 for c in Z.T])
        self.coef_, self.intercept_ = fit_logistic(self._filled(Z), np.asarray(y) > 0)
        return self

    def _filled(self, Z: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(Z), self.fill_[None, :], Z)

    def margin(self, X: pd.DataFrame) -> np.ndarray:
        """Log-odds offset of each row of ``X``, shape (n,)."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("ScoreOffset is not fitted; call fit() first")
        return self.intercept_ + self._filled(offset_inputs(X, self.columns, self.scale)) @ self.coef_

    def state(self) -> dict[str, Any]:
        return {"columns": self.columns, "scale": self.scale, "coef": self.coef_.tolist(),
                "intercept": self.intercept_, "fill": self.fill_.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ScoreOffset:
        out = cls(state["columns"], state["scale"])
        out.coef_, out.intercept_ = np.asarray(state["coef"], dtype=float), float(state["intercept"])
        out.fill_ = np.asarray(state["fill"], dtype=float)
        return out


class OffsetModel:
    """A fold's tree model boosted from the image score's offset; the face ``train-gbdt`` uses for a TreeModel.

    ``make_tree`` makes the unfitted engine model (:class:`melanet.train.gbdt.TreeModel`);
    everything not defined here (``best_iteration_``, ``history_``,
    ``feature_gain``...) is the tree model's. ``offset_`` holds the fitted
    :class:`ScoreOffset`.
    """

    def __init__(self, make_tree: Callable[[], Any], columns: Sequence[str], scale: str, tree: Any = None):
        self.make_tree = make_tree
        self.columns = list(columns)
        self.scale = scale
        self.tree = make_tree() if tree is None else tree
        if tree is None and getattr(self.tree, "name", None) in METRIC_KEY:
            # early stopping (and the round curve) on AUC, the metric the stack is judged by
            self.tree.set_params(params={**(self.tree.params or {}), METRIC_KEY[self.tree.name]: "auc"})

    def __getattr__(self, name: str) -> Any:
        if name == "tree" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.tree, name)

    @property
    def early_stopping_rounds(self) -> int | None:
        return self.tree.early_stopping_rounds

    def fit(self, X: pd.DataFrame, y: np.ndarray, X_valid: pd.DataFrame | None = None,
            y_valid: np.ndarray | None = None) -> OffsetModel:
        """Fit the offset on ``X, y``, then boost from it (early-stopped on ``X_valid`` with the same offset)."""
        self.offset_ = ScoreOffset(self.columns, self.scale).fit(X, y)
        margin_valid = None if X_valid is None else self.offset_.margin(X_valid)
        self.tree.fit(X, y, X_valid, y_valid, margin=self.offset_.margin(X), margin_valid=margin_valid)
        if X_valid is not None:
            history = getattr(self.tree, "history_", pd.DataFrame())
            rounds = history["auc"].to_numpy(dtype=float) if "auc" in history.columns else np.array([])
            self.curve_ = np.r_[_auc(y_valid, margin_valid), rounds]
        return self

    @staticmethod
    def choose_rounds(stopped: Sequence[OffsetModel]) -> int:
        """Round count for the refit from early-stopped models of several inner splits (their ``curve_``)."""
        return best_round([m.curve_ for m in stopped if hasattr(m, "curve_")])

    def __sklearn_clone__(self) -> OffsetModel:
        """An unfitted copy with the same settings (:func:`sklearn.base.clone`; the refit clones, then sets
        ``num_boost_round``)."""
        from sklearn.base import clone

        return OffsetModel(self.make_tree, self.columns, self.scale, tree=clone(self.tree))

    def set_params(self, **params: Any) -> OffsetModel:
        """Set the tree model's settings (``num_boost_round=...``); returns self."""
        self.tree.set_params(**params)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "offset_"):
            raise RuntimeError("OffsetModel is not fitted; call fit() first")
        return self.tree.predict_proba(X, margin=self.offset_.margin(X))

    @property
    def saved_files(self) -> list[str]:
        """Files :meth:`save` writes beside the booster (recorded in the fold's DONE)."""
        return [OFFSET_FILE]

    def save(self, path: str | Path) -> None:
        """The booster to ``path`` and the offset to ``offset.json`` beside it."""
        self.tree.save(path)
        write_json(Path(path).parent / OFFSET_FILE, self.offset_.state())

    @classmethod
    def load(cls, engine: Any, path: str | Path, n_classes: int, n_jobs: int = 1) -> OffsetModel:
        """A saved fold model: ``engine.load(path)`` plus the ``offset.json`` beside it."""
        offset_path = Path(path).parent / OFFSET_FILE
        if not offset_path.is_file():
            raise ArtifactError(f"{offset_path} is missing: the run was trained with with_oof_mode: offset, and "
                                f"each fold model needs its offset; re-run train-gbdt into a new folder")
        tree = engine.load(path, n_classes, n_jobs)
        state = read_json(offset_path)
        model = cls(lambda: None, state["columns"], state["scale"], tree=tree)
        model.offset_ = ScoreOffset.from_state(state)
        return model


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y) > 0
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def best_round(curves: Sequence[np.ndarray]) -> int:
    """The round count among 0, 1, 2, 4, 8, ... with the best mean held-out AUC over inner splits.

    The fewest rounds on a tie. ``curves[s][r]`` is inner split ``s``'s
    early-stopping AUC after ``r`` rounds (``r = 0``: the offset alone). Each ran ``early_stopping_rounds``
    past its own best round; a curve that stopped sooner is held at its last
    value beyond that (cutting all to the shortest would cap every split at
    the round count of the split that gained least). Splits whose AUC is
    undefined (one class held out) are left out. Candidates stop at the
    median curve length, so that no round count rests on one split alone.
    """
    usable = [np.asarray(c, dtype=float) for c in curves if len(c) and np.all(np.isfinite(c))]
    if not usable:
        return 0
    n = max(len(c) for c in usable)
    mean = np.stack([np.pad(c, (0, n - len(c)), mode="edge") for c in usable]).mean(axis=0)
    reached = int(np.median([len(c) for c in usable]))  # rounds at least half of the splits ran
    grid = [0] + [2 ** i for i in range(int(np.log2(reached - 1)) + 1)] if reached > 1 else [0]
    return grid[int(np.argmax(mean[grid]))]


def offset_factory(make_tree: Callable[[], Any], columns: Sequence[str], scale: str) -> Callable[[], OffsetModel]:
    """A maker of unfitted :class:`OffsetModel` s around ``make_tree``'s models."""
    return lambda: OffsetModel(make_tree, columns, scale)


def resolve_mode(mode: str, with_oof: Sequence[Any], binary: bool) -> tuple[str, str | None]:
    """The mode a run uses, and a line to print when it differs from the configured one."""
    if mode == "offset" and with_oof and not binary:
        return "feature", ("with_oof_mode: offset -> feature (boosting from an image score needs a binary "
                           "target; this run is multiclass)")
    return mode, None
