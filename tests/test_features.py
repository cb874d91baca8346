"""Shared metadata features: patient context on a hand-made table, missing values, no label use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melanet.features import MetaEncoder, build_features, descriptor_columns, patient_context, ugly_duckling_distance


@pytest.fixture
def cohort() -> pd.DataFrame:
    """Patient A: three studies at 40, 42 and 44 years plus one image without an age; B: one image."""
    return pd.DataFrame({
        "image_id": ["a1", "a2", "a3", "a4", "b1"],
        "patient_id": ["A", "A", "A", "A", "B"],
        "sex": ["female", "female", "female", "female", None],
        "age": [40.0, 44.0, 42.0, np.nan, 70.0],
        "site": ["TORSO", None, "HEAD/NECK", "TORSO", "TORSO"],
        "rows": [128, 128, 256, 128, 64],
        "target": [0, 1, 0, 0, 1],
    })


def test_patient_context_by_hand(cohort):
    ctx = patient_context(cohort["patient_id"], cohort[["age"]])
    assert ctx["n_images_patient"].tolist() == [4, 4, 4, 4, 1]
    # A's mean age is 42 and its std (ddof 1) 2; the image without age stays missing.
    np.testing.assert_allclose(ctx["age_pat_diff"], [-2, 2, 0, np.nan, 0])
    np.testing.assert_allclose(ctx["age_pat_z"], [-1, 1, 0, np.nan, 0])  # B does not vary: 0, not NaN
    np.testing.assert_allclose(ctx["age_pat_rank"], [1 / 6, 5 / 6, 1 / 2, np.nan, 0.5])  # mid-rank; one image: 0.5
    np.testing.assert_allclose(ctx["age_pat_range"], [4, 4, 4, 4, 0])


def test_build_features_keeps_missing_and_never_reads_the_label(cohort):
    feats = build_features(cohort)
    assert isinstance(feats["sex"].dtype, pd.CategoricalDtype) and feats["sex"].isna().tolist() == [0, 0, 0, 0, 1]
    assert feats["site"].isna().sum() == 1 and np.isnan(feats.loc[3, "age"])
    assert {"n_images_patient", "age_pat_diff", "age_pat_z", "age_pat_rank"} <= set(feats.columns)
    assert not any("target" in c for c in feats.columns)
    flipped = build_features(cohort.assign(target=1 - cohort["target"]))
    pd.testing.assert_frame_equal(feats, flipped)


def test_extra_scores_get_patient_context(cohort):
    extra = pd.DataFrame({"oof0_fusion": [0.1, 0.9, 0.2, 0.3, 0.5]})
    feats = build_features(cohort, extra=extra)
    np.testing.assert_allclose(feats["oof0_fusion_pat_diff"], [-0.275, 0.525, -0.175, -0.075, 0.0])
    assert feats.loc[1, "oof0_fusion_pat_rank"] == 7 / 8  # the patient's "ugly duckling": top of 4
    assert "oof0_fusion_pat_z" not in build_features(cohort, extra=extra, context_columns=["age"]).columns


def test_meta_encoder_uses_training_statistics_only(cohort):
    feats = build_features(cohort, context=False)
    enc = MetaEncoder().fit(feats.iloc[:3])
    out = enc.transform(feats)
    assert out.shape == (5, len(enc.feature_names_)) and np.isfinite(out).all()
    restored = MetaEncoder.from_dict(enc.to_dict())
    np.testing.assert_array_equal(restored.transform(feats), out)


def test_ugly_duckling_distance_leave_one_out_and_single_images():
    """Patient A: three alike lesions and one unlike them; B: one lesion; C: two, one without a mask."""
    values = pd.DataFrame({"lesion_x": [1.0, 1.1, 0.9, 4.0, 9.0, 2.0, np.nan],
                           "lesion_y": [0.0, 0.1, -0.1, 3.0, 9.0, 1.0, np.nan]})
    patient = pd.Series(["A", "A", "A", "A", "B", "C", "C"])
    d = ugly_duckling_distance(patient, values)
    assert d.iloc[3] == d.iloc[:4].max() and d.iloc[3] > 2 * d.iloc[:3].max()  # the odd one out stands out
    assert d.iloc[4] == 0.0  # one image: neutral
    assert np.isnan(d.iloc[6]) and np.isnan(d.iloc[5])  # nothing to compare with on either side: missing
    # Leave-one-out by hand for a3 (standardised columns): distance from the mean of a1, a2, a4.
    z = (values - values.mean()) / values.std()
    ref = z.iloc[[0, 1, 3]].mean()
    np.testing.assert_allclose(d.iloc[2], np.sqrt(((z.iloc[2] - ref) ** 2).mean()))
    # Label-free and independent of other patients' rows beyond the column scaling.
    d2 = ugly_duckling_distance(patient.iloc[:4], values.iloc[:4] * 1.0)
    assert d2.idxmax() == 3


def test_descriptor_features_get_context_and_duckling(cohort):
    cohort = cohort.assign(lesion_area_frac=[0.1, 0.12, 0.11, 0.4, 0.2], lesion_mask_ok=True,
                           lesion_delta_e=[20.0, 21.0, 19.0, 45.0, 30.0])
    cols = descriptor_columns(cohort)
    assert cols == ["lesion_area_frac", "lesion_delta_e"]
    feats = build_features(cohort, numeric=["age", *cols], context_columns=cols, duckling_columns=cols)
    assert {"lesion_area_frac_pat_diff", "lesion_delta_e_pat_z", "lesion_area_frac_pat_rank", "duckling_distance",
            "duckling_pat_rank"} <= set(feats.columns)
    assert feats["duckling_distance"].idxmax() == 3 and feats.loc[3, "duckling_pat_rank"] == 7 / 8
    single = feats.loc[4]  # patient B's only image: neutral context values
    assert (single["lesion_area_frac_pat_diff"], single["lesion_area_frac_pat_z"], single["lesion_area_frac_pat_rank"],
            single["duckling_distance"]) == (0.0, 0.0, 0.5, 0.0)
    pd.testing.assert_frame_equal(feats, build_features(cohort.assign(target=1 - cohort["target"]), numeric=["age", *cols],
                                                        context_columns=cols, duckling_columns=cols))
