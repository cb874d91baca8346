"""train-gbdt --with-oof, with_oof_mode: offset: boosting from the image-model score (melanet/train/offset.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from melanet.errors import ArtifactError
from melanet.io import read_json
from melanet.train import gbdt
from melanet.train.offset import OFFSET_FILE, best_round, fit_logistic, resolve_mode
from test_gbdt import config, make_cohort, write_image_run


def cohort_with_image_signal(tmp_path, metadata_weight: float, seed: int = 3):
    """A cohort whose label is ``latent + metadata_weight * (metadata logit)``, and an image run scoring ``latent``.

    With ``metadata_weight`` 0 the metadata is noise: everything the label
    holds that a model can see is in the image score. As with real CNN fold
    models, each fold model of the image run has its own score scale (fold
    model k scores 0.4 * (k - 2) logits higher).
    """
    cohort, meta_logit = make_cohort(n_patients=220, seed=seed)
    rng = np.random.default_rng(seed + 1)
    latent = rng.normal(0, 1.5, len(cohort))
    target = (rng.random(len(cohort)) < expit(-1.5 + latent + metadata_weight * meta_logit)).astype(float)
    cohort["target"] = np.where(cohort["fold"] < 0, np.nan, target)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cohort.to_parquet(data_dir / "cohort.parquet", index=False)
    score = expit(latent + rng.normal(0, 0.6, len(cohort)) + 0.4 * (cohort["fold"].clip(lower=0) - 2).to_numpy())
    return data_dir, cohort, write_image_run(tmp_path / "cnn", cohort, score)


def score_auc(image_run) -> float:
    oof = pd.read_parquet(image_run / "oof.parquet")
    return roc_auc_score(oof["target"], oof["pred"])


def test_offset_mode_is_never_below_a_strong_score_when_metadata_is_noise(tmp_path):
    data_dir, _, image_run = cohort_with_image_signal(tmp_path, metadata_weight=0.0)
    offset = gbdt.run(config(data_dir, tmp_path / "offset", with_oof=[str(image_run)]))
    feature = gbdt.run(config(data_dir, tmp_path / "feature", "with_oof_mode=feature", with_oof=[str(image_run)]))
    assert offset["overall"]["auc"] >= score_auc(image_run)
    assert offset["overall"]["auc"] > feature["overall"]["auc"]


def test_offset_mode_still_learns_corrections_the_metadata_carries(tmp_path):
    data_dir, _, image_run = cohort_with_image_signal(tmp_path, metadata_weight=1.0)
    out = tmp_path / "offset"
    offset = gbdt.run(config(data_dir, out, with_oof=[str(image_run)]))
    assert offset["overall"]["auc"] > score_auc(image_run) + 0.03
    assert max(read_json(out / f"fold_{k}" / "DONE")["rounds"] for k in range(5)) > 10


@pytest.mark.parametrize("engine", ["lightgbm", "xgboost"])
def test_offset_runs_record_their_offsets_and_predict_reproduces_the_test_rows(tmp_path, engine):
    data_dir, cohort, image_run = cohort_with_image_signal(tmp_path, metadata_weight=1.0)
    out = tmp_path / "stacked"
    gbdt.run(config(data_dir, out, f"engine={engine}", with_oof=[str(image_run)]))
    assert yaml.safe_load((out / "config.yaml").read_text())["with_oof_mode"] == "offset"
    name = gbdt.oof_feature_name(image_run, 0)
    state = read_json(out / "fold_0" / OFFSET_FILE)
    assert state["columns"] == [name] and state["coef"][0] > 0  # a higher image score, higher odds
    new = cohort[cohort["target"].isna()]
    extra = pd.DataFrame({name: pd.read_parquet(image_run / "test.parquet").set_index("image_id")
                          .loc[new["image_id"], "pred"].to_numpy()})
    expected = pd.read_parquet(out / "test.parquet").set_index("image_id").loc[new["image_id"], "pred"]
    np.testing.assert_allclose(gbdt.predict(out, new, extra=extra), expected.to_numpy(), rtol=0, atol=1e-9)
    (out / "fold_2" / OFFSET_FILE).unlink()
    with pytest.raises(ArtifactError, match="fold_2.*offset"):
        gbdt.predict(out, new, extra=extra)


def test_round_count_is_the_best_mean_inner_curve_round_and_can_be_zero():
    falling = [np.array([0.72, 0.71, 0.70]), np.array([0.68, 0.69, 0.66, 0.65])]
    assert best_round(falling) == 0  # the offset alone is best: no corrections
    rising = [np.linspace(0.60, 0.64, 12), np.linspace(0.61, 0.63, 12), np.array([0.62, 0.64, 0.65])]
    assert best_round(rising) == 8  # candidates 0, 1, 2, 4, 8; the short curve held at 0.65
    lone = [np.r_[0.70, np.linspace(0.69, 0.80, 40)], np.array([0.70, 0.69, 0.68]), np.array([0.70, 0.69, 0.68])]
    assert best_round(lone) == 0  # a gain that only one split ran long enough to see
    spike = [np.r_[0.7, 0.69, 0.69, 0.75, 0.69, 0.69]]  # a lone best at 3 rounds is not a candidate
    assert best_round(spike) == 0
    assert best_round([np.array([0.7, np.nan])]) == 0  # no usable split: offset alone


def test_logistic_offset_recovers_a_known_slope_and_intercept():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, 20_000)
    y = rng.random(len(z)) < expit(-1.0 + 0.8 * z)
    coef, intercept = fit_logistic(z[:, None], y)
    assert coef[0] == pytest.approx(0.8, abs=0.05) and intercept == pytest.approx(-1.0, abs=0.05)


def test_multiclass_runs_fall_back_to_feature_mode_and_say_so():
    assert resolve_mode("offset", ["runs/fusion"], binary=False)[0] == "feature"
    assert "multiclass" in resolve_mode("offset", ["runs/fusion"], binary=False)[1]
    assert resolve_mode("offset", ["runs/fusion"], binary=True) == ("offset", None)
    assert resolve_mode("offset", [], binary=False) == ("offset", None)  # no image scores: nothing to change
