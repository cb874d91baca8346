"""Engine parameters: name checks, the selected engine's set, value checks, threads, small-data and
monotone adjustments, and the maker of unfitted fold models."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from melanet.errors import did_you_mean
from melanet.runs import TargetSpec
from melanet.runtime import available_cores
from melanet.train.gbdt.engines import get_engine, n_classes_of
from melanet.train.gbdt.model import TreeModel
from melanet.train.gbdt.xgboost_model import XGBoostModel

if TYPE_CHECKING:
    from melanet.train.gbdt.config import GBDTConfig


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


def check_engine_params(cfg: GBDTConfig, params: dict[str, Any], spec: TargetSpec, X: pd.DataFrame,
                        y: np.ndarray) -> None:
    """Boost one round on a few rows in this process, so that the engine rejects bad parameter values
    (``num_leaves: -3``) with a ConfigError before the run folder is touched, not in fold 0."""
    rows = np.arange(min(len(X), 64))
    get_engine(cfg.engine)(params, n_classes_of(spec), 1, None, cfg.seed, 1).fit(X.iloc[rows], y[rows])


#: Below this many training rows ``n_jobs: 0`` boosts on one thread (see :func:`resolve_n_jobs`).
SINGLE_THREAD_ROWS = 20_000


def resolve_n_jobs(n_jobs: int, rows: int | None = None) -> int:
    """Threads to use: ``n_jobs``; when 0, one thread under ``SINGLE_THREAD_ROWS`` training rows, else every
    core this process may run on.

    Why one: a boosting round on a few thousand rows is shorter than waking
    sleeping OpenMP threads (melanet sets ``OMP_WAIT_POLICY=PASSIVE``,
    :mod:`melanet.runtime`). Measured on 2 cores, same predictions bit for bit:
    the demo's metadata GBDT (920 rows) 34.6 s -> 11.1 s, the 1,000-patient
    cohort (3,038 rows) 79 s -> 33 s; plain LightGBM, 300 rounds on 130
    features: 1 thread 0.68 / 2.37 / 11.0 s against 2 threads 1.45 / 2.35 /
    7.1 s at 3k / 20k / 100k rows.
    """
    if n_jobs > 0:
        return n_jobs
    if rows is not None and rows < SINGLE_THREAD_ROWS:
        return 1
    return available_cores()


def model_factory(cfg: GBDTConfig, params: dict[str, Any], spec: TargetSpec, n_jobs: int,
                  client: Any = None) -> Callable[[], TreeModel]:
    """A maker of unfitted fold models of ``cfg.engine`` with ``params`` (boosting on ``client`` if given);
    with ``with_oof_mode: offset`` they boost from the image-model scores (:mod:`melanet.train.offset`)."""
    make = functools.partial(get_engine(cfg.engine), params, n_classes_of(spec), cfg.num_boost_round,
                             cfg.early_stopping_rounds, cfg.seed, n_jobs, client)
    if cfg.with_oof and cfg.with_oof_mode == "offset":
        # features sits below params in the package's layers; its name rule is pure and imports nothing back
        from melanet.train.gbdt.features import oof_feature_names
        from melanet.train.offset import offset_factory

        return offset_factory(make, oof_feature_names(cfg.with_oof), cfg.with_oof_scale)
    return make


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
