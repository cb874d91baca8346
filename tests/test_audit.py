"""melanet.audit: correlations, shares and the observable ceiling on small constructed OOF/truth tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from melanet.audit import COLUMNS, audit_oof, audit_runs, ceiling_oof, oof_logit, partial_correlations, pratt_shares
from melanet.errors import InputDataError


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    """2,000 rows with independent terms, like truth.csv; the target drawn from all four terms."""
    rng = np.random.default_rng(0)
    n = 2000
    terms = {f"{t}_term": rng.normal(0, s, n) for t, s in
             (("image", 1.5), ("meta", 0.8), ("duckling", 1.0), ("noise", 0.9))}
    p_true = expit(-1.5 + sum(terms.values()))
    return pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(n)], **terms, "p_true": p_true,
                         "target": (rng.random(n) < p_true).astype(int), "split": "train"})


def _oof(truth: pd.DataFrame, pred) -> pd.DataFrame:
    return pd.DataFrame({"image_id": truth["image_id"], "patient_id": "p", "fold": 0,
                         "target": truth["target"], "pred": np.asarray(pred, float)})


def test_a_model_that_is_the_image_term_correlates_one_with_it_and_owns_the_whole_share(truth):
    row = audit_oof(_oof(truth, expit(truth["image_term"])), truth)
    assert row["corr_image"] == pytest.approx(1.0, abs=1e-9)
    assert abs(row["corr_meta"]) < 0.06 and abs(row["corr_duckling"]) < 0.06 and abs(row["corr_noise"]) < 0.06
    assert row["share_image"] == pytest.approx(1.0, abs=1e-6)
    assert row["r2"] == pytest.approx(1.0, abs=1e-9)
    assert row["auc"] < row["ceiling_auc"] < row["p_true_auc"]
    assert row["gap"] == pytest.approx(row["ceiling_auc"] - row["auc"])
    assert 0 < row["pauc80"] < row["ceiling_pauc80"] <= 0.2


def test_the_observable_logit_reaches_the_ceiling_and_shares_follow_the_variances(truth):
    observable = truth["image_term"] + truth["meta_term"] + truth["duckling_term"]
    row = audit_oof(_oof(truth, expit(observable - 1.0)), truth)
    assert row["gap"] == pytest.approx(0.0, abs=1e-12) and row["r2"] == pytest.approx(1.0)
    # With independent terms a term's share is its part of the variance: 1.5^2 : 0.8^2 : 1.0^2.
    var = np.array([1.5, 0.8, 1.0]) ** 2
    got = [row["share_image"], row["share_meta"], row["share_duckling"]]
    np.testing.assert_allclose(got, var / var.sum(), atol=0.04)
    assert sum(got) == pytest.approx(row["r2"])


def test_pure_noise_scores_near_chance_and_captures_nothing(truth):
    rng = np.random.default_rng(1)
    row = audit_oof(_oof(truth, rng.random(len(truth))), truth)
    assert abs(row["auc"] - 0.5) < 0.05 and row["gap"] > 0.3
    assert row["r2"] < 0.01 and max(abs(row[f"corr_{t}"]) for t in ("image", "meta", "duckling")) < 0.06


def test_saturated_predictions_are_clipped_not_infinite(truth):
    pred = np.where(truth["image_term"] > 0, 1.0, 0.0)  # hard 0/1 scores
    assert np.isfinite(oof_logit(pred)).all()
    row = audit_oof(_oof(truth, pred), truth)
    assert 0.7 < row["corr_image"] < 0.9 and np.isfinite(row["r2"])


def test_a_constant_term_gets_no_share():
    rng = np.random.default_rng(2)
    terms = np.column_stack([rng.normal(size=500), np.zeros(500), rng.normal(size=500)])
    shares, r2 = pratt_shares(2 * terms[:, 0] + terms[:, 2], terms)
    assert shares[1] == 0 and r2 == pytest.approx(1.0) and shares[0] == pytest.approx(0.8, abs=0.05)


def test_a_fusion_that_keeps_all_image_signal_loses_correlation_but_not_partial_correlation(truth):
    """Using the metadata well lowers corr_image (the score varies with meta too); pcorr_image sees through that."""
    rng = np.random.default_rng(3)
    image_estimate = truth["image_term"] + rng.normal(0, 1.0, len(truth))  # an image model with r ~0.83
    image_only = audit_oof(_oof(truth, expit(image_estimate)), truth)
    fusion = audit_oof(_oof(truth, expit(0.7 * image_estimate + truth["meta_term"])), truth)
    assert fusion["auc"] > image_only["auc"]
    assert fusion["corr_image"] < image_only["corr_image"] - 0.05
    assert fusion["pcorr_image"] == pytest.approx(image_only["pcorr_image"], abs=0.02)
    assert fusion["pcorr_meta"] > 0.5 > abs(image_only["pcorr_meta"]) + 0.4


def test_the_ceiling_row_is_the_observable_logit_with_perfect_partial_correlations(truth):
    table = pd.concat([truth, truth.head(5).assign(image_id=lambda d: d["image_id"] + "_test", split="test")])
    oof = ceiling_oof(table)
    assert len(oof) == len(truth) and not oof["image_id"].str.endswith("_test").any()
    row = audit_oof(oof, table)
    assert row["gap"] == pytest.approx(0.0, abs=1e-12)
    assert all(row[f"pcorr_{t}"] == pytest.approx(1.0) for t in ("image", "meta", "duckling"))
    # Sd 1.5 of the image term against a total sd of sqrt(1.5^2 + 0.8^2 + 1^2): a perfect score's corr_image.
    assert row["corr_image"] == pytest.approx(1.5 / np.sqrt(1.5 ** 2 + 0.8 ** 2 + 1.0), abs=0.03)


def test_partial_correlation_of_a_constant_term_is_nan():
    rng = np.random.default_rng(4)
    terms = np.column_stack([rng.normal(size=300), np.zeros(300)])
    r = partial_correlations(terms[:, 0] + rng.normal(size=300), terms)
    assert 0.6 < r[0] < 0.8 and np.isnan(r[1])


def test_only_the_oof_rows_are_scored_and_unknown_ids_are_refused(truth):
    half = truth.iloc[:1000]
    rows = audit_runs({"image": _oof(half, expit(half["image_term"])),
                       "meta": _oof(half, expit(half["meta_term"]))}, truth)
    assert list(rows.columns) == list(COLUMNS) and list(rows["model"]) == ["image", "meta"]
    assert (rows["n"] == 1000).all() and rows["ceiling_auc"].nunique() == 1
    assert rows.loc[1, "corr_meta"] == pytest.approx(1.0)

    stranger = _oof(half, expit(half["image_term"]))
    stranger.loc[3, "image_id"] = "ISIC_9999999"
    with pytest.raises(InputDataError, match="not in the truth table.*ISIC_9999999"):
        audit_oof(stranger, truth)
    with pytest.raises(InputDataError, match="multiclass"):
        audit_oof(stranger.rename(columns={"pred": "pred_melanoma"}), truth)


def test_the_audit_blends_what_the_demo_blends():
    # scripts/bench_accuracy.py measures the blend a user of `melanet demo` gets, not another one.
    import importlib.util
    from pathlib import Path

    from melanet.demo import BLEND_INPUTS

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_accuracy.py"
    spec = importlib.util.spec_from_file_location("bench_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert tuple(bench.NEEDS["blend"]) == tuple(BLEND_INPUTS)
