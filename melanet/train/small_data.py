"""Small-data GBDT settings: what ``train-gbdt`` changes when the labelled rows are few.

With a few hundred to a few thousand labelled rows (a few dozen positives),
LightGBM's defaults (31 leaves, 20 rows per leaf, weak L2) fit noise: every
fold model carves the training folds into leaves of a handful of positives,
and the early-stopping round is chosen on an inner split of ~150 rows, whose
AUC curve is flat within noise, so the round count is close to random. Below
``small_data.max_rows`` labelled training rows the run therefore uses:

- shallow trees with large leaves and strong L2 (``small_data.lightgbm`` /
  ``small_data.xgboost``), applied to every engine parameter the config leaves
  at the engine default (a value the user set is kept);
- a lower learning rate, so the round count matters less;
- the round count averaged over ``small_data.inner_splits`` patient-grouped
  inner splits (then refit on all training rows), instead of one split.

What was applied is printed and written into the run's ``config.yaml``
(``small_data.applied: true`` and the resolved engine parameters), so a
re-run or ``predict`` reads the settings the run used.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from melanet.config import StageConfig

SMALL_LIGHTGBM = {"num_leaves": 7, "max_depth": 3, "min_data_in_leaf": 40, "lambda_l2": 10.0,
                  "learning_rate": 0.02, "feature_fraction": 0.7}
SMALL_XGBOOST = {"max_depth": 3, "min_child_weight": 5.0, "lambda": 10.0, "eta": 0.02, "colsample_bytree": 0.7}


class SmallDataConfig(StageConfig):
    """Settings ``train-gbdt`` applies when the labelled training rows are few (see this module's docstring)."""

    max_rows: int = Field(5000, ge=0, description="Apply below this many labelled rows (0 = never).")
    applied: bool | None = Field(None, description="Resolved by the run: whether these settings were used "
                                                   "(null = decide from max_rows).")
    lightgbm: dict[str, Any] = Field(default_factory=lambda: dict(SMALL_LIGHTGBM),
                                     description="LightGBM parameters, over keys left at the engine default.")
    xgboost: dict[str, Any] = Field(default_factory=lambda: dict(SMALL_XGBOOST),
                                    description="XGBoost parameters, over keys left at the engine default.")
    inner_splits: int = Field(5, ge=1, description="Round count = mean best round over this many inner "
                                                   "patient-grouped splits (if the config's inner_splits is 1).")


def resolve(params: dict[str, Any], engine_defaults: dict[str, Any], canonical: Any, small: dict[str, Any]
            ) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """``params`` with ``small``'s values on every key still at the engine default; also {key: (old, new)}."""
    out, changed = dict(params), {}
    defaults = {canonical(k): v for k, v in engine_defaults.items()}
    for key, value in small.items():
        key = canonical(key)
        current = out.get(key)
        if (key not in out or current == defaults.get(key)) and current != value:
            changed[key] = (current, value)
            out[key] = value
    return out, changed


def fit_to_rows(small: dict[str, Any], n_rows: int) -> dict[str, Any]:
    """``small`` with LightGBM's ``min_data_in_leaf`` at most ``n_rows / 20`` (at least 5), so that a tiny
    cohort (a test, a pilot) still gets trees that split rather than a constant."""
    out = dict(small)
    for key in ("min_data_in_leaf", "min_child_samples", "min_data", "min_samples_leaf"):
        if key in out:
            out[key] = int(min(out[key], max(5, n_rows // 20)))
    return out
