"""``TreeModel`` (LightGBM, XGBoost) is a scikit-learn estimator: the library's own estimator checks, clone and
set_params for the refit, a clear error before fit or on wrong labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from melanet.train.gbdt import ENGINES, LightGBMModel, XGBoostModel

QUIET = {"lightgbm": {"verbosity": -1, "min_data_in_leaf": 1}, "xgboost": {"verbosity": 0}}


def tiny(engine: type, n_classes: int) -> object:
    return engine(dict(QUIET[engine.name]), n_classes=n_classes, num_boost_round=5, early_stopping_rounds=None)


# scikit-learn's generic checks draw integer targets 0..3, so they run on the multiclass face with 4 classes.
# The binary face (n_classes=2) shares every line but the objective; it takes class codes 0/1 only and refuses
# the checks' 0..3 with a ValueError naming the codes (test_wrong_labels_are_named_not_blamed_on_parameters),
# so on it 15 checks would only report that refusal (tried: nothing else failed).
@parametrize_with_checks([tiny(e, 4) for e in ENGINES.values()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"age": rng.uniform(20, 80, 300), "site": pd.Categorical(rng.choice(["a", "b", "c"], 300))})
    y = ((X["age"] > 60) ^ (rng.random(300) < 0.1)).astype(int).to_numpy()
    return X, y


@pytest.mark.parametrize("engine", [LightGBMModel, XGBoostModel])
def test_unfitted_model_says_call_fit(engine):
    with pytest.raises(NotFittedError, match=r"not fitted: call fit\(\)"):
        engine().predict_proba(pd.DataFrame({"a": [1.0]}))


@pytest.mark.parametrize("engine", [LightGBMModel, XGBoostModel])
def test_wrong_labels_are_named_not_blamed_on_parameters(engine, table):
    X, y = table
    with pytest.raises(ValueError, match=r"class codes 0\.\.1 \(n_classes=2\); found np\.int64\(2\)"):
        tiny(engine, 2).fit(X, np.where(y == 1, 2, 0))


@pytest.mark.parametrize("engine", [LightGBMModel, XGBoostModel])
def test_clone_set_params_boosts_exactly_the_refit_rounds(engine, table):
    """The refit of train-gbdt: clone the early-stopped model, set the round count, no early stopping."""
    X, y = table
    client = object()  # stands for a dask Client: shared by clones, never deep-copied
    stopped = engine(dict(QUIET[engine.name]), num_boost_round=200, early_stopping_rounds=5, client=client)
    refit = clone(stopped).set_params(num_boost_round=7, early_stopping_rounds=None, client=None).fit(X, y)
    assert refit.best_iteration_ == 7 and refit.n_early_stopping_ == 0
    assert clone(stopped).client is client and clone(stopped).params == stopped.params
    assert not hasattr(clone(refit), "booster_")
    assert list(refit.feature_names_in_) == ["age", "site"] and refit.n_features_in_ == 2
    assert refit.predict_proba(X).shape == (len(X),)


@pytest.mark.parametrize("engine", [LightGBMModel, XGBoostModel])
def test_loaded_model_predicts_like_the_fitted_one(engine, table, tmp_path):
    X, y = table
    model = tiny(engine, 2).fit(X, y)
    model.save(tmp_path / engine.model_file)
    loaded = engine.load(tmp_path / engine.model_file, n_classes=2)
    assert loaded.n_features_in_ == 2
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    with pytest.raises(ValueError, match="X has 1 features, but .* is expecting 2"):
        loaded.predict_proba(X[["age"]])
