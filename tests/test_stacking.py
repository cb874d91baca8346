"""Image-model scores on one scale across fold models (train-gbdt --with-oof, with_oof_scale)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.tree import DecisionTreeClassifier

from melanet.train.stacking import ScoreScaler, rank_map


def shifted_folds(seed: int = 0, n: int = 400):
    """Two fold models of one image model: the same ranking skill, scores on shifted scales."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    z = 1.5 * y + rng.normal(0, 1, n)
    fold = np.arange(n) % 2
    score = 1 / (1 + np.exp(-(z - 2.5 + 3.0 * fold)))  # fold 1's model scores everything ~3 logits higher
    return y, score, fold


@pytest.mark.parametrize("scale", ["rank", "logit"])
def test_a_tree_learnt_on_one_fold_model_transfers_to_the_other_only_once_scaled(scale):
    y, score, fold = shifted_folds()
    feats = {"raw": score, scale: ScoreScaler(scale).fit(score, fold).transform_oof(score, fold)}
    auc = {}
    for name, x in feats.items():
        tree = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x[fold == 0, None], y[fold == 0])
        auc[name] = roc_auc_score(y[fold == 1], tree.predict_proba(x[fold == 1, None])[:, 1])
    # raw: fold 0's threshold puts nearly every fold-1 row on one side, a near-constant prediction
    assert auc["raw"] < 0.6
    assert auc[scale] > auc["raw"] + 0.15
    # pooled over both folds the feature ranks rows as well as the best single fold model does
    assert roc_auc_score(y, feats[scale]) > roc_auc_score(y, score) + 0.05


def test_rank_feature_is_the_percentile_within_the_producing_fold_model():
    y, score, fold = shifted_folds(1, 200)
    ranked = ScoreScaler("rank").fit(score, fold).transform_oof(score, fold)
    for k in (0, 1):
        s = score[fold == k]
        expected = (np.argsort(np.argsort(s)) + 0.5) / len(s)  # no ties: mid-rank = (rank + 1/2) / n
        np.testing.assert_allclose(ranked[fold == k], expected)


def test_new_rows_average_each_fold_models_mapped_score_and_state_round_trips():
    y, score, fold = shifted_folds(2, 200)
    scaler = ScoreScaler("rank").fit(score, fold)
    new = {0: np.array([0.05, 0.2, 0.9]), 1: np.array([0.5, 0.8, 0.99])}
    expected = (scaler.map_fold(new[0], 0) + scaler.map_fold(new[1], 1)) / 2
    np.testing.assert_array_equal(scaler.transform_new(new), expected)
    again = ScoreScaler.from_state(json.loads(json.dumps(scaler.state())))
    np.testing.assert_array_equal(again.transform_new(new), expected)
    np.testing.assert_array_equal(again.transform_oof(score, fold), scaler.transform_oof(score, fold))


def test_large_folds_keep_a_bounded_map():
    rng = np.random.default_rng(0)
    knots, pct = rank_map(rng.random(50_000), max_knots=1001)
    assert len(knots) <= 1001 and pct[0] < 0.001 and pct[-1] > 0.999
