"""The cross-validation core (pure): inner splits, fold models, refit round counts, tuning.

Leakage, and what guards against it here:

- Early stopping watches an inner, patient-grouped split of the training
  folds (:func:`inner_split`), never the validation fold whose predictions become the OOF.
- ``tune`` (:func:`tune_params`) picks hyper-parameters on the same folds' CV, so a tuned run's OOF
  metric is optimistic by the selection too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from melanet.errors import ArtifactError
from melanet.optional import require
from melanet.runs import TargetSpec, evaluate, predictions_frame
from melanet.train.gbdt.engines import get_engine
from melanet.train.gbdt.model import TreeModel
from melanet.train.gbdt.params import engine_params, model_factory

if TYPE_CHECKING:
    from melanet.train.gbdt.config import GBDTConfig


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
                model = clone(first).set_params(num_boost_round=refit_rounds(rounds, inner_valid_fraction),
                                                early_stopping_rounds=None).fit(X.iloc[train], y[train])
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
