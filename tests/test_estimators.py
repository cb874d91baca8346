"""The blenders and MetaEncoder pass scikit-learn's own estimator checks (clone, fit returns self, fitted state,
n_features_in_, input validation, invariances), so they compose with sklearn tools as they claim."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from melanet.blend import RankBlender, StackBlender, WeightsBlender
from melanet.blend_auto import AutoBlender, SelectInput
from melanet.errors import ArtifactError
from melanet.features import MetaEncoder, build_features

ESTIMATORS = [MetaEncoder(), RankBlender(), WeightsBlender(), StackBlender(), SelectInput(), AutoBlender()]


# Every check applies: none is skipped. (The blenders declare binary targets, so the checks give them 0/1 labels;
# MetaEncoder declares NaN as missing data, string/categorical input and float32 output.)
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.fixture
def feats() -> pd.DataFrame:
    cohort = pd.DataFrame({"patient_id": ["a", "a", "b", "c", "c"], "sex": ["male", "female", None, "male", "male"],
                           "site": ["back", "face", "back", None, "arm"], "age": [40.0, 41.0, np.nan, 60.0, 61.0]})
    return build_features(cohort, context=False)


def test_meta_encoder_names_its_inputs_and_outputs(feats):
    enc = MetaEncoder().fit(feats)
    assert list(enc.feature_names_in_) == list(feats.columns) and enc.n_features_in_ == feats.shape[1]
    names = enc.get_feature_names_out()
    assert list(names) == ["sex=female", "sex=male", "sex=__missing__", "site=arm", "site=back", "site=face",
                           "site=__missing__", "age", "age_missing"]
    assert enc.transform(feats).shape == (5, len(names)) and enc.feature_names_ == list(names)
    restored = MetaEncoder.from_dict(enc.to_dict())  # the JSON state keeps working
    assert list(restored.get_feature_names_out()) == list(names)
    np.testing.assert_array_equal(restored.transform(feats), enc.transform(feats))
    with pytest.raises(NotFittedError):
        clone(enc).transform(feats)


def test_meta_encoder_refuses_a_missing_column_instead_of_encoding_it_as_missing(feats):
    enc = MetaEncoder().fit(feats)
    with pytest.raises(ArtifactError, match=r"lacks column\(s\) \['site'\]"):
        enc.transform(feats.drop(columns="site"))
    extra = feats.assign(lesion_area=1.0)  # more columns than at fit: ignored, same matrix
    np.testing.assert_array_equal(enc.transform(extra), enc.transform(feats))
