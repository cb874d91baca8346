"""melanet.metrics: the ISIC 2024 partial AUC and the paired model comparison."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from melanet import metrics as M


def _scores(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2 * signal - 1.5)))).astype(int)
    good = signal + rng.normal(0, 0.5, n)
    weak = signal + rng.normal(0, 2.0, n)
    patients = np.repeat(np.arange(n // 3), 3)
    return y, good, weak, patients


def test_pauc80_spans_0_to_0_2_as_isic_2024_scored_it():
    y, good, _, _ = _scores()
    assert abs(M.partial_auc_above_tpr(y, y.astype(float)) - 0.2) < 1e-12  # perfect ranking
    assert M.partial_auc_above_tpr(y, -y.astype(float)) == 0.0
    assert 0.0 < M.partial_auc_above_tpr(y, good) < 0.2


def test_paired_auc_difference_separates_a_better_model_from_noise():
    y, good, weak, patients = _scores()
    better = M.paired_auc_difference(y, good, weak, groups=patients, n_boot=300)
    assert better["diff"] == roc_auc_score(y, good) - roc_auc_score(y, weak)
    assert 0 < better["lo"] < better["diff"] < better["hi"]
    assert better["p_not_better"] < 0.05
    same = M.paired_auc_difference(y, good, good + 1e-9, n_boot=100)
    assert same["lo"] <= 0 <= same["hi"] and same["p_not_better"] == 1.0


def test_fast_auc_equals_scikit_learn_with_ties_and_duplicated_rows():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) + 0.3 * y, 1)  # coarse scores: many ties
    idx = rng.integers(0, 300, 300)  # a bootstrap resample repeats rows
    for yy, pp in ((y, p), (y[idx], p[idx])):
        assert M.fast_auc(yy, pp) == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)
    assert np.isnan(M.fast_auc(np.ones(5, int), np.arange(5.0)))  # one class: undefined
